"""Concurrent histories must be linearizable against the reference model.

``test_gated_interleavings_are_linearizable``: 2-4 callers each run 1-3
operations on one step whose own load/unload block on a :class:`Gate` until
the test lets them finish (and says how: ok, raise, interrupt). A caller is a
thread (synchronous operations) or an asyncio task on an event loop running in
a thread of its own (awaited ones: ``aload``, ``aunload``...); the step is a
sync step or an async step (``async def load``/``unload``, whose callers are
then tasks on two loops). Hypothesis picks the step, the callers and the
interleaving: at each point it either starts a caller's next operation or
finishes the running load/unload, after the callers have settled (finished,
blocked in the gate, or waiting on the step). At the end some sequential order
of the completed calls, consistent with real time, must give every call the
result it saw (error class, return value, the load/unload code it ran) and end
in the real final state. A caller still waiting when nothing runs is a lost
wake-up.

``test_race_loop_is_linearizable``: the same check over 1,000 free-running
races of 4 threads (no gates; some calls fail on purpose);
``test_race_loop_with_tasks_is_linearizable``: races of threads and tasks
(sync steps), and of tasks on two loops (async steps).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fsm_driver import LIFECYCLE_OPS, Subject, act, ause_step, dispose, use_step
from fsm_fakes import (
    AsyncCountingStep,
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
from stepfsm.testing import (
    OUTCOMES,
    AnyOp,
    Behaviour,
    Call,
    Config,
    Observed,
    Op,
    Outcome,
    aperform,
    linearize,
    perform,
)
from stepfsm.testing.observer import LoopThread, new_caller
from tests.support import stacks

Step = CountingStep | AsyncCountingStep

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
#: Sequential set-ups the threads start from (run and checked by fsm_driver first).
SETUPS: dict[str, tuple[tuple[str, Outcome], ...]] = {
    "unloaded": (),
    "loaded": (("load", Outcome()),),
    "held": (("acquire", Outcome()),),
    "failed on load": (("load", Outcome("error")),),
    "failed on unload": (("load", Outcome()), ("unload", Outcome(unload="error"))),
}
#: The awaited twins of the set-up actions, for an async step.
AWAITED_SETUP = {"load": "aload", "acquire": "aenter", "unload": "aunload"}
#: What a task may await (``aloaded()`` blocks are the stateful machines' business:
#: the model cannot tell whose hold a ``release()`` drops).
AWAITED_OPS: tuple[AnyOp, ...] = (
    "aload",
    "aensure_loaded",
    "aunload",
    "aunload_force",
    "areload",
    "areload_force",
    "ause",
)
SETTLE_TIMEOUT = 5.0
#: How long a caller may still be finishing when nothing runs any more (a lost wake-up
#: would keep it waiting for stepfsm's 0.2 s re-check).
LOST_WAKEUP_GRACE = 0.03
MAX_CHOICES = 7  # 4 callers to start + 3 ways to end the running load/unload
MAX_MOVES = 40  # 12 operations to start + at most 2 loads/unloads each to end
RACES = 1000
TASK_RACES = 200 if CI else 60


@pytest.fixture(autouse=True)
def _quiet(quiet_log: None, busy_switching: None) -> Iterator[None]:
    """Planned failures log and warn from threads: keep both out of the way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stepfsm.StepFSMWarning)
        yield
    reset()


@pytest.fixture(scope="module")
def loops() -> Iterator[tuple[LoopThread, LoopThread]]:
    """Two event loops, each in a thread of its own, for the tasks."""
    pair = (LoopThread("loop-a"), LoopThread("loop-b"))
    yield pair
    for loop in pair:
        loop.close()


