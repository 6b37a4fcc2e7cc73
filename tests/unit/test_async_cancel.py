"""Cancelling async operations, and timeouts that cancel (``wait_for``, ``asyncio.timeout``).

docs/design.md §10: cancelling the task that runs an async step's load or
unload cancels that code (its ``finally`` blocks run) and leaves the step
``failed`` with the ``CancelledError``, the task returning once the state has
settled; a sync step's load in its worker thread cannot be interrupted (the
task is released at once, the load finishes); cancelling a task that only
waits changes nothing else. ``async with aloaded()`` never leaves a hold
behind, whenever the cancellation lands.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time

import pytest

import stepfsm
from stepfsm import State, StepFailedError
from stepfsm import machine as _machine
from tests.fakes import Boom
from tests.support import holding
from tests.unit.async_support import (
    BOUND,
    KINDS,
    OPS,
    AsyncStep,
    Gate,
    SyncStep,
    bounded,
    in_thread,
    join,
    loading,
    make,
    run,
    settled,
    still_pending,
    unloaded_gate,
    workers_done,
)

# ------------------------------------------------------------ cancellation


def test_cancelling_the_loader_of_an_async_step_fails_it(quiet_log: None) -> None:
    """Cancelling the task that runs an async step's load: the step ends failed with the
    CancelledError, no claim is held, every waiter wakes, and a later load works."""
    step = AsyncStep()
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loader, gate = await loading(step)
        guards = [asyncio.ensure_future(step.ause()) for _ in range(3)]
        guards.append(asyncio.ensure_future(lc.arequire_loaded()))
        sync_guard = in_thread(step.use)  # a sync guarded call, waiting in its thread
        other_loop = in_thread(lambda: asyncio.run(step.ause()))  # a task on another loop
        await still_pending(guards[0])
        loader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(loader)
        assert lc.state is State.FAILED
        assert isinstance(lc.error, asyncio.CancelledError)
        assert lc.statistics().owner is None
        assert not step.held
        for result in await bounded(asyncio.gather(*guards, return_exceptions=True)):
            assert isinstance(result, StepFailedError)
            assert isinstance(result.cause, asyncio.CancelledError)
        for thread, box in (sync_guard, other_loop):
            await loop.run_in_executor(None, join, thread)
            assert isinstance(box["error"], StepFailedError)
        assert (step.loads, step.unloads) == (1, 0)
        gate.set()
        assert await stepfsm.aensure_loaded(step) is True  # clean up, then load
        assert (step.loads, step.unloads) == (2, 1)
        assert lc.state is State.LOADED
        assert step.held

    run(main())


@stepfsm.stateful
class SlowToCancel:
    """An async step whose load runs until cancelled, then cleans up (awaiting a gate)."""

    def __init__(self) -> None:
        self.in_load = Gate()
        self.cleanup = Gate()
        self.cleaned = False

    async def load(self) -> None:
        self.in_load.set()
        try:
            await Gate().until()  # never opens: only a cancellation ends the load
        finally:
            await self.cleanup.until()
            self.cleaned = True

    async def unload(self) -> None:
        pass


def test_cancelled_loader_task_waits_until_the_async_load_has_cleaned_up(quiet_log: None) -> None:
    """The cancelled task returns only once the load's own clean-up (its finally block)
    ran and the step is settled."""
    step = SlowToCancel()
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        loader = asyncio.ensure_future(stepfsm.aload(step))
        await step.in_load.until()
        loader.cancel()
        await still_pending(loader)  # the load's finally block awaits its clean-up
        assert lc.state is State.LOADING
        step.cleanup.set()
        with pytest.raises(asyncio.CancelledError):
            await bounded(loader)
        assert step.cleaned
        assert lc.state is State.FAILED
        assert isinstance(lc.error, asyncio.CancelledError)
        assert lc.statistics().owner is None

    run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_cancelling_a_waiter_changes_nothing_else(kind: str, op: str) -> None:
    """A task waiting on another task's load is cancelled: the load goes on, the others
    get its result, the cancelled operation never runs."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        loader, gate = await loading(step)
        victim = asyncio.ensure_future(OPS[op](step))
        others = [
            asyncio.ensure_future(stepfsm.aensure_loaded(step)),
            asyncio.ensure_future(step.ause()),
        ]
        await still_pending(victim)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(victim)
        assert lc.state is State.LOADING
        assert not loader.done()
        gate.set()
        assert await bounded(loader) == ("loaded", 1)
        assert await bounded(asyncio.gather(*others)) == [False, 3]
        await settled(step)
        assert (step.loads, step.unloads) == (1, 0)
        assert lc.state is State.LOADED
        assert lc.holders == ()
        assert step.held

    run(main())


