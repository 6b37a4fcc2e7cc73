"""Interruptions: KeyboardInterrupt, SystemExit and CancelledError inside load and unload.

docs/design.md §2 (Failure): a ``BaseException`` that is not an ``Exception``
leaves the step ``failed`` (never stuck in ``loading``/``unloading``), is
re-raised unchanged (the same object, not wrapped in ``LoadError``), is kept
as ``lifecycle.error``, wakes waiting threads and leaves no lock held, so
another thread can act on the step at once.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import stepfsm
from stepfsm import Lifecycle, State, StepFailedError, TransitionRecord
from tests.conftest import FakeStep, held_count
from tests.fakes import Boom
from tests.support import in_thread


def interruption(kind: str, where: str) -> BaseException:
    """A fresh interruption of ``kind`` whose text names ``where`` it was raised."""
    if kind == "KeyboardInterrupt":
        return KeyboardInterrupt(f"Ctrl-C in {where}")
    if kind == "SystemExit":
        return SystemExit(f"sys.exit in {where}")
    return asyncio.CancelledError(f"task cancelled in {where}")


KINDS = ["KeyboardInterrupt", "SystemExit", "CancelledError"]
TYPES: dict[str, type[BaseException]] = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "CancelledError": asyncio.CancelledError,
}


def assert_no_lock_held(lc: Lifecycle) -> None:
    assert lc.statistics().owner is None


# ------------------------------------------------------------------- in load


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_load_fails_and_propagates_unchanged(step: FakeStep, kind: str) -> None:
    """An interruption inside load leaves the step failed and propagates as the same object."""
    raised = interruption(kind, "load")
    step.fail_load = raised
    lc = stepfsm.lifecycle(step)
    with pytest.raises(TYPES[kind], match=r"in load$") as info:
        step.load()
    assert info.value is raised
    assert info.value.__cause__ is None  # not wrapped, not chained
    assert lc.state is State.FAILED
    assert lc.error is raised
    assert not lc.statistics().running_user_code
    assert_no_lock_held(lc)
    assert [(r.trigger, r.dest, type(r.error), r.error.args) for r in lc.history[-1:]] == [  # type: ignore[union-attr]
        ("fail", State.FAILED, type(raised), raised.args)
    ]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: stepfsm.lifecycle(s).load(), id="lifecycle.load"),
        pytest.param(lambda s: stepfsm.ensure_loaded(s), id="ensure_loaded"),
        pytest.param(lambda s: stepfsm.reload(s), id="reload"),
        pytest.param(lambda s: stepfsm.lifecycle(s).acquire("me"), id="acquire"),
        pytest.param(lambda s: stepfsm.loaded(s).__enter__(), id="loaded-block"),
    ],
)
def test_every_loading_operation_propagates_the_interruption(
    step: FakeStep, kind: str, operation: Callable[[FakeStep], Any]
) -> None:
    """Whatever operation ran the interrupted load, the interruption propagates unchanged."""
    raised = interruption(kind, "load")
    step.fail_load = raised
    with pytest.raises(TYPES[kind], match="in load") as info:
        operation(step)
    assert info.value is raised
    lc = stepfsm.lifecycle(step)
    assert (lc.state, lc.error, lc.holders) == (State.FAILED, raised, ())
    assert_no_lock_held(lc)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_after_interrupted_load_another_thread_loads_at_once(step: FakeStep, kind: str) -> None:
    """After an interrupted load, another thread's load() (1 s timeout) cleans up and loads."""
    step.fail_load = interruption(kind, "load")
    with pytest.raises(TYPES[kind], match="in load"):
        step.load()
    step.fail_load = None
    lc = stepfsm.lifecycle(step)
    lc.timeout = 1.0
    in_thread(step.load, timeout=5.0)
    assert lc.state is State.LOADED
    assert lc.error is None
    assert (step.loads, step.unloads, held_count()) == (2, 1, 1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_after_interrupted_load_another_thread_unloads_at_once(step: FakeStep, kind: str) -> None:
    """After an interrupted load, another thread's unload() (1 s timeout) cleans up."""
    step.fail_load = interruption(kind, "load")
    with pytest.raises(TYPES[kind], match="in load"):
        step.load()
    lc = stepfsm.lifecycle(step)
    lc.timeout = 1.0
    in_thread(step.unload, timeout=5.0)
    assert (lc.state, lc.error, step.unloads) == (State.UNLOADED, None, 1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_guarded_call_after_interrupted_load_names_the_interruption(
    step: FakeStep, kind: str
) -> None:
    """A guarded call after an interrupted load raises StepFailedError carrying it."""
    raised = interruption(kind, "load")
    step.fail_load = raised
    with pytest.raises(TYPES[kind], match="in load"):
        step.load()
    name = type(raised).__name__
    with pytest.raises(StepFailedError, match=rf"is 'failed' since .* after {name}: ") as info:
        step.use()
    assert info.value.cause is raised


class OnceStep(FakeStep):
    """A FakeStep whose next load raises ``interrupt_once`` (once), after the gate opens."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.interrupt_once: BaseException | None = None

    def load(self) -> None:
        super().load()
        if self.interrupt_once is not None:
            raised, self.interrupt_once = self.interrupt_once, None
            self.handle.close()  # nothing held, so the waiting thread's retry starts clean
            self.handle = None
            raise raised


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_load_in_one_thread_wakes_a_waiting_thread(kind: str) -> None:
    """A thread waiting on another thread's load wakes when that load is interrupted, then loads."""
    step = OnceStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate = threading.Event()
    step.gate = gate
    raised = interruption(kind, "load")
    step.interrupt_once = raised
    outcome: dict[str, BaseException] = {}

    def interrupted_load() -> None:
        try:
            step.load()
        except BaseException as error:  # the interruption, checked below
            outcome["first"] = error

    first = threading.Thread(target=interrupted_load, daemon=True)
    first.start()
    while step.loads < 1:
        gate.wait(0.001)
    box: dict[str, Any] = {}

    def waiting_ensure_loaded() -> None:
        try:
            box["ran"] = lc.ensure_loaded()
        except BaseException as error:  # reported below
            box["error"] = error

    second = threading.Thread(target=waiting_ensure_loaded, daemon=True)
    second.start()
    while not lc.statistics().waiting:
        gate.wait(0.001)
    gate.set()
    first.join(5)
    second.join(5)
    assert not first.is_alive()
    assert not second.is_alive(), "the waiting thread was never woken"
    assert outcome["first"] is raised
    assert box == {"ran": True}
    assert (lc.state, step.loads, held_count()) == (State.LOADED, 2, 1)
    assert_no_lock_held(lc)


@pytest.mark.timeout(20)
@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: s.load(), id="load"),
        pytest.param(lambda s: s.use(), id="use"),
        pytest.param(lambda s: stepfsm.lifecycle(s).acquire("me"), id="acquire"),
    ],
)
def test_ctrl_c_while_waiting_only_interrupts_the_wait(
    step: FakeStep, operation: Callable[[FakeStep], Any]
) -> None:
    """Ctrl-C in a thread waiting on another thread's load ends the wait; the load goes on."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    # Python's own Ctrl-C handler, whatever an earlier test or library (Ray, a kernel
    # client) installed: skipping here instead hid these tests in CI
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_while_waiting(step, operation)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_while_waiting(step: FakeStep, operation: Callable[[FakeStep], Any]) -> None:
    lc = stepfsm.lifecycle(step)
    gate = threading.Event()
    step.gate = gate
    loader = threading.Thread(target=step.load, daemon=True)
    loader.start()

    def ctrl_c_once_waiting() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if lc.statistics().waiting:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return
            time.sleep(0.001)

    while step.loads < 1:
        time.sleep(0.001)
    interrupter = threading.Thread(target=ctrl_c_once_waiting, daemon=True)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):  # a signal's KeyboardInterrupt has no text
            operation(step)
        interrupter.join(5)
        assert (lc.state, lc.holders, lc.error) == (State.LOADING, (), None)
        stats = lc.statistics()
        assert (stats.owner, stats.waiting) == (loader.ident, 0)  # only the loader, no waiter
    finally:
        gate.set()
        loader.join(5)
    assert not loader.is_alive()
    assert (lc.state, step.loads, held_count()) == (State.LOADED, 1, 1)


# ----------------------------------------------------------------- in unload


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_unload_fails_and_propagates_unchanged(step: FakeStep, kind: str) -> None:
    """An interruption inside unload leaves the step failed and propagates as the same object."""
    step.load()
    raised = interruption(kind, "unload")
    step.fail_unload = raised
    lc = stepfsm.lifecycle(step)
    with pytest.raises(TYPES[kind], match=r"in unload$") as info:
        step.unload()
    assert info.value is raised
    assert info.value.__cause__ is None
    assert (lc.state, lc.error) == (State.FAILED, raised)
    assert step.held  # the unload was cut short: the resource may still be held
    assert not lc.statistics().running_user_code
    assert_no_lock_held(lc)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda s: stepfsm.lifecycle(s).unload(), id="lifecycle.unload"),
        pytest.param(lambda s: stepfsm.lifecycle(s).unload(force=True), id="force"),
        pytest.param(lambda s: stepfsm.reload(s), id="reload"),
        pytest.param(lambda s: stepfsm.unload_all(), id="unload_all"),
    ],
)
def test_every_unloading_operation_propagates_the_interruption(
    step: FakeStep, kind: str, operation: Callable[[FakeStep], Any]
) -> None:
    """Whatever operation ran the interrupted unload, the interruption propagates unchanged."""
    step.load()
    raised = interruption(kind, "unload")
    step.fail_unload = raised
    with pytest.raises(TYPES[kind], match="in unload") as info:
        operation(step)
    assert info.value is raised
    lc = stepfsm.lifecycle(step)
    assert (lc.state, lc.error) == (State.FAILED, raised)
    assert_no_lock_held(lc)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_release_unload_propagates_and_drops_the_hold(
    step: FakeStep, kind: str
) -> None:
    """An interruption in the unload run by the last release() propagates; the hold is gone."""
    lc = stepfsm.lifecycle(step)
    lc.acquire("me")
    raised = interruption(kind, "unload")
    step.fail_unload = raised
    with pytest.raises(TYPES[kind], match="in unload") as info:
        lc.release("me")
    assert info.value is raised
    assert (lc.state, lc.error, lc.holders) == (State.FAILED, raised, ())
    assert_no_lock_held(lc)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_after_interrupted_unload_another_thread_unloads_at_once(step: FakeStep, kind: str) -> None:
    """After an interrupted unload, another thread's unload() (1 s timeout) cleans up."""
    step.load()
    step.fail_unload = interruption(kind, "unload")
    with pytest.raises(TYPES[kind], match="in unload"):
        step.unload()
    step.fail_unload = None
    lc = stepfsm.lifecycle(step)
    lc.timeout = 1.0
    in_thread(step.unload, timeout=5.0)
    assert (lc.state, lc.error, step.held, held_count()) == (State.UNLOADED, None, False, 0)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_after_interrupted_unload_another_thread_loads_at_once(step: FakeStep, kind: str) -> None:
    """After an interrupted unload, another thread's load() (1 s timeout) cleans up and loads."""
    step.load()
    step.fail_unload = interruption(kind, "unload")
    with pytest.raises(TYPES[kind], match="in unload"):
        step.unload()
    step.fail_unload = None
    lc = stepfsm.lifecycle(step)
    lc.timeout = 1.0
    in_thread(step.load, timeout=5.0)
    assert (lc.state, step.loads, step.unloads, held_count()) == (State.LOADED, 2, 2, 1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_cleanup_propagates_and_keeps_the_first_error(
    step: FakeStep, kind: str
) -> None:
    """An interruption in the clean-up of a failed step propagates; the first error is kept."""
    first = Boom("CUDA out of memory")
    step.fail_load = first
    with pytest.raises(stepfsm.LoadError, match="Boom: CUDA out of memory"):
        step.load()
    raised = interruption(kind, "unload")
    step.fail_unload = raised
    lc = stepfsm.lifecycle(step)
    with pytest.raises(TYPES[kind], match="in unload") as info:
        step.unload()
    assert info.value is raised
    assert (lc.state, lc.error, lc.cleanup_error) == (State.FAILED, first, raised)
    assert_no_lock_held(lc)


# ------------------------------------------------------------- composition


@stepfsm.stateful
class Pipeline:
    """A step whose load loads an LLM and is then interrupted."""

    def __init__(self, llm: FakeStep, interrupt: BaseException) -> None:
        self.name = "pipe"
        self.llm = llm
        self.interrupt = interrupt

    def load(self) -> None:
        self.llm.load()
        raise self.interrupt

    def unload(self) -> None:
        pass


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_parent_load_unloads_the_child_it_loaded(kind: str) -> None:
    """When a parent's load is interrupted, the child it loaded is released and unloaded."""
    llm = FakeStep("llm")
    raised = interruption(kind, "load")
    pipe = Pipeline(llm, raised)
    with pytest.raises(TYPES[kind], match="in load") as info:
        pipe.load()
    assert info.value is raised
    child = stepfsm.lifecycle(llm)
    assert stepfsm.state(pipe) is State.FAILED
    assert (child.state, child.holders, llm.unloads, held_count()) == (State.UNLOADED, (), 1, 0)
    assert_no_lock_held(child)
    assert_no_lock_held(stepfsm.lifecycle(pipe))


@stepfsm.stateful
class Ensemble:
    """A step whose load loads two LLMs and whose unload leaves them to stepfsm."""

    def __init__(self, first: FakeStep, second: FakeStep) -> None:
        self.name = "ensemble"
        self.first = first
        self.second = second

    def load(self) -> None:
        self.first.load()
        self.second.load()

    def unload(self) -> None:
        pass


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_interrupted_child_release_still_releases_the_other_children(kind: str) -> None:
    """An interruption in one child's unload, run for its parent, does not strand the others.

    The parent's unload is done; the children it loaded are released after it,
    the second one first. The second one's unload is interrupted: that
    interruption propagates unchanged, and the first child is still released
    (and unloaded), so no hold of an unloaded parent is left behind.
    """
    first, second = FakeStep("first"), FakeStep("second")
    ensemble = Ensemble(first, second)
    ensemble.load()
    raised = interruption(kind, "unload")
    second.fail_unload = raised
    with pytest.raises(TYPES[kind], match="in unload") as info:
        ensemble.unload()
    assert info.value is raised
    assert stepfsm.state(ensemble) is State.UNLOADED
    assert (stepfsm.state(second), stepfsm.lifecycle(second).error) == (State.FAILED, raised)
    lc_first = stepfsm.lifecycle(first)
    assert (lc_first.state, lc_first.holders, first.held) == (State.UNLOADED, (), False)
    for step in (ensemble, first, second):
        assert_no_lock_held(stepfsm.lifecycle(step))


# ------------------------------------------------------------- observability


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", KINDS)
def test_listener_sees_the_interruption(step: FakeStep, kind: str) -> None:
    """Listeners get a 'fail' record carrying the interruption."""
    records: list[TransitionRecord] = []
    stepfsm.lifecycle(step).subscribe(lambda _, record: records.append(record))
    raised = interruption(kind, "load")
    step.fail_load = raised
    with pytest.raises(TYPES[kind], match="in load"):
        step.load()
    step.fail_load = None
    step.load()  # delivers what is still pending
    fails = [r for r in records if r.trigger == "fail"]
    assert [(r.source, r.dest, type(r.error)) for r in fails] == [
        (State.LOADING, State.FAILED, type(raised))
    ]
    assert fails[0].error is not raised  # a copy without the traceback (see the history docs)
    assert fails[0].error is not None
    assert fails[0].error.args == raised.args
    assert fails[0].error.__traceback__ is None