class Worker:
    """A thread that runs its operations one at a time, each when the test says go."""

    def __init__(self, index: int, step: Step, ops: list[AnyOp], clock: Iterator[int]):
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
            observed = perform(self.step, op, use=use_step, record_warnings=False)  # type: ignore[arg-type]
            responded = next(self.clock)
            ran = calls_of(self.step, threading.get_ident())
            label = f"t{self.index}.{op}()"
            self.calls.append(Call(op, invoked, responded, observed._replace(ran=ran), None, label))
            self.finished += 1

    @property
    def idle(self) -> bool:
        return self.finished == self.started

    @property
    def caller(self) -> int | None:
        """Who its running call is (:func:`stepfsm.testing.caller`): the thread."""
        return self.thread.ident

    def start_next(self) -> None:
        self.started += 1
        self.go.release()

    def release_rest(self) -> None:
        if self.started < len(self.ops):
            self.go.release(len(self.ops) - self.started)

    def join(self, timeout: float) -> bool:
        """Wait for it to end; whether it did."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


class TaskWorker:
    """A task on an event loop that awaits its operations one at a time, each when told."""

    def __init__(
        self, index: int, step: Step, ops: list[AnyOp], clock: Iterator[int], loop: LoopThread
    ):
        self.index = index
        self.step = step
        self.ops = ops
        self.clock = clock
        self.loop = loop
        self.started = 0
        self.finished = 0
        self.calls: list[Call] = []
        self.current: int | None = None
        self.go: asyncio.Queue[None] = asyncio.Queue()
        self.future = loop.submit(self._run())

    async def _run(self) -> None:
        for op in self.ops:
            await self.go.get()
            self.current = new_caller()
            invoked = next(self.clock)
            observed = await aperform(
                self.step,
                op,
                ause=ause_step,
                use=use_step,
                record_warnings=False,
                call_id=self.current,
            )
            responded = next(self.clock)
            ran = calls_of(self.step, self.current)
            label = f"task{self.index}.{op}()"
            self.calls.append(Call(op, invoked, responded, observed._replace(ran=ran), None, label))
            self.finished += 1

    @property
    def idle(self) -> bool:
        return self.finished == self.started

    @property
    def caller(self) -> int | None:
        """Who its running call is: the call's own id, which its worker thread sees too."""
        return self.current

    def start_next(self) -> None:
        self.started += 1
        self.loop.loop.call_soon_threadsafe(self.go.put_nowait, None)

    def release_rest(self) -> None:
        for _ in range(len(self.ops) - self.started):
            self.loop.loop.call_soon_threadsafe(self.go.put_nowait, None)

    def join(self, timeout: float) -> bool:
        try:
            self.future.result(timeout)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before 3.11
            return False
        return True


AnyWorker = Worker | TaskWorker


def _waiters(step: Step) -> int:
    """How many threads wait to operate on the step and were not woken yet."""
    return stepfsm.lifecycle(step).statistics().waiting


