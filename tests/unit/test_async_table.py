"""docs/design.md §2 through the async operations, for a sync step and an async step.

Each row of the table is one checker below (``aload``, ``aensure_loaded``,
``aunload``, ``areload``, ``async with aloaded()``, an async guarded method,
``arequire_loaded``): it runs the operation and asserts the outcome of that
row in the state the operation meets. The same checkers run

* in each settled state (``unloaded``, ``loaded``, ``failed``), and
* while another thread or another task is inside a transition (``loading``
  or ``unloading``, which succeeds or fails): the operation must wait
  (without blocking the loop) and then apply the row of the state the
  transition left.

A sync step's load/unload runs in a worker thread; an async step's runs on
the loop of the task that asked for it.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable

import pytest

import stepfsm
from stepfsm import (
    AlreadyLoadedError,
    LoadError,
    NotLoadedError,
    RepeatedLoadWarning,
    State,
    StepFailedError,
    StepInUseError,
    UnloadError,
)
from tests.fakes import Boom
from tests.unit.async_support import (
    BOUND,
    KINDS,
    Gate,
    Step,
    SyncStep,
    bounded,
    in_thread,
    join,
    make,
    put,
    run,
    still_pending,
)

Row = Callable[[Step, State], Awaitable[None]]


def counts(step: Step) -> tuple[int, int]:
    return step.loads, step.unloads


def assert_loaded(step: Step) -> None:
    lc = stepfsm.lifecycle(step)
    assert lc.state is State.LOADED
    assert lc.error is None
    assert step.held


def assert_unloaded(step: Step) -> None:
    lc = stepfsm.lifecycle(step)
    assert lc.state is State.UNLOADED
    assert lc.error is None
    assert not step.held


# ------------------------------------------------------------ the rows


async def row_aload(step: Step, state: State) -> None:
    """load(): unloaded -> load; loaded -> AlreadyLoadedError; failed -> clean up, load."""
    loads, unloads = counts(step)
    if state is State.LOADED:
        with pytest.raises(AlreadyLoadedError, match="is already loaded"):
            await stepfsm.aload(step)
        assert counts(step) == (loads, unloads)
        assert_loaded(step)
        return
    assert await stepfsm.aload(step) == ("loaded", loads + 1)
    assert counts(step) == (loads + 1, unloads + (state is State.FAILED))
    assert_loaded(step)


async def row_aensure_loaded(step: Step, state: State) -> None:
    """ensure_loaded(): True after a load (from unloaded or failed), False when loaded."""
    loads, unloads = counts(step)
    ran = await stepfsm.aensure_loaded(step)
    assert ran is (state is not State.LOADED)
    assert counts(step) == (loads + ran, unloads + (state is State.FAILED))
    assert_loaded(step)


async def row_aunload(step: Step, state: State) -> None:
    """unload(): nothing when unloaded; runs the unload (a clean-up from failed)."""
    loads, unloads = counts(step)
    result = await stepfsm.aunload(step)
    if state is State.UNLOADED:
        assert result is None
        assert counts(step) == (loads, unloads)
    else:
        assert result == ("unloaded", unloads + 1)
        assert counts(step) == (loads, unloads + 1)
    assert_unloaded(step)


async def row_areload(step: Step, state: State) -> None:
    """reload(): load; or unload then load; or clean up then load."""
    loads, unloads = counts(step)
    assert await stepfsm.areload(step) == ("loaded", loads + 1)
    assert counts(step) == (loads + 1, unloads + (state is not State.UNLOADED))
    assert_loaded(step)


async def row_aloaded(step: Step, state: State) -> None:
    """async with aloaded(): holds the step loaded; unloads it at the end only if it loaded it."""
    loads, unloads = counts(step)
    lc = stepfsm.lifecycle(step)
    async with stepfsm.aloaded(step) as got:
        assert got is step
        assert_loaded(step)
        assert len(lc.holders) == 1
        assert lc.holders[0].startswith("with loaded()")
    assert lc.holders == ()
    if state is State.LOADED:
        assert counts(step) == (loads, unloads)
        assert_loaded(step)
    else:
        assert counts(step) == (loads + 1, unloads + 1 + (state is State.FAILED))
        assert_unloaded(step)


async def _guarded_row(step: Step, state: State, call: Callable[[], Awaitable[object]]) -> None:
    loads, unloads = counts(step)
    lc = stepfsm.lifecycle(step)
    if state is State.LOADED:
        await call()
    elif state is State.FAILED:
        with pytest.raises(StepFailedError, match="is 'failed' since") as info:
            await call()
        assert isinstance(lc.error, Boom)
        assert info.value.cause is lc.error
        assert lc.state is State.FAILED
    else:
        with pytest.raises(NotLoadedError, match="is not loaded") as info:
            await call()
        assert type(info.value) is NotLoadedError
        assert lc.state is State.UNLOADED
    assert counts(step) == (loads, unloads)


async def row_guarded(step: Step, state: State) -> None:
    """An async guarded method: runs when loaded, NotLoadedError / StepFailedError otherwise."""

    async def call() -> None:
        assert await step.ause(2) == 6

    await _guarded_row(step, state, call)


async def row_arequire_loaded(step: Step, state: State) -> None:
    """lifecycle.arequire_loaded(): as a guarded method, without one."""
    await _guarded_row(step, state, stepfsm.lifecycle(step).arequire_loaded)


ROWS: dict[str, Row] = {
    "aload": row_aload,
    "aensure_loaded": row_aensure_loaded,
    "aunload": row_aunload,
    "areload": row_areload,
    "aloaded": row_aloaded,
    "guarded": row_guarded,
    "arequire_loaded": row_arequire_loaded,
}
SETTLED = (State.UNLOADED, State.LOADED, State.FAILED)


# ------------------------------------------------------ settled states


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state", SETTLED, ids=lambda s: s.value)
@pytest.mark.parametrize("row", ROWS)
def test_row_in_settled_state(kind: str, state: State, row: str) -> None:
    """Each row of docs/design.md §2 in each settled state, awaited."""
    step = make(kind)

    async def main() -> None:
        await put(step, state, Boom("CUDA out of memory"))
        await ROWS[row](step, state)

    run(main())


# --------------------------------------------- loading and unloading

#: The transition another thread or task is inside: (operation, fails, settled state).
TRANSITIONS = {
    "loading": ("load", False, State.LOADED),
    "loading-fails": ("load", True, State.FAILED),
    "unloading": ("unload", False, State.UNLOADED),
    "unloading-fails": ("unload", True, State.FAILED),
}


def _start_transition(step: Step, op: str, by: str) -> Callable[[], Awaitable[object]]:
    """Start ``op`` on ``step`` from another thread or task; return how to collect it."""
    if by == "task":
        call = stepfsm.aload(step) if op == "load" else stepfsm.aunload(step)
        task = asyncio.ensure_future(call)

        async def collect_task() -> object:
            return await bounded(task)

        return collect_task
    if isinstance(step, SyncStep):  # a plain sync call in a thread
        fn = step.load if op == "load" else step.unload
    else:  # an async step, awaited on the other thread's own event loop

        def fn() -> object:
            return asyncio.run(stepfsm.aload(step) if op == "load" else stepfsm.aunload(step))

    thread, box = in_thread(fn)

    async def collect_thread() -> object:
        await asyncio.get_running_loop().run_in_executor(None, join, thread)
        if "error" in box:
            raise box["error"]
        return box["result"]

    return collect_thread


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("by", ["thread", "task"])
@pytest.mark.parametrize("transition", TRANSITIONS)
@pytest.mark.parametrize("row", ROWS)
def test_row_waits_for_transition_then_applies_settled_state(
    kind: str, by: str, transition: str, row: str
) -> None:
    """During another thread's or task's transition the call waits, then applies the row."""
    op, fails, settled = TRANSITIONS[transition]
    step = make(kind)
    lc = stepfsm.lifecycle(step)
    lc.timeout = BOUND  # a wait that blocked the loop would fail here instead of hanging

    async def main() -> None:
        if op == "unload":
            await stepfsm.aload(step)
        gate = step.gate = Gate()
        cause = Boom("driver hung")
        if fails and op == "load":
            step.fail_load = cause
        elif fails:
            step.fail_unload = cause
        try:
            collect = _start_transition(step, op, by)
            await step.started[op].until()
            assert lc.state is (State.LOADING if op == "load" else State.UNLOADING)
            waiting = asyncio.ensure_future(ROWS[row](step, settled))
            await still_pending(waiting)
            assert lc.state is (State.LOADING if op == "load" else State.UNLOADING)
        finally:
            gate.set()
        if fails:
            with pytest.raises(LoadError if op == "load" else UnloadError) as info:
                await collect()
            assert info.value.__cause__ is cause
        else:
            await collect()
        await bounded(waiting)

    run(main())


# ------------------------------------------------ policies and holders


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", ["raise", "warn", "ignore"])
def test_aload_on_loaded_follows_on_repeat(kind: str, policy: str) -> None:
    """aload() of a loaded step: AlreadyLoadedError, RepeatedLoadWarning or nothing."""
    step = make(kind)
    stepfsm.lifecycle(step).on_repeat = policy  # type: ignore[assignment]

    async def main() -> None:
        await stepfsm.aload(step)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if policy == "raise":
                with pytest.raises(AlreadyLoadedError):
                    await stepfsm.aload(step)
            else:
                assert await stepfsm.aload(step) is None
        assert [w.category for w in caught] == ([RepeatedLoadWarning] if policy == "warn" else [])
        assert (step.loads, step.unloads) == (1, 0)
        assert_loaded(step)

    run(main())


async def _held_by_a_block(step: Step) -> tuple[asyncio.Future[None], Gate, Gate]:
    """A task inside ``async with aloaded(step)``, staying until ``leave`` opens."""
    inside, leave = Gate(), Gate()

    async def block() -> None:
        async with stepfsm.aloaded(step):
            inside.set()
            await leave.until()

    task = asyncio.ensure_future(block())
    await inside.until()
    return task, inside, leave


@pytest.mark.parametrize("kind", KINDS)
def test_aunload_with_holders_refuses_and_force_evicts(kind: str) -> None:
    """aunload() while a block holds the step: StepInUseError; force=True evicts the holder."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        task, _, leave = await _held_by_a_block(step)
        with pytest.raises(StepInUseError, match="held by 1 holder") as info:
            await stepfsm.aunload(step)
        assert info.value.holders == lc.holders
        assert_loaded(step)
        assert await lc.aunload(force=True) == ("unloaded", 1)
        assert lc.holders == ()
        assert_unloaded(step)
        leave.set()
        await bounded(task)  # the evicted block's release is a no-op
        assert_unloaded(step)
        assert (step.loads, step.unloads) == (1, 1)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_aunload_of_failed_step_with_holders(kind: str) -> None:
    """A held step whose reload failed: aunload() refuses, aunload(force=True) cleans up."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        task, _, leave = await _held_by_a_block(step)
        step.fail_load = Boom("bad weights")
        with pytest.raises(LoadError):
            await stepfsm.areload(step, force=True)
        assert lc.state is State.FAILED
        assert len(lc.holders) == 1
        with pytest.raises(StepInUseError):
            await stepfsm.aunload(step)
        assert await stepfsm.aunload(step, force=True) == ("unloaded", 2)
        assert_unloaded(step)
        leave.set()
        await bounded(task)
        assert_unloaded(step)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_areload_with_holders_refuses_and_force_keeps_them(kind: str) -> None:
    """areload() while held: StepInUseError; force=True reloads and the holder keeps its hold."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        task, _, leave = await _held_by_a_block(step)
        with pytest.raises(StepInUseError):
            await stepfsm.areload(step)
        assert (step.loads, step.unloads) == (1, 0)
        assert await lc.areload(force=True) == ("loaded", 2)
        assert len(lc.holders) == 1
        assert_loaded(step)
        leave.set()
        await bounded(task)  # the block loaded it: its end unloads it
        assert_unloaded(step)
        assert (step.loads, step.unloads) == (2, 2)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_aunload_of_failed_step_whose_cleanup_raises_warns(kind: str) -> None:
    """aunload() of a failed step whose clean-up raises: stays failed, CleanupWarning, no raise."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)
    first, second = Boom("CUDA out of memory"), Boom("driver hung")

    async def main() -> None:
        await put(step, State.FAILED, first)
        step.fail_unload = second
        with pytest.warns(stepfsm.CleanupWarning, match="driver hung"):
            assert await stepfsm.aunload(step) is None
        assert lc.state is State.FAILED
        assert lc.error is first
        assert lc.cleanup_error is second
        assert await stepfsm.aunload(step) == ("unloaded", 2)
        assert_unloaded(step)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("row", ["aload", "aensure_loaded", "areload", "aloaded"])
def test_load_from_failed_whose_cleanup_raises_does_not_load(kind: str, row: str) -> None:
    """From failed, a clean-up that raises stops the load: LoadError chained to it."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)
    calls = {
        "aload": lambda: stepfsm.aload(step),
        "aensure_loaded": lambda: stepfsm.aensure_loaded(step),
        "areload": lambda: stepfsm.areload(step),
        "aloaded": lambda: stepfsm.aloaded(step).__aenter__(),
    }

    async def main() -> None:
        await put(step, State.FAILED, Boom("CUDA out of memory"))
        cleanup = step.fail_unload = Boom("driver hung")
        with pytest.raises(LoadError, match="clean-up") as info:
            await calls[row]()
        assert info.value.__cause__ is cleanup
        assert (step.loads, step.unloads) == (1, 1)
        assert lc.state is State.FAILED
        assert lc.holders == ()

    run(main())
