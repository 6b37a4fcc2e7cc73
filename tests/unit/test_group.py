"""stepfsm.group(): several steps loaded at once, all or nothing (docs/design.md, section 12)."""

from __future__ import annotations

import _thread
import asyncio
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import stepfsm
from stepfsm import GroupLoadError, LoadError, State
from tests.conftest import HANDLES, FakeStep
from tests.fakes import Boom
from tests.unit.async_support import AsyncStep

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup
else:  # pragma: no cover - CI runs 3.11
    from exceptiongroup import ExceptionGroup


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler (another library may have replaced it): Ctrl-C raises."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def steps(n: int, delay: float = 0.0) -> list[FakeStep]:
    return [FakeStep(f"s{i}", delay=delay) for i in range(n)]


def test_loads_run_concurrently() -> None:
    """4 steps x 0.3 s with 4 workers take about 0.3 s, not 1.2 s."""
    four = steps(4, delay=0.3)
    group = stepfsm.group(*four, max_workers=4)
    started = time.monotonic()
    group.load()
    took = time.monotonic() - started
    assert took < 0.8, f"4 loads of 0.3 s took {took:.2f} s with 4 workers: not concurrent"
    assert group.states == (State.LOADED,) * 4
    assert all(step.held for step in four)
    assert group.held == tuple(stepfsm.lifecycle(s).name for s in four)


def test_max_workers_bounds_the_pool() -> None:
    """With one worker the loads run one after another."""
    three = steps(3, delay=0.1)
    started = time.monotonic()
    stepfsm.group(*three, max_workers=1).load()
    assert time.monotonic() - started >= 0.3


@stepfsm.stateful
class Parent:
    """A step that loads a shared child inside its own load (composition)."""

    def __init__(self, child: FakeStep) -> None:
        self.child = child

    def load(self) -> None:
        stepfsm.ensure_loaded(self.child)

    def unload(self) -> None:
        pass


def test_a_shared_child_loads_once() -> None:
    """Two parents loading the same child inside their loads: the child loads once."""
    child = FakeStep("child", delay=0.2)
    first, second = Parent(child), Parent(child)
    group = stepfsm.group(first, second)
    group.load()
    assert child.loads == 1, f"the shared child loaded {child.loads} times"
    assert stepfsm.state(child) is State.LOADED
    group.unload()
    assert stepfsm.state(child) is State.UNLOADED, "the parents' unloads did not free the child"
    assert child.unloads == 1


def test_a_failed_load_rolls_back_what_the_call_loaded(quiet_log: None) -> None:
    """One load fails: the others this call loaded are unloaded again (reverse order), a step
    loaded before the call stays loaded, and GroupLoadError carries the failure."""
    before, ok_a, bad, ok_b = steps(4)
    before.load()
    bad.fail_load = Boom("CUDA out of memory")
    bad.delay = 0.1  # the others have loaded by the time it fails
    order: list[str] = []
    for step in (ok_a, ok_b):
        stepfsm.lifecycle(step).subscribe(
            lambda lc, record: order.append(lc.name) if record.trigger == "begin_unload" else None
        )
    with pytest.raises(GroupLoadError) as caught:
        stepfsm.group(before, ok_a, bad, ok_b).ensure_loaded()
    error = caught.value
    assert isinstance(error, LoadError)
    assert isinstance(error, ExceptionGroup)
    assert error.failed == (stepfsm.lifecycle(bad).name,)
    assert error.rolled_back == (stepfsm.lifecycle(ok_b).name, stepfsm.lifecycle(ok_a).name)
    assert order == [stepfsm.lifecycle(ok_b).name, stepfsm.lifecycle(ok_a).name]
    assert len(error.exceptions) == 1
    assert isinstance(error.exceptions[0], LoadError)
    assert isinstance(error.exceptions[0].cause, Boom)
    assert "CUDA out of memory" in str(error)
    assert stepfsm.state(before) is State.LOADED, "a step loaded before the call was unloaded"
    assert stepfsm.state(bad) is State.FAILED
    assert not ok_a.held
    assert not ok_b.held
    assert [r.owner for r in HANDLES.held()] == ["s0"], "rollback left resources open"