def _settle(workers: list[AnyWorker], gate: Gate, loops: tuple[LoopThread, ...] = ()) -> None:
    """Wait until every worker is idle, blocked in the gate, or waiting on the step.

    Only workers use the step, and an idle worker or one in the gate moves on
    only when the main thread says so. So when the workers that are neither
    idle nor in the gate are exactly as many as the threads queued, not yet
    notified, on the step's condition (a task's operation runs in a worker
    thread, which queues there too) plus the tasks awaiting the step's shared
    future of their loop, not yet resolved, nothing can run until the test
    moves. The count must hold on two polls in a row: a woken thread queues
    again for a moment before it takes the claim. (No frame inspection of
    threads: ``sys._current_frames()`` and reading another thread's frame
    locals can deadlock CPython 3.11 against an exiting thread. Each loop
    counts its own suspended tasks.)
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    step = workers[0].step
    settled = 0
    while True:
        in_gate = gate.waiting()
        pending = [w for w in workers if not w.idle and w.caller not in in_gate]
        waiting = _waiters(step)  # threads and tasks (statistics() counts both)
        settled = settled + 1 if len(pending) == waiting else 0
        if settled >= 2:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"callers {[w.index for w in pending]} neither finished nor waited within "
                f"{SETTLE_TIMEOUT:g} s ({waiting} waiting on the step): a deadlock or a busy "
                f"loop in the lifecycle. Stacks:\n{stacks()}"
            )
        time.sleep(0.0002)


def _history(calls: list[Call]) -> str:
    return ", ".join(
        f"{c.label} -> {type(c.observed.error).__name__ if c.observed.error else 'ok'}"
        f"{'' if not c.observed.ran else ' ran ' + str(list(c.observed.ran))}"
        f" [{c.invoked}..{c.responded}]"
        for c in sorted(calls, key=lambda c: c.invoked)
    )


def _check_linearizable(start: Config, step: Step, calls: list[Call], what: str) -> None:
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


def _run_moves(
    workers: list[AnyWorker],
    gate: Gate,
    moves: list[str],
    picks: Iterator[int],
    loops: tuple[LoopThread, ...],
) -> None:
    """Start operations and end loads/unloads as ``picks`` says until no move is left."""
    while True:
        _settle(workers, gate, loops)
        waiting = gate.waiting()
        assert len(waiting) <= 1, f"two transitions of one step ran at once: {waiting}"
        choices: list[tuple[str, AnyWorker | None, Behaviour | None]] = [
            (f"start {_name(w)}.{w.ops[w.started]}()", w, None)
            for w in workers
            if w.idle and w.started < len(w.ops)
        ]
        for ident, kind in waiting.items():
            owner = next(_name(w) for w in workers if w.caller == ident)
            choices += [
                (f"{owner}'s {kind} ends {how}", None, how) for how in ("ok", "error", "interrupt")
            ]
        if not choices:
            return
        # The schedule is drawn up front, as indices: which woken thread wins the lock is
        # up to the OS, so how many moves a run takes may differ when hypothesis replays
        # it; the data drawn must not. Past its end, the first choice is taken.
        label, worker, how = choices[next(picks, 0) % len(choices)]
        note(label)
        moves.append(label)
        if worker is not None:
            worker.start_next()
        else:
            assert how is not None
            (ident,) = waiting
            gate.finish(ident, how)


def _interleave(
    workers: list[AnyWorker],
    gate: Gate,
    moves: list[str],
    schedule: list[int],
    loops: tuple[LoopThread, ...],
) -> None:
    """Start operations and end loads/unloads as ``schedule`` says until nothing is left."""
    picks = iter(schedule)
    while True:
        _run_moves(workers, gate, moves, picks, loops)
        # A thread woken by the last release queues again for a moment before it takes the
        # claim, so it can look like a waiter to _settle(); it is done within microseconds,
        # while a lost wake-up leaves a caller waiting until its next check (0.2 s slices).
        grace = time.monotonic() + LOST_WAKEUP_GRACE
        while any(not w.idle for w in workers) and time.monotonic() < grace:
            if gate.waiting():
                break
            time.sleep(0.0005)
        if not gate.waiting():
            break
        # that caller took the claim meanwhile and its load/unload now waits in the gate
        # (on a busy machine two polls of _settle() can both see it queued): go on
    stuck = [_name(w) for w in workers if not w.idle]
    assert not stuck, (
        f"after [{', '.join(moves)}] callers {stuck} still wait although no load/unload is "
        f"running and the step is {stepfsm.state(workers[0].step).value!r}: a lost wake-up. "
        f"Stacks:\n{stacks()}"
    )


def _name(worker: AnyWorker) -> str:
    return f"task{worker.index}" if isinstance(worker, TaskWorker) else f"t{worker.index}"


GATED = settings(
    max_examples=300 if CI else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
)


@st.composite
def callers(draw: st.DrawFn, kind: str) -> list[tuple[str, list[AnyOp]]]:
    """2-4 callers, each ``(who, ops)``: a thread or a task (an async step: tasks on 2 loops)."""
    count = draw(st.integers(min_value=2, max_value=4))
    made: list[tuple[str, list[AnyOp]]] = []
    for _ in range(count):
        who = draw(
            st.sampled_from(("task-a", "task-b") if kind == "async" else ("thread", "task-a"))
        )
        pool = LIFECYCLE_OPS if who == "thread" else AWAITED_OPS
        made.append((who, draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))))
    return made


def _setup(setup: str, kind: str, loops: tuple[LoopThread, LoopThread]) -> Subject:
    """A fresh subject put in ``setup``'s state by checked actions."""
    if kind == "async":
        subject = Subject.fresh(kind=AsyncCountingStep, loop=loops[0])
        for name, outcome in SETUPS[setup]:
            act(subject, (AWAITED_SETUP[name], outcome))
    else:
        subject = Subject.fresh(loop=loops[0])
        for action in SETUPS[setup]:
            act(subject, action)
    return subject


