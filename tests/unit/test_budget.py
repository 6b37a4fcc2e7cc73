"""Budgets: pools, costs, eviction of idle steps least recently used first (docs/design.md §12)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fractions
import gc
import math
import os
import pickle
import random
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import pytest

import stepfsm
from stepfsm import BudgetExceededError, DefinitionError, GroupLoadError, State, _budget


@stepfsm.stateful(guard=("run",), cost=("mem", 40))
class Model:
    """A step that books 40 of the pool 'mem' per load."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.weights: bytearray | None = None
        self.loads = 0
        self.gate: threading.Event | None = None  # run() waits on it when set

    def load(self) -> None:
        self.loads += 1
        self.weights = bytearray(8)

    def unload(self) -> None:
        self.weights = None

    def run(self) -> str:
        if self.gate is not None:
            self.gate.wait(10)
        assert self.weights is not None
        return self.name


@stepfsm.stateful(guard=("run",), cost=("mem", 40))
class Slotted:
    """The same with ``__slots__``: its guards read the token from a table."""

    __slots__ = ("__weakref__", "name", "weights")

    def __init__(self, name: str) -> None:
        self.name = name
        self.weights: bytearray | None = None

    def load(self) -> None:
        self.weights = bytearray(8)

    def unload(self) -> None:
        self.weights = None

    def run(self) -> str:
        return self.name


def states(*steps: object) -> list[str]:
    return [stepfsm.lifecycle(s).state.value for s in steps]


@pytest.fixture
def pool() -> stepfsm.Budget:
    return stepfsm.budget("mem", 100)


def test_a_load_books_its_cost_and_an_unload_gives_it_back(pool: stepfsm.Budget) -> None:
    a = Model("a")
    a.load()
    assert pool.used == 40
    assert pool.steps == (_budget.BudgetUse("Model 'a'", 40, "loaded"),)
    a.unload()
    assert pool.used == 0
    assert pool.steps == ()


def test_a_load_that_does_not_fit_evicts_the_least_recently_used_idle_step(
    pool: stepfsm.Budget,
) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    a.load()
    b.load()
    a.run()  # a was loaded first, but used last: b is the least recently used
    c.load()
    assert states(a, b, c) == ["loaded", "unloaded", "loaded"]
    assert pool.used == 80
    b.run  # noqa: B018 - reading the method is not a use
    d = Model("d")
    d.load()  # now a (used before c's load) goes
    assert states(a, b, c, d) == ["unloaded", "unloaded", "loaded", "loaded"]


def test_slotted_steps_note_their_use_too(pool: stepfsm.Budget) -> None:
    a, b, c = Slotted("a"), Slotted("b"), Slotted("c")
    a.load()
    b.load()
    assert a.run() == "a"
    c.load()
    assert states(a, b, c) == ["loaded", "unloaded", "loaded"]


def test_a_step_without_a_cost_keeps_the_plain_token(pool: stepfsm.Budget) -> None:
    free = Model("free")
    stepfsm.lifecycle(free).cost = None  # the class's cost is back... so it is booked
    assert stepfsm.lifecycle(free).cost == ("mem", 40)

    @stepfsm.stateful
    class Plain:
        def load(self) -> None:
            pass

        def unload(self) -> None:
            pass

    plain = Plain()
    plain.load()
    free.load()
    assert type(plain.__dict__["__stepfsm_loaded__"]) is stepfsm.registry.Token
    assert type(free.__dict__["__stepfsm_loaded__"]) is stepfsm.registry.UsedToken


def test_held_steps_are_never_evicted(pool: stepfsm.Budget) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    stepfsm.lifecycle(c).timeout = 0.2
    stepfsm.lifecycle(a).acquire("notebook")
    with stepfsm.loaded(b):
        with pytest.raises(BudgetExceededError) as caught:
            c.load()
        assert states(a, b, c) == ["loaded", "loaded", "unloaded"]
    error = caught.value
    assert error.pool == "mem"
    assert error.capacity == 100
    assert error.needed == 40
    assert error.waited == 0.2
    assert [(name, cost) for name, cost, _ in error.held] == [("Model 'a'", 40), ("Model 'b'", 40)]
    assert "held by 'notebook'" in str(error)
    assert "budget 'mem' has 20 free of 100 and the load needs 40" in str(error)
    assert pool.used == 40  # b was released by the with block (an acquire did the load)
    c.load()  # now b's room is free
    assert states(a, b, c) == ["loaded", "unloaded", "loaded"]


