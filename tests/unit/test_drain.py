"""Drain: an unload waits for the guarded calls still running elsewhere (docs/design.md §11).

Every test drives real threads (or tasks) that hold a guarded call open on an
event, so what is checked is ordering, not timing: the unload code has not
run while the call runs, and the call never sees its resource taken away.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import stepfsm
from stepfsm import NotLoadedError, RunningCall, State, StepInUseError, _drain
from tests.support import in_thread

WAIT = 10.0  # seconds any event of these tests may take before the test fails


class Weights:
    size = 3


@stepfsm.stateful(
    guard=("generate", "peek", "stream", "shutdown", "fail", "agenerate", "apeek", "ashutdown")
)
class Model:
    """A model whose guarded calls can be held open: ``generate`` waits on ``go``."""

    def __init__(self) -> None:
        self.weights: Weights | None = None
        self.unloads = 0
        self.log: list[str] = []

    def load(self) -> None:
        self.weights = Weights()

    def unload(self) -> None:
        self.log.append("unload")
        self.unloads += 1
        self.weights = None

    def generate(self, entered: threading.Event, go: threading.Event, nested: bool = False) -> int:
        entered.set()
        assert go.wait(WAIT)
        if nested:
            assert self.peek() is not None  # a guarded call inside a running one
        assert self.weights is not None, "unloaded under a running call"
        self.log.append("generate returned")
        return self.weights.size

    def peek(self) -> Weights | None:
        return self.weights

    def stream(self, entered: threading.Event, go: threading.Event) -> Iterator[int]:
        yield 1  # suspended here, it holds nothing up
        entered.set()
        assert go.wait(WAIT)  # running here, it does
        assert self.weights is not None, "unloaded under a running generator"
        yield self.weights.size

    def shutdown(self) -> str:
        stepfsm.lifecycle(self).unload()  # its own call on this thread: no wait
        return "done"

    async def agenerate(
        self, entered: asyncio.Event, go: asyncio.Event, nested: bool = False
    ) -> int:
        entered.set()
        await go.wait()
        if nested:
            assert await self.apeek() is not None
        assert self.weights is not None, "unloaded under a running call"
        return self.weights.size

    def fail(self) -> None:
        raise RuntimeError("failed inside a guarded call")

    async def apeek(self) -> Weights | None:
        return self.weights

    async def ashutdown(self) -> str:
        await stepfsm.aunload(self)  # its own task's call: no wait
        return "done"


class Running:
    """A guarded call running on its own thread, held open until :meth:`finish`."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "caller") -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.result = fn(self.entered, self.go, *args)
        except BaseException as error:  # checked by the test
            self.error = error

    def started(self) -> Running:
        assert self.entered.wait(WAIT), "the guarded call never started"
        return self

    def finish(self) -> Any:
        self.go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as error:  # checked by the test
            box["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, box


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.001)


def draining(lc: stepfsm.Lifecycle) -> bool:
    return lc.statistics().state is State.UNLOADING


def test_unload_waits_for_a_running_call_and_a_call_after_it_began_is_refused() -> None:
    """The issue's scene: a slow generate() on one thread, unload() on another."""
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    call = Running(model.generate, name="slow-generate").started()
    unloader, unloaded = background(lc.unload)
    until(lambda: draining(lc), "the unload began")
    time.sleep(0.05)  # ample time to run the unload code, were it not waiting
    assert model.unloads == 0
    assert model.weights is not None
    late, refused = background(model.peek)  # a call after the unload began: it waits
    until(lambda: lc.statistics().waiting >= 1, "the late call waits")
    assert call.finish() == 3  # no AttributeError: the weights were still there
    unloader.join(WAIT)
    late.join(WAIT)
    assert unloaded == {"result": None}
    assert isinstance(refused["error"], NotLoadedError)
    assert model.log == ["generate returned", "unload"]
    assert lc.state is State.UNLOADED


def test_a_running_calls_nested_guarded_call_passes_while_the_unload_waits() -> None:
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    call = Running(model.generate, True).started()
    unloader, unloaded = background(lc.unload)
    until(lambda: draining(lc), "the unload began")
    assert call.finish() == 3  # its peek() passed: waiting would deadlock both
    unloader.join(WAIT)
    assert unloaded == {"result": None}
    assert model.unloads == 1


