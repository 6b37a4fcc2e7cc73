"""A budgeted pool against a reference model (``docs/design.md`` §12).

A hypothesis state machine draws a capacity and 3 to 6 steps with random
costs, then runs loads, ``ensure_loaded()``, unloads, holds (``acquire()``/
``release()``) and guarded calls. Each operation runs on a thread of its own;
guarded calls stay open on a gate (the step is busy) until a later rule lets
them return, so several threads work on the pool at once. A plain-Python model
predicts every outcome: which steps a load evicts (the idle ones least
recently used first, where use is a load or the start of a guarded call, and
only if together they make room), when it is refused, and what is counted.
After every step: the states agree with the model, the pool counts exactly
the loaded steps' costs, the capacity holds, and no held or busy step was
ever evicted.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import stepfsm
from stepfsm import BudgetExceededError, State, StepInUseError

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
SETTINGS = settings(
    max_examples=300 if PROFILE == "ci" else 200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
WAIT = 10.0  # seconds any thread of an example may take
POOL = "pool"


@stepfsm.stateful(guard=("call",))
class Unit:
    """A step whose guarded call waits on a gate: while it is open the step is busy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.resource: object | None = None

    def load(self) -> None:
        self.resource = object()

    def unload(self) -> None:
        self.resource = None

    def call(self, entered: threading.Event, gate: threading.Event) -> None:
        entered.set()
        assert gate.wait(WAIT), "a gate was never opened"


def on_thread(fn: Any) -> BaseException | None:
    """Run ``fn`` on a thread of its own; what it raised (``None`` if it returned)."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as error:  # handed to the rule that checks it
            outcome.append(error)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert outcome, "an operation did not finish"
    return outcome[0]


class Model:
    """What the pool should look like: loaded steps, holds, busy calls, order of use."""

    def __init__(self, capacity: int, costs: list[int]) -> None:
        self.capacity = capacity
        self.costs = costs
        self.loaded: set[int] = set()
        self.holds = [0] * len(costs)
        self.busy = [0] * len(costs)
        self.clock = itertools.count()
        self.used_at = [0] * len(costs)

    def use(self, i: int) -> None:
        self.used_at[i] = next(self.clock)

    def used(self) -> int:
        return sum(self.costs[i] for i in self.loaded)

    def load(self, i: int) -> tuple[str, list[int]]:
        """The outcome of a load of step ``i`` that is not loaded: (outcome, steps evicted)."""
        cost = self.costs[i]
        if cost > self.capacity:
            return "alone", []
        needed = self.used() + cost - self.capacity
        evicted: list[int] = []
        if needed > 0:
            idle = sorted(
                (j for j in self.loaded if not self.holds[j] and not self.busy[j]),
                key=lambda j: self.used_at[j],
            )
            freed = 0
            for j in idle:
                if freed >= needed:
                    break
                evicted.append(j)
                freed += self.costs[j]
            if freed < needed:
                return "exceeded", []
        for j in evicted:
            self.loaded.discard(j)
        self.loaded.add(i)
        self.use(i)
        return "loaded", evicted


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Unit] = []
        self.model = Model(0, [])
        self.calls: list[tuple[int, threading.Event, threading.Thread]] = []

    @initialize(
        capacity=st.integers(20, 120),
        costs=st.lists(st.integers(5, 80), min_size=3, max_size=6),
    )
    def declare(self, capacity: int, costs: list[int]) -> None:
        stepfsm.budget(POOL, capacity)
        self.model = Model(capacity, costs)
        self.steps = [Unit(f"u{i}") for i in range(len(costs))]
        for step, cost in zip(self.steps, costs, strict=True):
            lc = stepfsm.lifecycle(step)
            lc.cost = (POOL, cost)
            lc.timeout = 0.02  # a load with no room gives up quickly
            lc.on_leak = "ignore"

    def index(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.steps) - 1), label="step")

    @rule(data=st.data())
    def ensure_loaded(self, data: st.DataObject) -> None:
        i = self.index(data)
        model = self.model
        if i in model.loaded:
            assert on_thread(lambda: stepfsm.ensure_loaded(self.steps[i])) is None
            return
        outcome, evicted = model.load(i)
        error = on_thread(lambda: stepfsm.ensure_loaded(self.steps[i]))
        if outcome == "loaded":
            assert error is None, f"load of u{i} (evicting {evicted}) raised {error!r}"
        else:
            assert isinstance(error, BudgetExceededError), (outcome, error)
            assert (error.waited is None) == (outcome == "alone"), error

    @rule(data=st.data())
    def unload(self, data: st.DataObject) -> None:
        i = self.index(data)
        model = self.model
        if i in model.loaded and model.busy[i] and not model.holds[i]:
            return  # its unload would wait for the call (the drain: tested elsewhere)
        error = on_thread(lambda: stepfsm.lifecycle(self.steps[i]).unload())
        if i in model.loaded and model.holds[i]:
            assert isinstance(error, StepInUseError), error
            return
        assert error is None, error
        model.loaded.discard(i)

    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        i = self.index(data)
        if i not in self.model.loaded:
            return  # holds are taken on loaded steps here (an acquire that loads is a load)
        assert on_thread(lambda: stepfsm.lifecycle(self.steps[i]).acquire()) is None
        self.model.holds[i] += 1

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        i = self.index(data)
        if not self.model.holds[i]:
            return
        assert on_thread(lambda: stepfsm.lifecycle(self.steps[i]).release()) is None
        self.model.holds[i] -= 1  # the acquire did not load: the step stays loaded

    @precondition(lambda self: bool(self.model.loaded))
    @rule(data=st.data())
    def use(self, data: st.DataObject) -> None:
        """A guarded call that returns at once: a use that leaves the step idle."""
        i = data.draw(st.sampled_from(sorted(self.model.loaded)), label="used")
        gate = threading.Event()
        gate.set()
        assert on_thread(lambda: self.steps[i].call(threading.Event(), gate)) is None
        self.model.use(i)

    @precondition(lambda self: len(self.calls) < 4 and bool(self.model.loaded))
    @rule(data=st.data())
    def start_call(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(sorted(self.model.loaded)), label="called")
        entered, gate = threading.Event(), threading.Event()
        thread = threading.Thread(target=self.steps[i].call, args=(entered, gate), daemon=True)
        thread.start()
        assert entered.wait(WAIT), "a guarded call on a loaded step did not start"
        self.model.busy[i] += 1
        self.model.use(i)
        self.calls.append((i, gate, thread))

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data())
    def end_call(self, data: st.DataObject) -> None:
        i, gate, thread = self.calls.pop(data.draw(st.integers(0, len(self.calls) - 1)))
        gate.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        self.model.busy[i] -= 1

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not self.steps:
            return
        model = self.model
        pool = next(p for p in stepfsm.budgets() if p.name == POOL)
        actual = [stepfsm.lifecycle(s).state for s in self.steps]
        expected = [
            State.LOADED if i in model.loaded else State.UNLOADED for i in range(len(actual))
        ]
        assert actual == expected
        assert pool.used == model.used() <= pool.capacity
        for i, step in enumerate(self.steps):
            if model.busy[i] or model.holds[i]:
                assert stepfsm.lifecycle(step).state is State.LOADED

    def teardown(self) -> None:
        for _, gate, thread in self.calls:
            gate.set()
            thread.join(WAIT)
        for step in self.steps:
            lc = stepfsm.lifecycle(step)
            for _ in range(len(lc.holders)):
                lc.release()
            lc.unload(force=True)


def test_a_budgeted_pool_behaves_as_the_model_says() -> None:
    run_state_machine_as_test(BudgetMachine, settings=SETTINGS)