@GATED
@given(
    setup=st.sampled_from(sorted(SETUPS)),
    data=st.data(),
    kind=st.sampled_from(("sync", "async")),
    schedule=st.lists(st.integers(min_value=0, max_value=MAX_CHOICES - 1), max_size=MAX_MOVES),
)
def test_gated_interleavings_are_linearizable(
    loops: tuple[LoopThread, LoopThread],
    setup: str,
    data: st.DataObject,
    kind: str,
    schedule: list[int],
) -> None:
    """Any interleaving hypothesis picks of 2-4 callers' operations gives a linearizable history.

    Callers are threads and tasks on a sync step, tasks on two loops on an async step.
    """
    plans = data.draw(callers(kind), label="callers")
    subject = _setup(setup, kind, loops)
    step, start = subject.step, subject.config
    clock = iter(range(10_000))
    gate = Gate(step, timeout=SETTLE_TIMEOUT)
    workers: list[AnyWorker] = []
    moves: list[str] = []
    with gated(gate):
        for index, (who, ops) in enumerate(plans):
            if who == "thread":
                workers.append(Worker(index, step, ops, clock))
            else:
                loop = loops[0] if who == "task-a" else loops[1]
                workers.append(TaskWorker(index, step, ops, clock, loop))
        used = tuple(loops[0 if who == "task-a" else 1] for who, _ in plans if who != "thread")
        try:
            _interleave(workers, gate, moves, schedule, tuple(dict.fromkeys(used)))
        finally:  # on a failure, do not wait for stuck callers (their waits time out)
            for worker in workers:
                worker.release_rest()
    alive = [_name(w) for w in workers if not w.join(SETTLE_TIMEOUT)]
    assert not alive, f"after [{', '.join(moves)}] callers {alive} never finished: a deadlock"
    calls = [c for w in workers for c in w.calls]
    _check_linearizable(
        start, step, calls, f"{kind} step, setup {setup!r}, moves [{', '.join(moves)}]"
    )
    dispose(subject)


def _racer(
    step: Step,
    plans: list[list[tuple[Op, Outcome | None]]],
    calls: list[Call],
    clock: Iterator[int] | None = None,
    barrier: threading.Barrier | None = None,
) -> Callable[[int], None]:
    """The body of racing thread ``index``: its plan's calls, recorded into ``calls``."""
    clock = clock or iter(range(10_000))
    barrier = barrier or threading.Barrier(len(plans))
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


def _task_racer(
    step: Step,
    plans: list[list[tuple[AnyOp, Outcome | None]]],
    calls: list[Call],
    clock: Iterator[int],
    start: threading.Barrier,
) -> Callable[[list[int]], Any]:
    """The coroutine that runs racing tasks ``indices`` on one loop, recording into ``calls``."""

    async def body(index: int) -> None:
        for number, (op, outcome) in enumerate(plans[index]):
            me = new_caller()
            with thread_plan(outcome):
                invoked = next(clock)
                observed = await aperform(
                    step, op, ause=ause_step, use=use_step, record_warnings=False, call_id=me
                )
                responded = next(clock)
            ran = calls_of(step, me)
            label = f"task{index}.{op}()#{number}" + (f" [{outcome}]" if outcome else "")
            calls.append(Call(op, invoked, responded, observed._replace(ran=ran), None, label))

    async def launch(indices: list[int]) -> None:
        start.wait(SETTLE_TIMEOUT)  # blocks this loop until every racer is ready
        await asyncio.gather(*(body(index) for index in indices))

    return launch


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_race_loop_with_tasks_is_linearizable(
    loops: tuple[LoopThread, LoopThread], kind: str
) -> None:
    """Free-running races of tasks and threads on one step give linearizable histories.

    A sync step: 2 threads (synchronous calls) and 2 tasks on one loop (awaited
    calls). An async step: 2 tasks on each of two loops, so its own code runs
    on whichever loop's task runs the load or unload.
    """
    seeds = random.Random(20261206 + (kind == "async"))
    who = ["task-a", "task-a", "task-b", "task-b"] if kind == "async" else ["thread"] * 2
    who += [] if kind == "async" else ["task-a", "task-a"]
    on = {
        name: [i for i, w in enumerate(who) if w == name]
        for name in ("task-a", "task-b")
        if name in who
    }
    in_threads = [i for i, w in enumerate(who) if w == "thread"]
    for race in range(TASK_RACES):
        seed = seeds.randrange(2**32)
        rng = random.Random(seed)
        setup = rng.choice(sorted(SETUPS))
        subject = _setup(setup, kind, loops)
        step, start = subject.step, subject.config
        plans: list[list[tuple[AnyOp, Outcome | None]]] = [
            [
                (
                    rng.choice(LIFECYCLE_OPS if w == "thread" else AWAITED_OPS),
                    rng.choice(OUTCOMES) if rng.random() < 0.2 else None,
                )
                for _ in "123"
            ]
            for w in who
        ]
        calls: list[Call] = []
        clock = iter(range(10_000))
        barrier = threading.Barrier(len(in_threads) + len(on))
        thread_body = _racer(step, plans, calls, clock, barrier)  # type: ignore[arg-type]
        launch = _task_racer(step, plans, calls, clock, barrier)
        futures = [
            (loops[0] if name == "task-a" else loops[1]).submit(launch(indices))
            for name, indices in on.items()
        ]
        threads = [threading.Thread(target=thread_body, args=(i,), daemon=True) for i in in_threads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SETTLE_TIMEOUT)
        for future in futures:
            future.result(SETTLE_TIMEOUT)
        assert not any(t.is_alive() for t in threads), f"race {race} (seed {seed}) deadlocked"
        _check_linearizable(start, step, calls, f"{kind} step, race {race} (seed {seed})")
        dispose(subject)