def test_every_failure_is_reported_and_the_group_splits(quiet_log: None) -> None:
    """Two failures: both in the group, which splits like any ExceptionGroup."""
    a, b, c = steps(3, delay=0.1)  # all three start before either failure
    a.fail_load = Boom("first")
    c.fail_load = Boom("second")
    with pytest.raises(GroupLoadError) as caught:
        stepfsm.group(a, b, c).load()
    matched, rest = caught.value.split(LoadError)
    assert rest is None
    assert matched is not None
    assert sorted(str(e.cause) for e in matched.exceptions) == ["first", "second"]  # type: ignore[union-attr]
    assert stepfsm.state(b) is State.UNLOADED
    # a part split off is still a GroupLoadError (a LoadError) naming its own steps
    first, rest = caught.value.split(
        lambda e: not isinstance(e, GroupLoadError) and "Boom: first" in str(e)
    )
    assert isinstance(first, GroupLoadError)
    assert isinstance(rest, GroupLoadError)
    assert first.failed == (stepfsm.lifecycle(a).name,)
    assert rest.failed == (stepfsm.lifecycle(c).name,)


def test_a_rollback_error_never_masks_the_load_error(quiet_log: None) -> None:
    """The rollback's unload raises: the load error is raised, the unload error kept in it."""
    ok, bad = steps(2)
    ok.fail_unload = Boom("unload broke")
    bad.fail_load = Boom("load broke")
    bad.delay = 0.1
    with pytest.raises(GroupLoadError) as caught:
        stepfsm.group(ok, bad).load()
    assert isinstance(caught.value.cause.cause, Boom)  # type: ignore[attr-defined]
    assert "load broke" in str(caught.value.cause)
    assert len(caught.value.rollback_errors) == 1
    assert "unload broke" in str(caught.value.rollback_errors[0])
    assert stepfsm.state(ok) is State.FAILED


def test_ctrl_c_while_waiting_settles_then_rolls_back(python_sigint: None) -> None:
    """Ctrl-C in the calling thread while loads run: they finish, then what loaded is
    unloaded again and KeyboardInterrupt is raised unchanged."""
    slow, interrupter = steps(2)
    slow.delay = 0.3

    @stepfsm.stateful
    class Interrupter:
        def load(self) -> None:
            _thread.interrupt_main()  # as a Ctrl-C arriving while the caller waits

        def unload(self) -> None:
            pass

    ctrl_c = Interrupter()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stepfsm.group(slow, interrupter, ctrl_c).load()
    assert time.monotonic() - started >= 0.3, "the interrupt did not wait for the slow load"
    assert [stepfsm.state(s) for s in (slow, interrupter, ctrl_c)] == [State.UNLOADED] * 3
    assert slow.loads == 1
    assert slow.unloads == 1
    assert HANDLES.held() == []


def test_an_interrupt_inside_a_load_is_reraised_after_the_rollback(quiet_log: None) -> None:
    """A load raising KeyboardInterrupt in its worker: the rollback runs, the interrupt is
    raised as it was (no GroupLoadError)."""
    ok, interrupted = steps(2)
    interrupted.fail_load = KeyboardInterrupt()
    interrupted.delay = 0.1
    with pytest.raises(KeyboardInterrupt):
        stepfsm.group(ok, interrupted).load()
    assert stepfsm.state(ok) is State.UNLOADED
    assert stepfsm.state(interrupted) is State.FAILED


def test_load_applies_on_repeat_before_starting_anything() -> None:
    """A loaded step under on_repeat='raise' refuses the whole call; nothing else loads."""
    loaded, other = steps(2)
    loaded.load()
    with pytest.raises(stepfsm.AlreadyLoadedError):
        stepfsm.group(loaded, other).load()
    assert other.loads == 0
    stepfsm.lifecycle(loaded).on_repeat = "warn"
    group = stepfsm.group(loaded, other)
    with pytest.warns(stepfsm.RepeatedLoadWarning):
        group.load()
    assert group.held == (stepfsm.lifecycle(other).name,), "the group holds a step it did not load"


