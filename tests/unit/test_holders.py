"""Holders: acquire()/release(), the loaded() context manager, StepInUseError, force."""

from __future__ import annotations

import threading
import time

import pytest

import stepfsm
from stepfsm import State, StepInUseError, StepStateError
from tests.conftest import FakeStep, held_count
from tests.fakes import Boom


def test_first_acquire_loads_and_last_release_unloads(step: FakeStep) -> None:
    """A step loaded by acquire() is unloaded when its last holder releases."""
    lc = stepfsm.lifecycle(step)
    lc.acquire("a")
    lc.acquire("b")
    assert (step.loads, lc.state, len(lc.holders)) == (1, State.LOADED, 2)
    lc.release("a")
    assert lc.state is State.LOADED
    lc.release("b")
    assert (lc.state, step.unloads, lc.holders) == (State.UNLOADED, 1, ())


def test_hand_loaded_step_stays_loaded_after_holders_leave(step: FakeStep) -> None:
    """A step the user loaded by hand stays loaded after a `with loaded()` block."""
    step.load()
    with stepfsm.loaded(step) as same:
        assert same is step
        assert stepfsm.lifecycle(step).holders[0].startswith("with loaded() in thread ")
    assert stepfsm.state(step) is State.LOADED
    assert step.unloads == 0


def test_loaded_block_loads_and_unloads(step: FakeStep) -> None:
    """`with loaded(step):` loads an unloaded step and unloads it at the end."""
    with stepfsm.loaded(step):
        assert step.use(2) == 2
    assert stepfsm.state(step) is State.UNLOADED
    assert held_count() == 0


def test_loaded_block_releases_on_error(step: FakeStep) -> None:
    """Leaving a `with loaded()` block by an exception still releases the hold."""
    with pytest.raises(Boom), stepfsm.loaded(step):
        raise Boom("in the block")
    assert stepfsm.state(step) is State.UNLOADED


def test_unload_with_holders_raises_step_in_use(step: FakeStep) -> None:
    """unload() while holders remain raises StepInUseError naming them."""
    lc = stepfsm.lifecycle(step)
    lc.acquire("pipeline")
    with pytest.raises(StepInUseError) as info:
        step.unload()
    message = str(info.value)
    assert "FakeStep 'gen_0' cannot unload(): it is held by 1 holder ('pipeline')" in message
    assert "or call unload(force=True)" in message
    assert info.value.holders == ("'pipeline'",)
    assert lc.state is State.LOADED


def test_reload_with_holders_raises_step_in_use(step: FakeStep) -> None:
    """reload() while holders remain raises StepInUseError unless forced."""
    lc = stepfsm.lifecycle(step)
    lc.acquire()
    lc.acquire()
    with pytest.raises(StepInUseError, match="cannot reload\\(\\): it is held by 2 holders"):
        lc.reload()
    lc.reload(force=True)
    assert (step.loads, step.unloads, len(lc.holders)) == (2, 1, 2)
    lc.release()
    lc.release()
    assert lc.state is State.UNLOADED  # the acquire did the load, so the last release unloads


def test_forced_unload_evicts_holders_whose_release_is_then_a_noop(step: FakeStep) -> None:
    """unload(force=True) evicts the holders; their later release() is a no-op."""
    lc = stepfsm.lifecycle(step)
    lc.acquire("a")
    lc.unload(force=True)
    assert (lc.state, lc.holders) == (State.UNLOADED, ())
    lc.release("a")  # owed by the evicted holder: no error
    with pytest.raises(StepStateError, match="has no hold by 'a' to release"):
        lc.release("a")


def test_release_without_acquire_raises(step: FakeStep) -> None:
    """release() with no matching acquire() raises StepStateError that says why."""
    with pytest.raises(StepStateError) as info:
        stepfsm.lifecycle(step).release()
    assert "has no hold by acquire() in thread MainThread to release (holders: none)" in str(
        info.value
    )
    assert info.value.operation == "release"