def test_drain_timeout_refuses_names_the_calls_and_leaves_the_step_failed_and_intact() -> None:
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 0.1
    call = Running(model.generate, name="worker-7").started()
    before = time.time()
    with pytest.raises(StepInUseError) as caught:
        lc.unload()
    error = caught.value
    # a thread's call is counted, not recorded (that keeps guarded calls free)
    assert error.calls == (RunningCall(None, None, error.calls[0].since),)
    assert before <= error.calls[0].since <= time.time()
    assert error.waited is not None
    assert error.waited >= 0.1
    assert error.holders == ()
    assert error.operation == "unload"
    assert "1 guarded call of it was still running" in str(error)
    assert "(1 on other thread)" in str(error)
    assert "did not run" in str(error)
    assert (lc.state, lc.error, model.unloads) == (State.FAILED, error, 0)
    assert model.weights is not None  # what it holds is intact
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), clone.calls, str(clone)) == (StepInUseError, error.calls, str(error))
    assert call.finish() == 3
    lc.unload()  # the calls returned: the clean-up runs the unload code
    assert (lc.state, model.unloads) == (State.UNLOADED, 1)


def test_force_does_not_wait() -> None:
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    call = Running(model.generate).started()
    lc.unload(force=True)
    assert (lc.state, model.unloads) == (State.UNLOADED, 1)
    with pytest.raises(AssertionError, match="unloaded under a running call"):
        call.finish()  # what force means: the call loses its resource


def test_a_call_on_the_unloading_thread_does_not_wait_for_itself() -> None:
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 0.0  # any wait at all would raise StepInUseError
    assert model.shutdown() == "done"
    assert (lc.state, model.unloads) == (State.UNLOADED, 1)


def test_a_suspended_generator_does_not_hold_up_the_unload_a_running_one_does() -> None:
    model = Model()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 0.0
    model.load()
    entered, go = threading.Event(), threading.Event()
    suspended = model.stream(entered, go)
    assert next(suspended) == 1
    lc.unload()  # no StepInUseError: a suspended generator runs nothing
    assert model.unloads == 1
    suspended.close()

    model.load()
    lc.drain_timeout = None
    gen = model.stream(entered, go)
    assert next(gen) == 1
    resumed, box = background(lambda: next(gen))  # runs until go is set
    assert entered.wait(WAIT)
    unloader, unloaded = background(lc.unload)
    until(lambda: draining(lc), "the unload began")
    time.sleep(0.05)
    assert model.unloads == 1  # the second unload waits for the running generator
    go.set()
    resumed.join(WAIT)
    unloader.join(WAIT)
    assert box == {"result": 3}
    assert unloaded == {"result": None}
    assert model.unloads == 2


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda lc: lc.reload(), id="reload"),
        pytest.param(lambda lc: stepfsm.unload_all(), id="unload_all"),
        pytest.param(lambda lc: lc.unload(), id="unload"),
    ],
)
def test_every_unload_drains(operation: Callable[[stepfsm.Lifecycle], object]) -> None:
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    call = Running(model.generate).started()
    worker, box = background(lambda: operation(lc))
    until(lambda: draining(lc), "the unload began")
    time.sleep(0.05)
    assert model.unloads == 0
    assert call.finish() == 3
    worker.join(WAIT)
    assert "error" not in box
    assert model.unloads == 1


def test_unload_all_evicts_holders_but_still_drains() -> None:
    model = Model()
    lc = stepfsm.lifecycle(model)
    lc.acquire("a holder")
    call = Running(model.generate).started()
    worker, box = background(stepfsm.unload_all)
    until(lambda: draining(lc), "unload_all began")
    assert model.unloads == 0
    call.finish()
    worker.join(WAIT)
    assert list(box["result"]) == [lc.name]
    assert lc.holders == ()


def test_reload_force_and_the_last_release_follow_the_same_rules() -> None:
    model = Model()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 0.05
    model.load()
    call = Running(model.generate).started()
    lc.reload(force=True)  # force: no wait (the call now sees the new weights)
    assert model.unloads == 1
    assert lc.state is State.LOADED
    assert call.finish() == 3
    lc.unload()

    lc.acquire("holder")  # it loads; the last release unloads, and drains first
    call = Running(model.generate).started()
    with pytest.raises(StepInUseError):
        lc.release("holder")
    assert (lc.state, model.unloads) == (State.FAILED, 2)
    assert call.finish() == 3
    lc.unload()
    assert (lc.state, model.unloads) == (State.UNLOADED, 3)


