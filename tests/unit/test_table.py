"""Every cell of docs/design.md §2: each operation in each state, with its message."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import stepfsm
from stepfsm import (
    AlreadyLoadedError,
    CleanupWarning,
    LoadError,
    NotLoadedError,
    State,
    StepFailedError,
    UnloadError,
)
from tests.conftest import FakeStep, held_count
from tests.fakes import Boom


def fail(step: FakeStep, error: BaseException | None = None) -> None:
    """Put ``step`` into ``failed`` through a load that raises."""
    step.fail_load = error or Boom("CUDA out of memory")
    with pytest.raises(LoadError):
        step.load()
    step.fail_load = None
    assert stepfsm.state(step) is State.FAILED


class Transient:
    """Holds a step in ``loading``/``unloading`` on a gated background thread."""

    def __init__(self, step: FakeStep, target: State) -> None:
        self.step = step
        if target is State.UNLOADING:
            step.load()
        step.gate = threading.Event()
        op = step.load if target is State.LOADING else step.unload
        self.thread = threading.Thread(target=op, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while stepfsm.state(step) is not target:
            assert time.monotonic() < deadline, f"never reached {target}"
            time.sleep(0.001)

    def open_later(self, delay: float = 0.05) -> None:
        gate = self.step.gate
        assert gate is not None
        threading.Timer(delay, gate.set).start()

    def finish(self) -> None:
        assert self.step.gate is not None
        self.step.gate.set()
        self.thread.join(5)
        self.step.gate = None


@pytest.fixture(params=[State.LOADING, State.UNLOADING])
def transient(request: pytest.FixtureRequest, step: FakeStep) -> Iterator[Transient]:
    """A step held in a transient state by another thread."""
    held = Transient(step, request.param)
    yield held
    held.finish()


# ------------------------------------------------------------------ load()


def test_load_from_unloaded_runs_load(step: FakeStep) -> None:
    """load() on an unloaded step runs the user's load once and ends loaded."""
    step.load()
    assert stepfsm.state(step) is State.LOADED
    assert step.loads == 1
    assert step.held


def test_load_that_raises_leaves_failed_with_load_error(step: FakeStep) -> None:
    """A load that raises leaves the step failed and raises LoadError chained to the cause."""
    cause = Boom("CUDA out of memory")
    step.fail_load = cause
    with pytest.raises(
        LoadError, match=r"load\(\) of FakeStep 'gen_0' failed with Boom: CUDA"
    ) as info:
        step.load()
    assert info.value.__cause__ is cause
    assert info.value.cause is cause
    assert "now 'failed'" in str(info.value)
    lc = stepfsm.lifecycle(step)
    assert lc.state is State.FAILED
    assert lc.error is cause


def test_load_waits_for_transient_then_applies_to_settled(transient: Transient) -> None:
    """load() during another thread's transition waits, then acts on the settled state."""
    started = stepfsm.state(transient.step)
    transient.open_later()
    if started is State.LOADING:
        with pytest.raises(AlreadyLoadedError, match="already loaded"):
            transient.step.load()
        assert transient.step.loads == 1
    else:
        transient.step.load()
        assert stepfsm.state(transient.step) is State.LOADED
        assert transient.step.loads == 2


def test_load_on_loaded_raises_already_loaded(step: FakeStep) -> None:
    """load() on a loaded step raises AlreadyLoadedError naming the step and the next move."""
    step.load()
    with pytest.raises(AlreadyLoadedError) as info:
        step.load()
    message = str(info.value)
    assert "FakeStep 'gen_0' is already loaded (since " in message
    assert "load took " in message
    assert "Use ensure_loaded() to make this a no-op, reload() to load again" in message
    assert (info.value.step, info.value.state, info.value.operation) == (
        "FakeStep 'gen_0'",
        State.LOADED,
        "load",
    )
    assert step.loads == 1


def test_load_on_failed_cleans_up_then_loads(step: FakeStep) -> None:
    """load() on a failed step runs the unload as clean-up, then the load."""
    fail(step)
    step.load()
    assert stepfsm.state(step) is State.LOADED
    assert (step.loads, step.unloads) == (2, 1)
    assert stepfsm.lifecycle(step).error is None