def test_a_step_with_a_running_guarded_call_waits_until_the_call_returns(
    pool: stepfsm.Budget,
) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    a.load()
    b.load()
    b.run()  # a is the least recently used, but it will be busy
    a.gate = threading.Event()
    running = threading.Thread(target=a.run, daemon=True)
    running.start()
    time.sleep(0.05)
    c.load()  # a is busy: b goes
    assert states(a, b, c) == ["loaded", "unloaded", "loaded"]
    stepfsm.lifecycle(c).acquire("kept")
    stepfsm.lifecycle(b).timeout = 5
    loader = threading.Thread(target=b.load, daemon=True)
    loader.start()
    time.sleep(0.2)  # a's call is still running and c is held: b waits
    assert stepfsm.lifecycle(b).state is State.UNLOADED
    assert stepfsm.lifecycle(a).state is State.LOADED
    a.gate.set()  # the call returns; a is now the least recently used idle step
    loader.join(5)
    running.join(5)
    assert states(a, b, c) == ["unloaded", "loaded", "loaded"]


def test_an_evicted_step_loads_again_on_its_next_ensure_loaded(pool: stepfsm.Budget) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    a.load()
    b.load()
    c.load()
    assert states(a) == ["unloaded"]
    assert stepfsm.ensure_loaded(a) is True
    assert a.loads == 2
    assert a.run() == "a"
    assert states(a, b, c) == ["loaded", "unloaded", "loaded"]


def test_history_and_listeners_record_the_eviction_with_its_reason(pool: stepfsm.Budget) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    seen: list[stepfsm.TransitionRecord] = []
    stepfsm.lifecycle(a).subscribe(lambda lc, record: seen.append(record))
    a.load()
    b.load()
    c.load()
    assert [(r.trigger, r.reason) for r in seen] == [
        ("begin_load", None),
        ("finish_load", None),
        ("begin_unload", "budget 'mem' needed room for Model 'c'"),
        ("finish_unload", "budget 'mem' needed room for Model 'c'"),
    ]
    assert stepfsm.lifecycle(a).history[-1].reason == "budget 'mem' needed room for Model 'c'"
    a.load()
    assert stepfsm.lifecycle(a).history[-1].reason is None


def test_a_failed_or_interrupted_load_gives_its_cost_back(pool: stepfsm.Budget) -> None:
    class Broken(Model):
        def load(self) -> None:
            raise OSError("no weights")

    class Interrupted(Model):
        def load(self) -> None:
            raise KeyboardInterrupt

    with pytest.raises(stepfsm.LoadError):
        Broken("broken").load()
    assert pool.used == 0
    with pytest.raises(KeyboardInterrupt):
        Interrupted("ctrl-c").load()
    assert pool.used == 0
    assert pool.steps == ()


def test_a_failing_evicted_unload_leaves_the_victim_failed_and_frees_its_room(
    pool: stepfsm.Budget,
) -> None:
    class Sticky(Model):
        def unload(self) -> None:
            raise OSError("device busy")

    a, b, c = Sticky("a"), Model("b"), Model("c")
    a.load()
    b.load()
    c.load()
    assert states(a, b, c) == ["failed", "loaded", "loaded"]
    assert pool.used == 80


def test_a_step_whose_cost_alone_exceeds_the_capacity_is_refused_at_once(
    pool: stepfsm.Budget,
) -> None:
    big = Model("big")
    stepfsm.lifecycle(big).cost = ("mem", 101)
    started = time.monotonic()
    with pytest.raises(BudgetExceededError) as caught:
        big.load()
    assert time.monotonic() - started < 1
    assert caught.value.waited is None
    assert "alone exceeds the capacity of budget 'mem' (100)" in str(caught.value)
    assert stepfsm.lifecycle(big).state is State.UNLOADED
    assert big.loads == 0
    assert pool.used == 0


def test_equal_to_the_capacity_fits(pool: stepfsm.Budget) -> None:
    whole = Model("whole")
    stepfsm.lifecycle(whole).cost = ("mem", 100)
    whole.load()
    assert pool.used == pool.capacity == 100