def test_drain_timeout_is_a_setting_at_every_level() -> None:
    model = Model()
    lc = stepfsm.lifecycle(model)
    assert lc.drain_timeout is None  # nothing set: the timeout in force (None: forever)
    lc.timeout = 2.0
    assert lc.drain_timeout == 2.0
    with stepfsm.configure(drain_timeout=0.5):
        assert lc.drain_timeout == 0.5
        lc.drain_timeout = 0.25
        assert lc.drain_timeout == 0.25
    lc.drain_timeout = None
    assert lc.drain_timeout == 2.0

    @stepfsm.stateful(drain_timeout=1.5)
    class Slow:
        def load(self) -> None: ...
        def unload(self) -> None: ...

    class Child(stepfsm.Stateful, drain_timeout=3):
        def load(self) -> None: ...
        def unload(self) -> None: ...

    assert stepfsm.lifecycle(Slow()).drain_timeout == 1.5
    assert stepfsm.lifecycle(Child()).drain_timeout == 3.0
    with pytest.raises(ValueError, match="drain_timeout must be >= 0"):
        stepfsm.configure(drain_timeout=-1)
    with pytest.raises(TypeError, match="drain_timeout must be a number"):
        lc.drain_timeout = "soon"  # type: ignore[assignment]
    with pytest.raises(stepfsm.DefinitionError, match="drain_timeout"):

        @stepfsm.stateful(drain_timeout=-2)
        class Bad:
            def load(self) -> None: ...
            def unload(self) -> None: ...


@stepfsm.stateful(guard=("generate",))
class Slotted:
    """No ``__dict__``: its guard is the wrapper reading the table of loaded steps."""

    __slots__ = ("__weakref__", "weights")

    def __init__(self) -> None:
        self.weights: Weights | None = None

    def load(self) -> None:
        self.weights = Weights()

    def unload(self) -> None:
        self.weights = None

    def generate(self, entered: threading.Event, go: threading.Event) -> int:
        entered.set()
        assert go.wait(WAIT)
        assert self.weights is not None, "unloaded under a running call"
        return self.weights.size


def test_the_wrapper_guard_of_a_slotted_class_drains_too() -> None:
    step = Slotted()
    step.load()
    lc = stepfsm.lifecycle(step)
    call = Running(step.generate).started()
    unloader, box = background(lc.unload)
    until(lambda: draining(lc), "the unload began")
    time.sleep(0.05)
    assert step.weights is not None
    assert call.finish() == 3
    unloader.join(WAIT)
    assert box == {"result": None}
    assert step.weights is None


# ------------------------------------------------------------------ async


def test_aunload_waits_for_a_running_async_call_and_a_later_call_is_refused() -> None:
    model = Model()

    async def main() -> None:
        model.load()
        entered, go = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(model.agenerate(entered, go), name="agen")
        await entered.wait()
        unload = asyncio.create_task(stepfsm.aunload(model))
        lc = stepfsm.lifecycle(model)
        while not draining(lc):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert model.unloads == 0
        late = asyncio.create_task(model.apeek())
        await asyncio.sleep(0.01)
        go.set()
        assert await task == 3
        await unload
        with pytest.raises(NotLoadedError):
            await late
        assert model.unloads == 1
        assert not lc._busy()

    asyncio.run(main())


def test_async_drain_timeout_names_the_task() -> None:
    model = Model()

    async def main() -> None:
        model.load()
        lc = stepfsm.lifecycle(model)
        lc.drain_timeout = 0.05
        entered, go = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(model.agenerate(entered, go), name="agen-1")
        await entered.wait()
        with pytest.raises(StepInUseError) as caught:
            await stepfsm.aunload(model)
        assert [(c.method, c.where) for c in caught.value.calls] == [("agenerate", "task 'agen-1'")]
        assert lc.state is State.FAILED
        assert model.weights is not None
        go.set()
        assert await task == 3

    asyncio.run(main())