def test_load_on_failed_whose_cleanup_raises_does_not_load(step: FakeStep) -> None:
    """When the clean-up before a retried load raises, the load does not run."""
    fail(step)
    cleanup = Boom("driver hung")
    step.fail_unload = cleanup
    with pytest.raises(LoadError, match="clean-up.*so the load did not run") as info:
        step.load()
    assert info.value.__cause__ is cleanup
    lc = stepfsm.lifecycle(step)
    assert lc.state is State.FAILED
    assert lc.cleanup_error is cleanup
    assert isinstance(lc.error, Boom)
    assert "CUDA" in str(lc.error)
    assert step.loads == 1


# ---------------------------------------------------------- ensure_loaded()


def test_ensure_loaded_from_unloaded_loads_and_returns_true(step: FakeStep) -> None:
    """ensure_loaded() on an unloaded step loads it and returns True."""
    assert stepfsm.ensure_loaded(step) is True
    assert stepfsm.state(step) is State.LOADED


def test_ensure_loaded_on_loaded_is_a_noop(step: FakeStep) -> None:
    """ensure_loaded() on a loaded step does nothing and returns False."""
    step.load()
    assert stepfsm.ensure_loaded(step) is False
    assert step.loads == 1


def test_ensure_loaded_waits_for_transient(transient: Transient) -> None:
    """ensure_loaded() during a transition waits and ends loaded."""
    started = stepfsm.state(transient.step)
    transient.open_later()
    ran = stepfsm.ensure_loaded(transient.step)
    assert stepfsm.state(transient.step) is State.LOADED
    assert ran is (started is State.UNLOADING)


def test_ensure_loaded_on_failed_cleans_up_and_loads(step: FakeStep) -> None:
    """ensure_loaded() on a failed step cleans up, loads, and returns True."""
    fail(step)
    assert stepfsm.ensure_loaded(step) is True
    assert (step.loads, step.unloads, stepfsm.state(step)) == (2, 1, State.LOADED)


def test_ensure_loaded_that_fails_raises_load_error(step: FakeStep) -> None:
    """ensure_loaded() whose load raises raises LoadError and leaves failed."""
    step.fail_load = Boom("no GPU")
    with pytest.raises(LoadError, match="failed with Boom: no GPU"):
        stepfsm.ensure_loaded(step)
    assert stepfsm.state(step) is State.FAILED


# ---------------------------------------------------------------- unload()


def test_unload_from_unloaded_is_a_noop(step: FakeStep) -> None:
    """unload() before any load does nothing (no AttributeError, no user code)."""
    step.unload()
    step.unload()
    assert step.unloads == 0
    assert stepfsm.state(step) is State.UNLOADED


def test_unload_waits_for_transient(transient: Transient) -> None:
    """unload() during a transition waits, then unloads what the settled state holds."""
    transient.open_later()
    transient.step.unload()
    assert stepfsm.state(transient.step) is State.UNLOADED
    assert not transient.step.held


def test_unload_from_loaded_releases(step: FakeStep) -> None:
    """unload() of a loaded step runs the user's unload and ends unloaded."""
    step.load()
    step.unload()
    assert stepfsm.state(step) is State.UNLOADED
    assert not step.held
    assert held_count() == 0


def test_unload_that_raises_leaves_failed_with_unload_error(step: FakeStep) -> None:
    """An unload that raises leaves failed and raises UnloadError chained to the cause."""
    step.load()
    cause = Boom("device busy")
    step.fail_unload = cause
    with pytest.raises(
        UnloadError, match=r"unload\(\) of FakeStep 'gen_0' failed with Boom: device busy"
    ) as info:
        step.unload()
    assert info.value.__cause__ is cause
    assert stepfsm.lifecycle(step).error is cause
    assert stepfsm.state(step) is State.FAILED


def test_unload_of_failed_cleans_up(step: FakeStep) -> None:
    """unload() of a failed step runs the unload as clean-up and ends unloaded."""
    fail(step)
    step.unload()
    assert stepfsm.state(step) is State.UNLOADED
    assert step.unloads == 1
    assert stepfsm.lifecycle(step).error is None


def test_unload_of_failed_whose_cleanup_raises_warns_and_keeps_first_error(
    step: FakeStep,
) -> None:
    """A failing clean-up keeps the step failed with its first error and only warns."""
    fail(step)
    second = Boom("still broken")
    step.fail_unload = second
    with pytest.warns(
        CleanupWarning,
        match="clean-up \\(unload\\) of failed FakeStep 'gen_0' raised Boom: still broken",
    ):
        step.unload()
    lc = stepfsm.lifecycle(step)
    assert lc.state is State.FAILED
    assert "CUDA" in str(lc.error)
    assert lc.cleanup_error is second


# ---------------------------------------------------------------- reload()