def test_ensure_loaded_skips_loaded_steps() -> None:
    loaded, other = steps(2)
    loaded.load()
    group = stepfsm.group(loaded, other)
    assert group.ensure_loaded() == (stepfsm.lifecycle(other).name,)
    assert group.ensure_loaded() == ()
    assert loaded.loads == 1
    assert other.loads == 1


def test_with_loads_then_releases_exactly_what_it_loaded() -> None:
    """The block holds what it loaded (unload() elsewhere is refused); at its end those
    steps unload and the ones loaded before stay loaded."""
    before, fresh = steps(2)
    before.load()
    with stepfsm.group(before, fresh) as group:
        assert group.states == (State.LOADED, State.LOADED)
        with pytest.raises(stepfsm.StepInUseError, match="Group of 2 steps"):
            fresh.unload()
    assert stepfsm.state(fresh) is State.UNLOADED
    assert stepfsm.state(before) is State.LOADED


def test_unload_releases_in_reverse_group_order_whatever_order_the_loads_ended() -> None:
    """The first step loads slowest; unload() still releases the last step first."""
    slow, fast = FakeStep("slow", delay=0.2), FakeStep("fast")
    order: list[str] = []
    for step in (slow, fast):
        stepfsm.lifecycle(step).subscribe(
            lambda lc, record: order.append(lc.name) if record.trigger == "begin_unload" else None
        )
    group = stepfsm.group(slow, fast)
    group.load()
    assert group.unload() == (stepfsm.lifecycle(fast).name, stepfsm.lifecycle(slow).name)
    assert order == [stepfsm.lifecycle(fast).name, stepfsm.lifecycle(slow).name]


def test_unload_leaves_a_step_other_holders_still_hold() -> None:
    shared, own = steps(2)
    group = stepfsm.group(shared, own)
    group.load()
    stepfsm.lifecycle(shared).acquire("someone else")
    assert group.unload() == (stepfsm.lifecycle(own).name, stepfsm.lifecycle(shared).name)
    assert stepfsm.state(shared) is State.LOADED
    assert stepfsm.state(own) is State.UNLOADED
    stepfsm.lifecycle(shared).release("someone else")
    assert stepfsm.state(shared) is State.UNLOADED, "the last release did not unload it"


def test_a_forced_unload_evicts_the_group_which_can_load_again() -> None:
    """unload(force=True) of a held step evicts the group's hold; the group loads it again
    and releases it once."""
    step = FakeStep()
    group = stepfsm.group(step)
    group.load()
    stepfsm.lifecycle(step).unload(force=True)
    assert stepfsm.state(step) is State.UNLOADED
    assert group.ensure_loaded() == (stepfsm.lifecycle(step).name,)
    assert group.held == (stepfsm.lifecycle(step).name,)
    assert group.unload() == (stepfsm.lifecycle(step).name,)
    assert stepfsm.state(step) is State.UNLOADED
    assert step.loads == 2


def test_a_failure_stops_the_loads_not_started_yet(quiet_log: None) -> None:
    """With one worker, a first load that fails means the others never start."""
    bad, later, last = steps(3, delay=0.05)
    bad.fail_load = Boom("no")
    with pytest.raises(GroupLoadError):
        stepfsm.group(bad, later, last, max_workers=1).load()
    assert (later.loads, last.loads) == (0, 0), "loads started after a failure"


def test_ctrl_c_in_a_load_that_is_still_being_started_is_rolled_back(
    python_sigint: None,
) -> None:
    """Ctrl-C arriving while the caller is still submitting loads: the loads already started
    are waited for and rolled back (none is left loaded and held)."""

    @stepfsm.stateful
    class CtrlCInLoad:
        def load(self) -> None:
            _thread.interrupt_main()
            time.sleep(0.2)

        def unload(self) -> None:
            pass

    first = CtrlCInLoad()
    others = steps(3, delay=0.05)
    group = stepfsm.group(first, *others)
    with pytest.raises(KeyboardInterrupt):
        group.load()
    assert stepfsm.state(first) is State.UNLOADED
    assert stepfsm.lifecycle(first).holders == ()
    assert group.held == ()
    assert all(stepfsm.state(s) is State.UNLOADED for s in others)