def test_an_async_calls_nested_call_passes_and_its_own_unload_does_not_wait() -> None:
    model = Model()

    async def main() -> None:
        model.load()
        lc = stepfsm.lifecycle(model)
        entered, go = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(model.agenerate(entered, go, True))
        await entered.wait()
        unload = asyncio.create_task(stepfsm.aunload(model))
        while not draining(lc):
            await asyncio.sleep(0.001)
        go.set()
        assert await task == 3  # its apeek() passed while the unload waited
        await unload

        model.load()
        lc.drain_timeout = 0.0  # any wait at all would raise StepInUseError
        assert await model.ashutdown() == "done"
        assert lc.state is State.UNLOADED

    asyncio.run(main())


# ------------------------------------------------------------------ the count itself


def test_the_stale_scan_counts_no_reference_of_its_own() -> None:
    """Only the owner holds the token: nothing is stale (a closure cell of the scan's own
    counting would be one more referrer, and made the drain skip a running call)."""

    class Token:
        pass

    token = Token()
    owner = [token]
    assert _drain.stale(token, owner) == 0
    copy = {"held": token}  # a dict that is not a running call: stale
    assert _drain.stale(token, owner) == 1
    del copy


@pytest.mark.parametrize("kind", ["thread", "task"])
def test_a_call_running_past_the_stale_scan_is_still_waited_for(kind: str) -> None:
    """A call running longer than the drain's first heap scan (after ~1 s) still holds the
    unload back: the unload's code runs after the call returned, never under it."""
    model = Model()
    model.load()
    entered, go = threading.Event(), threading.Event()
    events: list[str] = []
    if kind == "thread":
        worker = threading.Thread(target=model.generate, args=(entered, go))
    else:

        async def call() -> None:
            aentered, ago = asyncio.Event(), asyncio.Event()
            task = asyncio.ensure_future(model.agenerate(aentered, ago))
            await aentered.wait()
            entered.set()
            await asyncio.to_thread(go.wait, WAIT)
            ago.set()
            await task

        worker = threading.Thread(target=lambda: asyncio.run(call()))
    worker.start()
    assert entered.wait(WAIT)
    timer = threading.Timer(1.6, lambda: (events.append("call let go"), go.set()))
    timer.start()
    stepfsm.lifecycle(model).unload()
    events.append("unload returned")
    worker.join(WAIT)
    timer.join()
    assert events == ["call let go", "unload returned"]
    assert model.unloads == 1


def test_no_call_is_counted_when_none_runs_and_each_running_one_is() -> None:
    """The token's reference count is exact: 0 with no call, n with n calls held open."""
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 0.0
    calls = [Running(model.generate).started() for _ in range(3)]
    with pytest.raises(StepInUseError) as caught:
        lc.unload()
    assert len(caught.value.calls) == 3
    assert "(3 on other threads)" in str(caught.value)
    for call in calls:
        assert call.finish() == 3
    lc.unload()  # the clean-up: nothing runs now, so no wait at all (drain_timeout 0)
    model.load()
    assert in_thread(lc.unload) is None
    assert model.unloads == 2


def test_a_call_that_raised_holds_nothing_though_its_traceback_is_kept() -> None:
    """IPython keeps the last error's traceback (sys.last_traceback), and with it the
    frame of the failed call: that frame no longer holds the token."""
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 0.0
    with pytest.raises(RuntimeError) as caught:
        model.fail()
    kept = caught.value.__traceback__
    lc.unload()  # no StepInUseError
    assert model.unloads == 1
    assert kept is not None


def test_a_finished_frame_that_still_holds_the_token_does_not_hold_up_the_unload() -> None:
    """An interrupt between a guard's last statements can leave a finished frame holding
    the token, kept by a traceback: the drain tells it from a running call (about 1 s)."""
    model = Model()
    model.load()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 30.0

    def ended_holding(token: object) -> None:
        _stepfsm_t = token  # what an interrupted guard leaves in its frame
        raise RuntimeError("interrupted")

    try:
        ended_holding(vars(model)["__stepfsm_loaded__"])
    except RuntimeError as error:
        kept = error.__traceback__  # the finished frame, alive
    started = time.monotonic()
    lc.unload()
    assert lc.state is State.UNLOADED
    assert time.monotonic() - started < 10
    assert kept is not None


# ------------------------------------------------------------------ found in review