@stepfsm.stateful(guard=("agenerate",))
class _GatedLLM:
    """A sync step whose load waits on ``gate``, with an ``async def`` guarded method."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def load(self) -> None:
        assert self.gate.wait(SETTLE_TIMEOUT), "the test never opened the gate"

    def unload(self) -> None:
        pass

    async def agenerate(self) -> str:
        return "ok"


def test_an_awaited_guard_never_sees_a_transient_state() -> None:
    """A guarded ``async def`` call during reloads runs (docs/design.md §2: wait, then settle).

    The interleaving is forced: a trace hook on the task's thread starts a
    second ``reload()`` in another thread at the moment ``Lifecycle._await_free``
    returns (the first reload has ended: the claim is free), which is a thread
    switch the GIL may make there on its own, and lets the task go on once that
    reload's load is running. Every operation leaves the step ``loaded``, so
    the guarded call must run.
    """
    step = _GatedLLM()
    step.load()
    lc = stepfsm.lifecycle(step)
    wait_code = stepfsm.machine.Lifecycle._await_free.__code__
    second = threading.Thread(target=lc.reload, daemon=True)
    hooked: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event != "call" or frame.f_code is not wait_code:
            return None
        if not hooked:
            hooked.append("waits")
            step.gate.set()  # the task waits out the first reload: let it end

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "return" and arg is None and hooked == ["waits"]:  # the claim is free
                hooked.append("second reload")
                step.gate.clear()
                second.start()  # another thread's reload() begins right here
                deadline = time.monotonic() + SETTLE_TIMEOUT
                while lc.state is not State.LOADING and time.monotonic() < deadline:
                    time.sleep(0.0001)
                # the task must now wait for this reload too: let its load end soon
                threading.Timer(0.2, step.gate.set).start()
            return local

        return local

    async def call() -> object:
        step.gate.clear()
        first = threading.Thread(target=lc.reload, daemon=True)  # its load waits on the gate
        first.start()
        while lc.state is not State.LOADING:
            await asyncio.sleep(0.001)
        sys.settrace(tracer)
        try:
            return await step.agenerate()  # waits out the first reload, then...
        except stepfsm.StepStateError as error:
            return error
        finally:
            sys.settrace(None)
            step.gate.set()
            first.join(SETTLE_TIMEOUT)

    result = asyncio.run(call())
    second.join(SETTLE_TIMEOUT)
    if hooked != ["waits", "second reload"]:
        pytest.fail(f"the forced interleaving did not happen ({hooked}): update the hook")
    got = Observed(result, None) if isinstance(result, BaseException) else Observed(None, "ok")
    calls = [
        Call("reload", 0, 3, Observed(None, None), label="t1.reload()"),
        Call("ause", 1, 7, got, label="await step.agenerate()"),
        Call("reload", 4, 6, Observed(None, None), label="t2.reload()"),
    ]
    assert linearize(Config(State.LOADED), calls) is not None, (
        f"await step.agenerate() -> {result!r} while the step was reloaded twice (loaded "
        "before and after each): no sequential order gives the guarded call an error"
    )