def test_ctrl_c_inside_a_rollback_unload_does_not_stop_the_rollback(quiet_log: None) -> None:
    """An interrupt raised by one unload of the rollback: the other releases still run, then
    the interrupt is raised; nothing stays held by the group."""
    first, interrupting, bad = steps(3)
    interrupting.fail_unload = KeyboardInterrupt()
    bad.fail_load = Boom("boom")
    bad.delay = 0.1
    group = stepfsm.group(first, interrupting, bad)
    with pytest.raises(KeyboardInterrupt):
        group.load()
    assert stepfsm.state(first) is State.UNLOADED
    assert stepfsm.lifecycle(first).holders == ()
    assert stepfsm.lifecycle(interrupting).holders == ()
    assert group.held == ()


def test_two_threads_loading_one_group_leave_no_hold_behind() -> None:
    """Both threads' ensure_loaded() acquire the step; unload() releases every hold."""
    step = FakeStep("s", delay=0.2)
    group = stepfsm.group(step)
    threads = [threading.Thread(target=group.ensure_loaded) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert step.loads == 1
    group.unload()
    assert stepfsm.state(step) is State.UNLOADED
    assert stepfsm.lifecycle(step).holders == ()


def test_rolled_back_names_only_steps_that_ended_unloaded(quiet_log: None) -> None:
    """A step another holder keeps, or whose unload raised, is not reported as unloaded."""
    kept, broken, bad = steps(3)
    broken.fail_unload = Boom("unload broke")
    bad.fail_load = Boom("load broke")
    bad.delay = 0.2
    holder = threading.Timer(0.05, lambda: stepfsm.lifecycle(kept).acquire("someone"))
    holder.start()
    with pytest.raises(GroupLoadError) as caught:
        stepfsm.group(kept, broken, bad).load()
    holder.join()
    assert caught.value.rolled_back == ()
    assert stepfsm.state(kept) is State.LOADED
    assert stepfsm.state(broken) is State.FAILED
    assert len(caught.value.rollback_errors) == 1
    stepfsm.lifecycle(kept).release("someone")


def test_group_loads_from_threads_are_safe() -> None:
    """Two threads loading overlapping groups: each step loads once."""
    a, b, c = steps(3, delay=0.05)
    first, second = stepfsm.group(a, b), stepfsm.group(b, c)
    errors: list[BaseException] = []

    def run(group: stepfsm.Group) -> None:
        try:
            group.ensure_loaded()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(g,)) for g in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert [s.loads for s in (a, b, c)] == [1, 1, 1]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        stepfsm.group()
    with pytest.raises(ValueError, match="max_workers"):
        stepfsm.group(FakeStep(), max_workers=0)
    with pytest.raises(TypeError, match="not stateful"):
        stepfsm.group(object())
    step = FakeStep()
    assert len(stepfsm.group(step, step)) == 1, "a step given twice is one step"


def test_group_load_error_pickles() -> None:
    error = GroupLoadError([("A 'a'", LoadError("A 'a'", "load", Boom("x")))], ["B 'b'"], [])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is GroupLoadError
    assert (copy.failed, copy.rolled_back, str(copy)) == (
        error.failed,
        error.rolled_back,
        str(error),
    )


# ----------------------------------------------------------------- awaited