def test_a_cost_may_be_a_callable_of_the_step(pool: stepfsm.Budget) -> None:
    sized = Model("sized")
    stepfsm.lifecycle(sized).cost = lambda step: ("mem", len(step.name) * 10)
    sized.load()
    assert pool.used == 50


@pytest.mark.parametrize(
    ("name", "capacity", "error", "says"),
    [
        ("", 10, TypeError, "non-empty string"),
        (3, 10, TypeError, "non-empty string"),
        ("x", -1, ValueError, ">= 0"),
        ("x", math.nan, ValueError, ">= 0"),
        ("x", "10", TypeError, "must be a number"),
        ("x", True, TypeError, "must be a number"),
    ],
)
def test_bad_budgets_are_refused(name: Any, capacity: Any, error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        stepfsm.budget(name, capacity)


@pytest.mark.parametrize(
    "cost", [("mem", -1), ("mem", "8GB"), ("mem",), "mem", ("", 3), (3, "mem"), ("mem", None)]
)
def test_bad_costs_are_refused_at_definition_and_on_the_instance(cost: Any) -> None:
    with pytest.raises(DefinitionError, match="cost"):

        @stepfsm.stateful(cost=cost)
        class Bad:
            def load(self) -> None:
                pass

            def unload(self) -> None:
                pass

    with pytest.raises((TypeError, ValueError), match="cost"):
        stepfsm.lifecycle(Model("x")).cost = cost


def test_a_cost_naming_an_undeclared_pool_fails_the_load_before_it_begins() -> None:
    stranger = Model("stranger")  # the class books 'mem', which no test declared here
    with pytest.raises(DefinitionError, match=r"budget 'mem', which is not declared"):
        stranger.load()
    assert stepfsm.lifecycle(stranger).state is State.UNLOADED
    assert stepfsm.lifecycle(stranger).history == ()
    assert stranger.loads == 0


def test_a_cost_callable_returning_junk_fails_the_load_before_it_begins(
    pool: stepfsm.Budget,
) -> None:
    odd = Model("odd")
    stepfsm.lifecycle(odd).cost = lambda step: 40
    with pytest.raises(DefinitionError, match="returned 40"):
        odd.load()
    assert stepfsm.lifecycle(odd).state is State.UNLOADED
    assert pool.used == 0


def test_a_group_that_does_not_fit_rolls_back(pool: stepfsm.Budget) -> None:
    three = [Model(name) for name in "abc"]
    for step in three:
        stepfsm.lifecycle(step).timeout = 0.2
    with pytest.raises(GroupLoadError) as caught:
        stepfsm.group(*three).load()  # the group holds what it loaded: no room for a third
    assert all(isinstance(e, BudgetExceededError) for e in caught.value.exceptions)
    assert states(*three) == ["unloaded"] * 3
    assert pool.used == 0


def test_status_shows_each_pool(pool: stepfsm.Budget) -> None:
    step = Model("a")
    step.load()
    table = stepfsm.status()
    assert "budget 'mem': 40 of 100 used (40%), 1 step" in str(table)
    assert "width:40%" in table._repr_html_()
    assert [(p.name, p.used, p.steps) for p in table.pools] == [("mem", 40, 1)]


def test_the_error_pickles_with_its_attributes(pool: stepfsm.Budget) -> None:
    step = Model("a")
    stepfsm.lifecycle(step).cost = ("mem", 1000)
    with pytest.raises(BudgetExceededError) as caught:
        step.load()
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is BudgetExceededError
    assert str(copy) == str(caught.value)
    assert (copy.pool, copy.capacity, copy.needed) == ("mem", 100, 1000)


def test_the_capacity_holds_under_concurrent_loads_and_unloads() -> None:
    """12 steps of random costs, 6 threads loading, using, holding and unloading at random."""
    pool = stepfsm.budget("mem", 100)
    rng = random.Random(7)
    over: list[float] = []
    resident = [0.0]  # what the steps' own load code holds now (it runs once booked)
    lock = threading.Lock()
    real_load, real_unload = Model.load, Model.unload

    def load(self: Model) -> None:
        with lock:
            resident[0] += stepfsm.lifecycle(self).cost[1]  # type: ignore[index]
            if resident[0] > pool.capacity:
                over.append(resident[0])
        real_load(self)

    def unload(self: Model) -> None:
        real_unload(self)
        with lock:
            resident[0] -= stepfsm.lifecycle(self).cost[1]  # type: ignore[index]

    class Counted(Model):
        pass

    Counted.load = load  # type: ignore[method-assign]
    Counted.unload = unload  # type: ignore[method-assign]
    stepfsm.stateful(Counted)  # wraps the new methods
    steps = [Counted(f"s{i}") for i in range(12)]
    for step in steps:
        lc = stepfsm.lifecycle(step)
        lc.cost = ("mem", rng.choice((10, 20, 30, 50)))
        lc.timeout = 0.05

    def work(seed: int) -> None:
        chooser = random.Random(seed)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            step = chooser.choice(steps)
            action = chooser.random()
            try:
                if action < 0.4:
                    stepfsm.ensure_loaded(step)
                elif action < 0.7:
                    step.run()
                elif action < 0.85:
                    with stepfsm.loaded(step):
                        step.run()
                else:
                    stepfsm.lifecycle(step).unload()
            except (stepfsm.StepStateError, stepfsm.TransitionError):
                pass  # refused (in use, no room in time, another thread's transition)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert over == []
    loaded = [s for s in steps if stepfsm.lifecycle(s).state is State.LOADED]
    assert pool.used == sum(stepfsm.lifecycle(s).cost[1] for s in loaded)  # type: ignore[index]
    assert all(stepfsm.lifecycle(s).state in (State.LOADED, State.UNLOADED) for s in steps)


def test_nothing_is_evicted_when_evicting_every_idle_step_would_not_make_room(
    pool: stepfsm.Budget,
) -> None:
    idle, held, big = Model("idle"), Model("held"), Model("big")
    stepfsm.lifecycle(idle).cost = ("mem", 30)
    stepfsm.lifecycle(held).cost = ("mem", 50)
    stepfsm.lifecycle(big).cost = ("mem", 70)
    stepfsm.lifecycle(big).timeout = 0.1
    idle.load()
    stepfsm.lifecycle(held).acquire()
    with pytest.raises(BudgetExceededError):
        big.load()  # it needs 50 more; the idle step frees 30
    assert states(idle, held, big) == ["loaded", "loaded", "unloaded"]
    assert idle.loads == 1


# ------------------------------------------------- regressions from a review


def test_a_slotted_step_is_refused_after_its_unload_and_unloads_at_once(
    pool: stepfsm.Budget,
) -> None:
    step = Slotted("s")
    step.load()
    started = time.monotonic()
    step.unload()
    assert time.monotonic() - started < 0.5  # its flag went: nothing looks like a running call
    with pytest.raises(stepfsm.NotLoadedError):
        step.run()


def test_a_reload_keeps_its_room(pool: stepfsm.Budget) -> None:
    a, b = Model("a"), Model("b")
    stepfsm.lifecycle(a).cost = ("mem", 60)
    stepfsm.lifecycle(b).cost = ("mem", 60)
    a.load()
    stepfsm.lifecycle(a).acquire("server")
    stepfsm.lifecycle(b).timeout = 2
    waiter = threading.Thread(target=lambda: _quietly(b.load), daemon=True)
    waiter.start()
    time.sleep(0.05)
    stepfsm.lifecycle(a).reload(force=True)
    waiter.join(5)
    assert states(a, b) == ["loaded", "unloaded"]
    assert pool.used == 60


def _quietly(fn: Any) -> None:
    with contextlib.suppress(BudgetExceededError):
        fn()


def test_a_step_that_dies_loaded_gives_its_room_back(pool: stepfsm.Budget) -> None:
    a = Model("a")
    a.load()
    assert pool.used == 40
    del a
    gc.collect()
    assert pool.used == 0


class _Size(enum.IntEnum):
    SMALL = 5


class _Bytes(float):
    pass


@pytest.mark.parametrize(
    "amount",
    [7, 7.5, True + 6, _Size.SMALL, _Bytes(3.0), fractions.Fraction(3, 2)],
    ids=["int", "float", "int-sum", "IntEnum", "float-subclass", "Fraction"],
)
def test_a_pool_counts_plain_ints_and_floats_whatever_the_amount_was(
    pool: stepfsm.Budget, amount: Any
) -> None:
    """The pool stores every booking as an exact ``int`` or ``float``: summing those is one
    C loop that allocates nothing the garbage collector tracks, which is what lets the
    optimistic booking read the bookings without copying them (``_budget._total``)."""
    step = Model("m")
    stepfsm.lifecycle(step).cost = ("mem", amount)
    other = Model("n")
    stepfsm.lifecycle(other).cost = lambda _: ("mem", amount)
    step.load()
    other.load()
    assert {type(v) for v in pool._held.values()} <= {int, float}
    assert pool.used == 2 * amount


_DIES_INSIDE_A_WAKE = """
import stepfsm
from stepfsm import _budget

@stepfsm.stateful(cost=("mem", 40))
class Model:
    def load(self): pass
    def unload(self): pass

pool = stepfsm.budget("mem", 100)
a = Model()
a.load()
with _budget._ROOM._cond:  # what _ROOM.set() holds while it wakes the waiters
    del a  # the step dies here, so its weakref callback runs here, on this thread
print(pool.used)
"""


def test_a_step_dying_inside_a_wake_up_returns_its_room_without_a_lock() -> None:
    """A step garbage collected while this thread is inside ``_ROOM.set()`` (the
    collector runs wherever an allocation triggers it) gives its room back without
    taking ``_ROOM``'s lock again: that deadlocked the thread for good."""
    done = subprocess.run(
        [sys.executable, "-c", _DIES_INSIDE_A_WAKE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_counts_nothing(pool: stepfsm.Budget) -> None:
    a = Model("a")
    a.load()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, f"{pool.used} {stepfsm.state(a).value}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == "0 unloaded"
    assert pool.used == 40  # the parent's count is untouched


def test_a_load_whose_room_this_thread_pins_is_refused_at_once(pool: stepfsm.Budget) -> None:
    class Caller(Model):
        def run(self) -> str:  # a guarded call that loads another step
            other = Model("other")
            stepfsm.lifecycle(other).cost = ("mem", 80)
            other.load()
            return "loaded"

    caller = Caller("caller")
    caller.load()
    started = time.monotonic()
    with pytest.raises(BudgetExceededError) as caught:
        caller.run()  # waiting would wait for this very call (timeout None: forever)
    assert time.monotonic() - started < 2
    assert caught.value.waited == 0.0
    assert "a guarded call on this thread" in str(caught.value)


def test_a_guarded_async_method_is_a_use(pool: stepfsm.Budget) -> None:
    class Chatty(Model):
        async def agenerate(self) -> str:
            return self.name

    stepfsm.stateful(guard=("agenerate",))(Chatty)
    a, b, c = Chatty("a"), Chatty("b"), Chatty("c")
    a.load()
    b.load()
    assert asyncio.run(a.agenerate()) == "a"  # a is now used more recently than b
    c.load()
    assert states(a, b, c) == ["loaded", "unloaded", "loaded"]


def test_a_victim_s_leak_does_not_fail_the_load_that_evicted_it(pool: stepfsm.Budget) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    stepfsm.lifecycle(a).on_leak = "raise"
    a.load()
    kept = a.weights  # a reference the unload cannot drop
    b.load()
    b.run()
    c.load()  # evicts a, whose release check finds `kept`
    assert states(a, b, c) == ["unloaded", "loaded", "loaded"]
    del kept


def test_a_cancelled_aload_waiting_for_room_never_loads(pool: stepfsm.Budget) -> None:
    a, b, c = Model("a"), Model("b"), Model("c")
    a.load()
    b.load()
    stepfsm.lifecycle(a).acquire()
    stepfsm.lifecycle(b).acquire()

    async def scene() -> None:
        task = asyncio.ensure_future(stepfsm.aload(c))
        await asyncio.sleep(0.1)  # it waits for room
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scene())
    stepfsm.lifecycle(a).release()  # room comes free after the cancel
    time.sleep(0.2)
    assert stepfsm.state(c) is State.UNLOADED
    assert c.loads == 0


def test_a_raising_cost_callable_and_numpy_amounts(pool: stepfsm.Budget) -> None:
    odd = Model("odd")
    stepfsm.lifecycle(odd).cost = lambda step: {}["size"]
    with pytest.raises(DefinitionError, match="raised KeyError") as caught:
        odd.load()
    assert isinstance(caught.value.__cause__, KeyError)
    numpy = pytest.importorskip("numpy")
    stepfsm.lifecycle(odd).cost = ("mem", numpy.int64(8))
    odd.load()
    assert pool.used == 8