def test_reload_from_unloaded_loads(step: FakeStep) -> None:
    """reload() of an unloaded step is a load."""
    stepfsm.reload(step)
    assert (step.loads, step.unloads, stepfsm.state(step)) == (1, 0, State.LOADED)


def test_reload_from_loaded_unloads_then_loads(step: FakeStep) -> None:
    """reload() of a loaded step unloads, then loads, ending with exactly one resource."""
    step.load()
    first = step.handle
    with pytest.warns(stepfsm.LeakWarning, match="local 'first'"):  # kept below, on purpose
        stepfsm.reload(step)
    assert (step.loads, step.unloads, stepfsm.state(step)) == (2, 1, State.LOADED)
    assert first is not None
    assert first.closed
    assert held_count() == 1


def test_reload_waits_for_transient(transient: Transient) -> None:
    """reload() during a transition waits, then reloads the settled step."""
    transient.open_later()
    stepfsm.reload(transient.step)
    assert stepfsm.state(transient.step) is State.LOADED
    assert held_count() == 1


def test_reload_from_failed_cleans_up_then_loads(step: FakeStep) -> None:
    """reload() of a failed step cleans up, then loads."""
    fail(step)
    stepfsm.reload(step)
    assert (step.loads, step.unloads, stepfsm.state(step)) == (2, 1, State.LOADED)


def test_reload_whose_unload_raises_raises_unload_error(step: FakeStep) -> None:
    """reload() whose unload raises stops there with UnloadError, the step failed."""
    step.load()
    step.fail_unload = Boom("stuck")
    with pytest.raises(UnloadError, match="stuck"):
        stepfsm.reload(step)
    assert stepfsm.state(step) is State.FAILED
    assert step.loads == 1


# ------------------------------------------------------------- guarded use


def test_use_on_unloaded_raises_not_loaded(step: FakeStep) -> None:
    """A guarded call before load raises NotLoadedError that says what to call."""
    with pytest.raises(NotLoadedError) as info:
        step.use(3)
    message = str(info.value)
    assert "FakeStep 'gen_0' is not loaded (state 'unloaded')" in message
    assert "so use() cannot run. Call load() or ensure_loaded() first" in message
    assert (info.value.state, info.value.operation) == (State.UNLOADED, "use")


def test_use_on_loaded_runs(step: FakeStep) -> None:
    """A guarded call on a loaded step runs with its arguments passed through exactly."""
    step.load()
    assert step.use(3) == 3
    assert step.use(4, twice=True) == 8
    assert step.use(x=5) == 5


def test_use_waits_for_transient_then_as_settled(transient: Transient) -> None:
    """A guarded call during a transition waits and then behaves as in the settled state."""
    started = stepfsm.state(transient.step)
    transient.open_later()
    if started is State.LOADING:
        assert transient.step.use(2) == 2
    else:
        with pytest.raises(NotLoadedError, match="state 'unloaded'"):
            transient.step.use(2)


def test_use_on_failed_raises_step_failed_with_cause(step: FakeStep) -> None:
    """A guarded call on a failed step raises StepFailedError carrying the load's error."""
    cause = Boom("CUDA out of memory")
    fail(step, cause)
    with pytest.raises(StepFailedError) as info:
        step.use()
    assert isinstance(info.value, NotLoadedError)
    assert info.value.cause is cause
    assert "FakeStep 'gen_0' is 'failed' since " in str(info.value)
    assert "after Boom: CUDA out of memory, so use() cannot run" in str(info.value)


def test_require_loaded_follows_the_same_rules(step: FakeStep) -> None:
    """require_loaded() raises before load, passes when loaded, and reports failed."""
    lc = stepfsm.lifecycle(step)
    with pytest.raises(NotLoadedError, match="so require_loaded\\(\\) cannot run"):
        lc.require_loaded()
    step.load()
    lc.require_loaded()
    step.unload()
    fail(step)
    with pytest.raises(StepFailedError, match="so infer\\(\\) cannot run"):
        lc.require_loaded("infer")


def test_guard_keeps_the_method_metadata() -> None:
    """A guarded method keeps its name, docstring, signature and wrapped original."""
    import inspect

    assert FakeStep.use.__name__ == "use"
    assert (
        str(inspect.signature(FakeStep.use))
        == "(self, x: 'int' = 1, *, twice: 'bool' = False) -> 'int'"
    )
    assert FakeStep.use.__wrapped__.__name__ == "use"  # type: ignore[attr-defined]