def test_release_needs_the_same_holder(step: FakeStep) -> None:
    """release(holder) only drops that holder's hold."""
    lc = stepfsm.lifecycle(step)
    token = object()
    lc.acquire(token)
    with pytest.raises(StepStateError, match="no hold by"):
        lc.release("someone else")
    lc.release(token)
    assert lc.state is State.UNLOADED


def test_holder_labels(step: FakeStep) -> None:
    """Holders show a readable name: a stateful holder's name, or a short repr."""
    lc = stepfsm.lifecycle(step)
    other = FakeStep("task")
    long = "x" * 100
    lc.acquire(other)
    lc.acquire(long)
    labels = lc.holders
    assert labels[0] == "FakeStep 'task'"
    assert labels[1].endswith("...")
    assert len(labels[1]) == 60
    lc.release(other)
    lc.release(long)
    assert lc.state is State.UNLOADED


def test_acquire_of_failed_step_cleans_up_and_loads(step: FakeStep) -> None:
    """acquire() on a failed step cleans up, loads, and holds it."""
    step.fail_load = Boom("x")
    with pytest.raises(stepfsm.LoadError):
        step.load()
    step.fail_load = None
    lc = stepfsm.lifecycle(step)
    lc.acquire()
    assert (lc.state, step.unloads, len(lc.holders)) == (State.LOADED, 1, 1)
    lc.release()
    assert lc.state is State.UNLOADED


def test_unload_all_forces_and_goes_in_reverse_load_order() -> None:
    """unload_all() unloads every loaded step, newest first, evicting holders."""
    first, second, third = FakeStep("first"), FakeStep("second"), FakeStep("third")
    first.load()
    stepfsm.lifecycle(second).acquire("pipeline")
    third.load()
    assert stepfsm.unload_all() == ("FakeStep 'third'", "FakeStep 'second'", "FakeStep 'first'")
    assert {stepfsm.state(s) for s in (first, second, third)} == {State.UNLOADED}
    assert held_count() == 0


def test_unload_all_tries_every_step_then_raises_first_error() -> None:
    """A step whose unload raises does not stop unload_all() from unloading the rest."""
    good, bad = FakeStep("good"), FakeStep("bad")
    good.load()
    bad.load()
    bad.fail_unload = Boom("stuck")
    with pytest.raises(stepfsm.UnloadError, match="stuck"):
        stepfsm.unload_all()
    assert stepfsm.state(good) is State.UNLOADED
    assert stepfsm.state(bad) is State.FAILED
    bad.fail_unload = None
    assert stepfsm.unload_all() == ("FakeStep 'bad'",)


def test_release_during_another_threads_reload_waits_then_unloads(step: FakeStep) -> None:
    """A last release() during a reload in another thread waits and then unloads."""
    lc = stepfsm.lifecycle(step)
    lc.acquire()  # the acquire did the load, so the last release must unload
    step.gate = threading.Event()
    worker = threading.Thread(target=lc.reload, kwargs={"force": True})
    worker.start()
    deadline = time.monotonic() + 5
    while lc.state is not State.UNLOADING and lc.state is not State.LOADING:
        assert time.monotonic() < deadline
    threading.Timer(0.05, step.gate.set).start()
    lc.release()
    worker.join(5)
    assert (lc.state, lc.holders) == (State.UNLOADED, ())
    assert held_count() == 0


def test_failed_step_with_holders_refuses_plain_unload_and_reload(step: FakeStep) -> None:
    """unload()/reload() of a failed step that still has holders raise StepInUseError."""
    lc = stepfsm.lifecycle(step)
    lc.acquire()
    step.fail_load = Boom("oom")
    with pytest.raises(stepfsm.LoadError):
        lc.reload(force=True)
    step.fail_load = None
    with pytest.raises(StepInUseError, match="cannot unload\\(\\): it is held by 1 holder"):
        lc.unload()
    with pytest.raises(StepInUseError, match="cannot reload\\(\\)"):
        lc.reload()
    lc.unload(force=True)
    assert (lc.state, lc.holders) == (State.UNLOADED, ())