class Ticker:
    """Counts ticks of the event loop every 10 ms while a group load is awaited."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.ticks += 1
            last = now


def test_aload_runs_loads_concurrently_while_the_loop_runs() -> None:
    """await group.aload(): 4 x 0.3 s sync loads with 4 workers take ~0.3 s; the loop ticks."""
    four = steps(4, delay=0.3)
    group = stepfsm.group(*four, max_workers=4)
    ticker = Ticker()

    async def main() -> float:
        stop = asyncio.Event()
        ticking = asyncio.ensure_future(ticker.run(stop))
        started = time.monotonic()
        await group.aload()
        took = time.monotonic() - started
        stop.set()
        await ticking
        return took

    took = asyncio.run(main())
    assert took < 0.8, f"4 loads of 0.3 s took {took:.2f} s with 4 workers: not concurrent"
    assert ticker.ticks >= 10, "the event loop did not run while the group loaded"
    assert group.states == (State.LOADED,) * 4
    names = tuple(stepfsm.lifecycle(s).name for s in four)
    assert group.held == names
    assert asyncio.run(group.aunload()) == names[::-1]  # released in reverse group order
    assert group.held == ()
    assert group.states == (State.UNLOADED,) * 4
    assert all(step.unloads == 1 for step in four)


class SlowAsync(AsyncStep):
    """An async step whose load awaits 0.3 s on the loop."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

        async def slow() -> None:
            await asyncio.sleep(0.3)

        self.hook = slow


def test_async_steps_load_on_the_loop_concurrently_and_async_with_releases() -> None:
    """Two async steps (async def load, 0.3 s each): loaded together, held for the block."""
    first, second = SlowAsync("a0"), SlowAsync("a1")
    group = stepfsm.group(first, second)
    inside: list[tuple[State, ...]] = []

    async def main() -> float:
        started = time.monotonic()
        async with group as same:
            assert same is group
            took = time.monotonic() - started
            inside.append(group.states)
        return took

    took = asyncio.run(main())
    assert took < 0.55, f"two 0.3 s async loads took {took:.2f} s: not concurrent"
    assert inside == [(State.LOADED, State.LOADED)]
    assert group.states == (State.UNLOADED, State.UNLOADED)
    assert (first.loads, first.unloads, second.loads, second.unloads) == (1, 1, 1, 1)


def test_aload_rolls_back_on_failure_like_load(quiet_log: None) -> None:
    """One awaited load fails: what the call loaded is unloaded, GroupLoadError says what."""
    before, ok_a, bad, ok_b = steps(4)
    before.load()
    bad.fail_load = Boom("CUDA out of memory")
    bad.delay = 0.1
    with pytest.raises(GroupLoadError) as caught:
        asyncio.run(stepfsm.group(before, ok_a, bad, ok_b).aensure_loaded())
    error = caught.value
    assert error.failed == (stepfsm.lifecycle(bad).name,)
    assert error.rolled_back == (stepfsm.lifecycle(ok_b).name, stepfsm.lifecycle(ok_a).name)
    assert isinstance(error.exceptions[0].cause, Boom)
    assert stepfsm.state(before) is State.LOADED
    assert stepfsm.state(bad) is State.FAILED
    assert [r.owner for r in HANDLES.held()] == ["s0"], "rollback left resources open"


def test_cancelling_aload_settles_the_started_loads_then_rolls_back() -> None:
    """The caller is cancelled mid-load: started loads end, then are released; nothing held."""
    three = steps(3, delay=0.3)
    group = stepfsm.group(*three, max_workers=2)  # the third has not started when cancelled

    async def main() -> None:
        loading = asyncio.ensure_future(group.aload())
        await asyncio.sleep(0.1)
        loading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loading

    asyncio.run(main())
    assert group.held == ()
    assert [s.loads for s in three] == [1, 1, 0], "a load not started yet was started"
    assert group.states == (State.UNLOADED,) * 3
    assert HANDLES.held() == [], "the rollback left resources open"


def test_aload_applies_on_repeat_to_async_steps_too() -> None:
    """A loaded async step under on_repeat='raise': AlreadyLoadedError, nothing else loads."""
    loaded, other = AsyncStep("r0"), SlowAsync("r1")

    async def main() -> None:
        await stepfsm.aload(loaded)
        with pytest.raises(stepfsm.AlreadyLoadedError):
            await stepfsm.group(loaded, other).aload()
        assert other.loads == 0
        await stepfsm.aunload(loaded)

    asyncio.run(main())