@stepfsm.stateful(guard=("work", "peek", "nested", "unload_inside"))
class Busy:
    """Counts its guarded calls in flight; its unload records when it overlapped one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0
        self.overlaps = 0
        self.weights: Weights | None = None

    def load(self) -> None:
        time.sleep(0.002)
        self.weights = Weights()

    def unload(self) -> None:
        if self.busy:
            self.overlaps += 1
        self.weights = None

    def work(self) -> None:
        with self.lock:
            self.busy += 1
        time.sleep(0.0005)
        with self.lock:
            self.busy -= 1

    def peek(self) -> Weights | None:
        return self.weights

    def nested(self, started: threading.Event, pause: float) -> bool:
        started.set()
        time.sleep(pause)  # the unload begins meanwhile
        return self.peek() is not None

    def unload_inside(self, barrier: threading.Barrier) -> None:
        barrier.wait(WAIT)
        stepfsm.lifecycle(self).unload()


def test_a_call_whose_slow_path_wait_ends_just_before_an_unload_still_waits_for_it() -> None:
    """The slow path returned because the step was loaded; an unload began before the
    call took the token: the call must wait again, not run without it (12 threads
    hammering a load/unload loop with a tiny switch interval; 0 overlaps allowed)."""
    model = Busy()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            with contextlib.suppress(stepfsm.StepStateError):
                model.work()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(12)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 3
        cycles = 0
        while time.monotonic() < deadline:
            model.load()
            model.unload()
            cycles += 1
    finally:
        stop.set()
        sys.setswitchinterval(previous)
        for thread in threads:
            thread.join(WAIT)
    assert cycles > 10
    assert model.overlaps == 0


def test_a_nested_call_made_while_the_unload_tells_its_listeners_passes() -> None:
    """The flag goes before the listeners of begin_unload run: a running call's nested
    call made then must pass too (it waited for an unload that waited for it)."""
    model = Busy()
    model.load()
    lc = stepfsm.lifecycle(model)
    lc.drain_timeout = 5.0
    lc.subscribe(lambda lc, record: time.sleep(0.3) if record.trigger == "begin_unload" else None)
    started = threading.Event()
    worker, box = background(lambda: model.nested(started, 0.1))
    assert started.wait(WAIT)
    began = time.monotonic()
    lc.unload()
    worker.join(WAIT)
    assert box == {"result": True}
    assert time.monotonic() - began < 2.0


def test_two_running_calls_that_unload_their_own_step_do_not_deadlock() -> None:
    model = Busy()
    model.load()
    barrier = threading.Barrier(2)
    results = [background(lambda: model.unload_inside(barrier)) for _ in range(2)]
    for thread, _ in results:
        thread.join(WAIT)
        assert not thread.is_alive(), "deadlocked"
    errors = [box.get("error") for _, box in results]
    assert sum(error is None for error in errors) == 1  # one unloads, after the other returns
    refused = next(error for error in errors if error is not None)
    assert isinstance(refused, stepfsm.TransitionInProgressError)
    assert "waiting for the guarded call this thread is running" in str(refused)
    assert stepfsm.lifecycle(model).state is State.UNLOADED


def test_a_copy_of_the_instance_dict_does_not_count_as_a_running_call() -> None:
    model = Model()
    model.load()
    saved = dict(vars(model))  # holds the token, but runs nothing
    lc = stepfsm.lifecycle(model)
    lc.on_leak = "ignore"  # (the copy keeps the weights alive too)
    lc.drain_timeout = 10.0
    began = time.monotonic()
    lc.unload()
    assert lc.state is State.UNLOADED
    assert time.monotonic() - began < 5.0
    assert saved


def test_a_loaded_step_whose_dict_was_replaced_gets_its_flag_back() -> None:
    model = Model()
    model.load()
    state = dict(vars(model))
    del state["__stepfsm_loaded__"]
    model.__dict__ = state  # the flag is gone, the step is still loaded
    assert in_thread(model.peek, timeout=5) is not None  # no endless wait for the flag
    assert "__stepfsm_loaded__" in vars(model)


def test_a_generator_resumed_after_an_unload_began_waits_for_it_then_is_refused() -> None:
    model = Model()
    model.load()
    entered, go = threading.Event(), threading.Event()
    go.set()
    gen = model.stream(entered, go)
    assert next(gen) == 1  # suspended: the unload does not wait for it
    model.unload()
    with pytest.raises(NotLoadedError):
        next(gen)  # its next step checks again, as a new call would


@stepfsm.stateful(guard=("generate",))
class SlottedNeverLoaded:
    """Slotted, and its load always fails."""

    __slots__ = ("__weakref__",)

    def load(self) -> None:
        raise RuntimeError("no server")

    def unload(self) -> None:
        pass

    def generate(self, entered: threading.Event) -> None:
        entered.set()


def test_a_call_during_the_clean_up_of_a_step_that_never_loaded_is_refused() -> None:
    """With no load's token, the pass-through for nested calls of running calls (in force
    from begin_unload on) must not let a slotted class's call, whose guard variable is
    None, through while the clean-up's listeners run."""
    step = SlottedNeverLoaded()
    lc = stepfsm.lifecycle(step)
    with pytest.raises(stepfsm.LoadError):
        lc.load()
    gate = threading.Event()
    lc.subscribe(lambda lc, record: gate.wait(WAIT) if record.trigger == "begin_unload" else None)
    cleaner, _ = background(lc.unload)
    until(lambda: draining(lc), "the clean-up began")
    entered = threading.Event()
    caller, called = background(lambda: step.generate(entered))
    time.sleep(0.05)
    gate.set()
    cleaner.join(WAIT)
    caller.join(WAIT)
    assert not entered.is_set(), "a call ran during the clean-up"
    assert isinstance(called["error"], NotLoadedError)


