"""Concurrent histories must be linearizable against the reference model.

``test_gated_interleavings_are_linearizable``: 2-4 threads each run 1-3
operations on one step whose own load/unload block on a :class:`Gate` until
the test lets them finish (and says how: ok, raise, interrupt). Hypothesis
picks the interleaving: at each point it either starts a thread's next
operation or finishes the running load/unload, after the threads have settled
(finished, blocked in the gate, or waiting on the step). At the end some
sequential order of the completed calls, consistent with real time, must give
every call the result it saw (error class, return value, the load/unload code
it ran) and end in the real final state. A thread still waiting when nothing
runs is a lost wake-up.

``test_race_loop_is_linearizable``: the same check over 1,000 free-running
races of 4 threads (no gates; some calls fail on purpose).
"""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from fsm_driver import LIFECYCLE_OPS, Subject, act, dispose, use_step
from fsm_fakes import (
    CountingStep,
    Gate,
    calls_of,
    gated,
    held,
    open_count,
    reset,
    thread_plan,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import stepfsm
from stepfsm.states import State
from stepfsm.testing import OUTCOMES, Behaviour, Call, Config, Op, Outcome, linearize, perform
from tests.support import stacks

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
#: Sequential set-ups the threads start from (run and checked by fsm_driver first).
SETUPS: dict[str, tuple[tuple[str, Outcome], ...]] = {
    "unloaded": (),
    "loaded": (("load", Outcome()),),
    "held": (("acquire", Outcome()),),
    "failed on load": (("load", Outcome("error")),),
    "failed on unload": (("load", Outcome()), ("unload", Outcome(unload="error"))),
}
SETTLE_TIMEOUT = 5.0
MAX_CHOICES = 7  # 4 threads to start + 3 ways to end the running load/unload
MAX_MOVES = 40  # 12 operations to start + at most 2 loads/unloads each to end
RACES = 1000


@pytest.fixture(autouse=True)
def _quiet(quiet_log: None, busy_switching: None) -> Iterator[None]:
    """Planned failures log and warn from threads: keep both out of the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stepfsm.StepFSMWarning)
        yield
    reset()


class Worker:
    """A thread that runs its operations one at a time, each when the test says go."""

    def __init__(self, index: int, step: CountingStep, ops: list[Op], clock: Iterator[int]):
        self.index = index
        self.step = step
        self.ops = ops
        self.clock = clock
        self.go = threading.Semaphore(0)
        self.started = 0
        self.finished = 0
        self.calls: list[Call] = []
        self.thread = threading.Thread(target=self._run, name=f"worker-{index}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for op in self.ops:
            self.go.acquire()
            invoked = next(self.clock)
            observed = perform(self.step, op, use=use_step, record_warnings=False)
            responded = next(self.clock)
            ran = calls_of(self.step, threading.get_ident())
            label = f"t{self.index}.{op}()"
            self.calls.append(Call(op, invoked, responded, observed._replace(ran=ran), None, label))
            self.finished += 1

    @property
    def idle(self) -> bool:
        return self.finished == self.started


def _waiters(step: CountingStep) -> int:
    """How many threads wait to operate on the step and were not woken yet."""
    return stepfsm.lifecycle(step).statistics().waiting


def _settle(workers: list[Worker], gate: Gate) -> None:
    """Wait until every worker is idle, blocked in the gate, or waiting on the step.

    Only workers use the step, and an idle worker or one in the gate moves on
    only when the main thread says so. So when the workers that are neither
    idle nor in the gate are exactly as many as the threads queued, not yet
    notified, on the step's condition, nothing can run until the test moves.
    (No frame inspection: ``sys._current_frames()`` and reading another
    thread's frame locals can deadlock CPython 3.11 against an exiting thread.)
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        in_gate = gate.waiting()
        pending = [w for w in workers if not w.idle and w.thread.ident not in in_gate]
        if len(pending) == _waiters(workers[0].step):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"threads {[w.index for w in pending]} neither finished nor waited within "
                f"{SETTLE_TIMEOUT:g} s ({_waiters(workers[0].step)} waiting on the step): a "
                f"deadlock or a busy loop in the lifecycle. Stacks:\n{stacks()}"
            )
        time.sleep(0.0002)


def _history(calls: list[Call]) -> str:
    return ", ".join(
        f"{c.label} -> {type(c.observed.error).__name__ if c.observed.error else 'ok'}"
        f"{'' if not c.observed.ran else ' ran ' + str(list(c.observed.ran))}"
        f" [{c.invoked}..{c.responded}]"
        for c in sorted(calls, key=lambda c: c.invoked)
    )


def _check_linearizable(start: Config, step: CountingStep, calls: list[Call], what: str) -> None:
    lc = stepfsm.lifecycle(step)
    state, holders = lc.state, len(lc.holders)
    order = linearize(
        start, calls, accept=lambda c: c.state is state and c.holders.holds == holders
    )
    assert order is not None, (
        f"{what}: from {start.state.value!r} with {start.holders.holds} holders, the history "
        f"[{_history(calls)}] ending {state.value!r} with {holders} holders is not "
        "linearizable: no sequential order of these calls gives these results"
    )
    assert state not in (State.LOADING, State.UNLOADING), f"{what}: left {state.value!r}"
    if state is State.LOADED:
        assert held(step), f"{what}: 'loaded' but the resource is not held"
        assert open_count(step) == 1, f"{what}: 'loaded' with {open_count(step)} resources"
    elif state is State.UNLOADED:
        assert not held(step), f"{what}: 'unloaded' but the resource is held"
        assert open_count(step) == 0, f"{what}: 'unloaded' with {open_count(step)} resources"


def _interleave(workers: list[Worker], gate: Gate, moves: list[str], schedule: list[int]) -> None:
    """Start operations and end loads/unloads as ``schedule`` says until nothing is left."""
    picks = iter(schedule)
    while True:
        _settle(workers, gate)
        waiting = gate.waiting()
        assert len(waiting) <= 1, f"two transitions of one step ran at once: {waiting}"
        choices: list[tuple[str, Worker | None, Behaviour | None]] = [
            (f"start t{w.index}.{w.ops[w.started]}()", w, None)
            for w in workers
            if w.idle and w.started < len(w.ops)
        ]
        for ident, kind in waiting.items():
            owner = next(w.index for w in workers if w.thread.ident == ident)
            choices += [
                (f"t{owner}'s {kind} ends {how}", None, how) for how in ("ok", "error", "interrupt")
            ]
        if not choices:
            break
        # The schedule is drawn up front, as indices: which woken thread wins the lock is
        # up to the OS, so how many moves a run takes may differ when hypothesis replays
        # it; the data drawn must not. Past its end, the first choice is taken.
        label, worker, how = choices[next(picks, 0) % len(choices)]
        note(label)
        moves.append(label)
        if worker is not None:
            worker.started += 1
            worker.go.release()
        else:
            assert how is not None
            (ident,) = waiting
            gate.finish(ident, how)
    stuck = [w for w in workers if not w.idle]
    assert not stuck, (
        f"after [{', '.join(moves)}] threads {[w.index for w in stuck]} still wait although no "
        f"load/unload is running and the step is {stepfsm.state(workers[0].step).value!r}: a "
        f"lost wake-up. Stacks:\n{stacks()}"
    )


GATED = settings(
    max_examples=300 if CI else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
)


@GATED
@given(
    setup=st.sampled_from(sorted(SETUPS)),
    plans=st.lists(
        st.lists(st.sampled_from(LIFECYCLE_OPS), min_size=1, max_size=3), min_size=2, max_size=4
    ),
    schedule=st.lists(st.integers(min_value=0, max_value=MAX_CHOICES - 1), max_size=MAX_MOVES),
)
def test_gated_interleavings_are_linearizable(
    setup: str, plans: list[list[Op]], schedule: list[int]
) -> None:
    """Any interleaving hypothesis picks of 2-4 threads' operations gives a linearizable history."""
    subject = Subject.fresh()
    for action in SETUPS[setup]:
        act(subject, action)
    step, start = subject.step, subject.config
    clock = iter(range(10_000))
    gate = Gate(step, timeout=SETTLE_TIMEOUT)
    workers: list[Worker] = []
    moves: list[str] = []
    with gated(gate):
        workers += [Worker(i, step, ops, clock) for i, ops in enumerate(plans)]
        try:
            _interleave(workers, gate, moves, schedule)
        finally:  # on a failure, do not wait for stuck threads (their waits time out)
            for worker in workers:
                if worker.started < len(worker.ops):
                    worker.go.release(len(worker.ops) - worker.started)
    for worker in workers:
        worker.thread.join(SETTLE_TIMEOUT)
    alive = [w.index for w in workers if w.thread.is_alive()]
    assert not alive, f"after [{', '.join(moves)}] threads {alive} never finished: a deadlock"
    calls = [c for w in workers for c in w.calls]
    _check_linearizable(start, step, calls, f"setup {setup!r}, moves [{', '.join(moves)}]")
    dispose(subject)


def _racer(
    step: CountingStep, plans: list[list[tuple[Op, Outcome | None]]], calls: list[Call]
) -> Callable[[int], None]:
    """The body of racing thread ``index``: its plan's calls, recorded into ``calls``."""
    clock = iter(range(10_000))
    barrier = threading.Barrier(len(plans))
    lock = threading.Lock()

    def body(index: int) -> None:
        barrier.wait()
        me = threading.get_ident()
        for number, (op, outcome) in enumerate(plans[index]):
            with thread_plan(outcome):
                invoked = next(clock)
                observed = perform(step, op, use=use_step, record_warnings=False)
                responded = next(clock)
            ran = calls_of(step, me)
            label = f"t{index}.{op}()#{number}" + (f" [{outcome}]" if outcome else "")
            call = Call(op, invoked, responded, observed._replace(ran=ran), None, label)
            with lock:
                calls.append(call)

    return body


def test_race_loop_is_linearizable() -> None:
    """1,000 free-running races of 4 threads on one step each give a linearizable history."""
    seeds = random.Random(20240601)
    for race in range(RACES):
        seed = seeds.randrange(2**32)
        rng = random.Random(seed)
        subject = Subject.fresh()
        for action in SETUPS[rng.choice(sorted(SETUPS))]:
            act(subject, action)
        step, start = subject.step, subject.config
        plans = [
            [
                (rng.choice(LIFECYCLE_OPS), rng.choice(OUTCOMES) if rng.random() < 0.2 else None)
                for _ in "123"
            ]
            for _ in range(4)
        ]
        calls: list[Call] = []
        body = _racer(step, plans, calls)
        threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SETTLE_TIMEOUT)
        assert not any(t.is_alive() for t in threads), f"race {race} (seed {seed}) deadlocked"
        _check_linearizable(start, step, calls, f"race {race} (seed {seed})")
        dispose(subject)