def test_cancelling_the_loader_task_of_a_sync_step_releases_it_at_once() -> None:
    """A sync step's load in its worker thread cannot be interrupted: the cancelled task
    is released while the load still runs, the load finishes, the waiters get it."""
    step = SyncStep()
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        loader, gate = await loading(step)
        waiters = [
            asyncio.ensure_future(stepfsm.aensure_loaded(step)),
            asyncio.ensure_future(step.ause()),
        ]
        await still_pending(waiters[0])
        loader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(loader)
        assert not gate.is_set()  # released at once: the load is still inside the gate
        assert lc.state is State.LOADING
        gate.set()
        assert await bounded(asyncio.gather(*waiters)) == [False, 3]
        assert lc.state is State.LOADED
        assert (step.loads, step.unloads) == (1, 0)
        assert step.held

    run(main())


def test_outcome_of_a_released_task_is_not_logged_as_never_retrieved(
    caplog: pytest.LogCaptureFixture, quiet_log: None
) -> None:
    """A sync load whose task was cancelled goes on and fails: nobody awaits its LoadError
    any more, and asyncio must not log it later as 'Future exception was never retrieved'."""
    step = SyncStep()

    async def main() -> None:
        loader, gate = await loading(step)
        step.fail_load = Boom("CUDA out of memory")
        loader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(loader)
        failed = Gate()
        stepfsm.lifecycle(step).subscribe(
            lambda _, record: failed.set() if record.trigger == "fail" else None
        )
        gate.set()
        await failed.until()
        await settled(step)
        await stepfsm.aunload(step)  # drops the error, whose traceback kept the outcome alive
        del loader
        gc.collect()
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(main())
        gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_cancelled_waiter_whose_worker_waits_for_the_claim_does_not_run(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while its worker thread waits for the step (another operation
    claimed it first) never runs its operation: the step is not unloaded, nor failed."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def no_wait(self: stepfsm.Lifecycle, operation: str) -> None:
        return None  # as if the claim was free when the task looked

    async def main() -> None:
        await stepfsm.aload(step)
        monkeypatch.setattr(_machine.Lifecycle, "_await_free", no_wait)
        with holding(lc):  # the operation that claimed the step first
            victim = asyncio.ensure_future(stepfsm.aunload(step))
            await still_pending(victim)  # its worker thread waits for the claim
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await bounded(victim)
        monkeypatch.undo()
        await workers_done()  # the victim's worker has woken up (and given up)
        assert lc.state is State.LOADED
        assert lc.error is None
        assert (step.loads, step.unloads) == (1, 0)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_task_cancelled_while_leaving_a_block_still_releases_its_hold(kind: str) -> None:
    """A task cancelled while its `async with aloaded()` exit waits for another operation:
    the hold is still released (and the step, which the block loaded, unloaded)."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)
    unloaded = unloaded_gate(lc)

    async def main() -> None:
        inside, leave = Gate(), Gate()

        async def block() -> None:
            async with stepfsm.aloaded(step):
                inside.set()
                await leave.until()

        task = asyncio.ensure_future(block())
        await inside.until()
        with holding(lc):  # another operation runs when the block ends
            leave.set()
            await still_pending(task)  # its exit waits for that operation
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await bounded(task)
        await unloaded.until(5)
        assert lc.holders == ()
        assert lc.state is State.UNLOADED
        assert (step.loads, step.unloads) == (1, 1)

    run(main())


def test_task_cancelled_after_its_block_took_the_hold_releases_it() -> None:
    """The cancellation reaches the task after the worker took the block's hold but
    before the task resumed: the task lets go of the hold before it leaves."""
    step = SyncStep()
    lc = stepfsm.lifecycle(step)
    unloaded = unloaded_gate(lc)

    async def main() -> None:
        entered = Gate()

        async def block() -> None:
            async with stepfsm.aloaded(step):
                entered.set()

        task = asyncio.ensure_future(block())
        await step.started["load"].until()
        deadline = time.monotonic() + BOUND
        while not lc.holders:  # blocks the loop on purpose: the task cannot resume yet
            assert time.monotonic() < deadline, "the hold was never taken"
            time.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert not entered.is_set()
        await unloaded.until(5)
        assert lc.holders == ()
        assert lc.state is State.UNLOADED

    run(main())


# ------------------------------------------------------------ timeouts


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPS)
def test_wait_for_around_a_waiting_operation(kind: str, op: str) -> None:
    """asyncio.wait_for() around an operation that waits: TimeoutError, nothing changes."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        loader, gate = await loading(step)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(OPS[op](step), 0.05)
        assert lc.state is State.LOADING
        gate.set()
        assert await bounded(loader) == ("loaded", 1)
        await settled(step)
        assert (step.loads, step.unloads) == (1, 0)
        assert lc.state is State.LOADED
        assert lc.holders == ()

    run(main())


#: Seconds after which an operation's own load/unload code has surely started (then
#: a timeout cancels it there, inside the gate).
STARTED = 0.25

#: Operations that run the step's own code from ``unloaded``/``loaded``: (op, start state).
RUNNERS = {
    "aload": ("aload", State.UNLOADED),
    "aensure_loaded": ("aensure_loaded", State.UNLOADED),
    "areload": ("areload", State.LOADED),
    "aloaded": ("aloaded", State.UNLOADED),
    "aunload": ("aunload", State.LOADED),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("runner", RUNNERS)
def test_wait_for_around_the_operation_that_runs_the_step(
    kind: str, runner: str, quiet_log: None
) -> None:
    """asyncio.wait_for() expiring inside the step's own code: an async step's code is
    cancelled (failed, CancelledError); a sync step's finishes in its thread."""
    op, start = RUNNERS[runner]
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        if start is State.LOADED:
            await stepfsm.aload(step)
        gate = step.gate = Gate()
        code = "load" if op in ("aload", "aensure_loaded", "aloaded") else "unload"
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(OPS[op](step), STARTED)
        assert time.monotonic() - started < BOUND / 2
        assert step.started[code].is_set()
        if kind == "async":
            assert lc.state is State.FAILED
            assert isinstance(lc.error, asyncio.CancelledError)
            assert lc.statistics().owner is None
        else:  # released at once; the step's code finishes on its own
            assert not gate.is_set()
            assert lc.state is (State.LOADING if code == "load" else State.UNLOADING)
        gate.set()
        await settled(step)
        if kind == "sync":
            expected = {
                "aload": State.LOADED,
                "aensure_loaded": State.LOADED,
                "aloaded": State.UNLOADED,  # the block's hold is released: it loaded the step
                "areload": State.LOADED,
                "aunload": State.UNLOADED,
            }[op]
            assert lc.state is expected
            assert step.held is (expected is State.LOADED)
        assert lc.holders == ()
        assert await stepfsm.aunload(step) in (None, ("unloaded", step.unloads))
        assert lc.state is State.UNLOADED
        assert not step.held

    run(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in Python 3.11")
@pytest.mark.parametrize("kind", KINDS)
def test_asyncio_timeout_around_a_waiter_and_the_loader(kind: str, quiet_log: None) -> None:
    """asyncio.timeout(): a waiter times out harmlessly; the loader as with wait_for()."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        loader, gate = await loading(step)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # type: ignore[attr-defined]
                await stepfsm.aensure_loaded(step)
        assert lc.state is State.LOADING
        gate.set()
        await bounded(loader)
        await stepfsm.aunload(step)

        step.gate = gate = Gate()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(STARTED):  # type: ignore[attr-defined]
                await stepfsm.aload(step)
        if kind == "async":
            assert lc.state is State.FAILED
            assert isinstance(lc.error, asyncio.CancelledError)
        else:
            assert lc.state is State.LOADING
        gate.set()
        await settled(step)
        assert lc.state is (State.FAILED if kind == "async" else State.LOADED)
        assert lc.statistics().owner is None

    run(main())