@stepfsm.stateful(guard=("other", "self_unload"))
class SelfUnloading:
    """A guarded call that unloads its own step under a timeout, and goes on if it expires."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.seen: list[str | None] = []

    def load(self) -> None:
        self.model = "weights"

    def unload(self) -> None:
        self.model = None

    async def other(self) -> None:
        await asyncio.sleep(0.3)
        self.seen.append(self.model)

    async def self_unload(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.05, task.cancel)  # what asyncio.timeout does
        with contextlib.suppress(asyncio.CancelledError):
            await stepfsm.aunload(self)  # waits for other(): cancelled meanwhile
        await asyncio.sleep(0.5)  # its aunload was given up: this call runs on, and counts
        self.seen.append(self.model)


def test_a_given_up_aunload_stops_excusing_its_tasks_calls() -> None:
    """An aunload() inside a guarded call excuses that call (its own task) only while the
    task awaits it: once the task stops waiting, its call is a running call like any."""
    step = SelfUnloading()

    async def main() -> None:
        await stepfsm.aload(step)
        other = asyncio.ensure_future(step.other())
        await asyncio.sleep(0.01)
        await step.self_unload()
        await other
        for _ in range(400):  # the unload goes on in its worker once nothing runs
            if stepfsm.state(step) is State.UNLOADED:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert step.seen == ["weights", "weights"], "the unload ran under a running call"
    assert stepfsm.state(step) is State.UNLOADED


@stepfsm.stateful(guard=("agenerate", "helper", "anested"))
class AsyncClient:
    """An async step whose guarded async call uses plain and async guarded helpers."""

    def __init__(self) -> None:
        self.client: str | None = None
        self.log: list[object] = []

    async def load(self) -> None:
        self.client = "client"

    async def unload(self) -> None:
        self.log.append("unload")
        self.client = None

    def helper(self) -> str | None:
        return self.client

    async def anested(self) -> str | None:
        return self.client

    async def agenerate(self, nested: str) -> None:
        await asyncio.sleep(0.2)  # the unload begins meanwhile, and waits
        used = self.helper() if nested == "sync" else await self.anested()
        self.log.append(("nested", used))


@pytest.mark.parametrize("nested", ["sync", "async"])
def test_an_async_steps_running_call_may_use_its_helpers_while_an_unload_waits(
    nested: str,
) -> None:
    """docs/design.md §11: a running call's nested guarded call passes, also a plain
    ``def`` helper on an async step's loop thread (not docs/design.md §10's refusal to block)."""
    step = AsyncClient()

    async def main() -> None:
        await stepfsm.aload(step)
        stepfsm.lifecycle(step).drain_timeout = 5.0
        call = asyncio.ensure_future(step.agenerate(nested))
        await asyncio.sleep(0.05)
        await stepfsm.aunload(step)
        await call

    asyncio.run(main())
    assert step.log == [("nested", "client"), "unload"]
