"""What a pickled step carries to another process (docs/design.md §13), without Ray.

Class settings travel with the class, instance settings with the instance;
the step arrives ``unloaded``. A ``spawn`` child (a fresh interpreter) checks
it for a decorated class, a ``Stateful`` subclass and a class made stateful at
run time; the distilabel integration's part is in
``tests/integration/distilabel/test_travel.py`` and Ray's in
``tests/integration/test_ray.py``. Every error and warning
crosses a process boundary with its message and attributes.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import stepfsm
from stepfsm import _travel, errors
from stepfsm.states import State
from tests.unit import travel_child
from tests.unit.travel_child import Late, Mixed, Tiny

# ------------------------------------------------------------------ errors


def _error_samples() -> list[BaseException]:
    cause = OSError("CUDA out of memory")
    return [
        stepfsm.StepFSMError("plain"),
        stepfsm.StepStateError("refused", step="LLM 'a'", state=State.LOADED, operation="load"),
        stepfsm.AlreadyLoadedError("LLM 'a'", 1.0, 2.5),
        stepfsm.NotLoadedError("LLM 'a'", State.UNLOADED, "generate", 1.0),
        stepfsm.StepFailedError("LLM 'a'", "generate", cause, 1.0),
        stepfsm.StepInUseError("LLM 'a'", State.LOADED, "unload", ["task 'x'"]),
        stepfsm.TransitionInProgressError("LLM 'a'", State.LOADING, "unload", 1.5),
        stepfsm.BudgetExceededError(
            "LLM 'a'", State.UNLOADED, "gpu:0", 100.0, 60.0, 50.0, [("LLM 'b'", 60.0, "idle")], None
        ),
        stepfsm.TransitionError("LLM 'a'", "load", cause),
        stepfsm.LoadError("LLM 'a'", "load", cause),
        stepfsm.LoadError.in_cleanup("LLM 'a'", cause),
        stepfsm.GroupLoadError(
            [("LLM 'a'", stepfsm.LoadError("LLM 'a'", "load", cause))],
            ["LLM 'b'"],
            [stepfsm.UnloadError("LLM 'b'", "unload", cause)],
        ),
        stepfsm.UnloadError("LLM 'a'", "unload", cause),
        stepfsm.DefinitionError("bad class"),
        stepfsm.DiagramError("no dot"),
        stepfsm.StepFSMWarning("plain", step="LLM 'a'"),
        stepfsm.RepeatedLoadWarning("LLM 'a'"),
        stepfsm.DuplicateLoadWarning("LLM 'b'", "LLM 'a'", 1.0),
        stepfsm.UnloadedUseWarning("LLM 'a'", State.FAILED, "generate", cause),
        stepfsm.CleanupWarning("LLM 'a'", cause),
        stepfsm.LeakWarning(
            "LLM 'a'", [stepfsm.ReleasedObject("model", "Model", 10, ("_", "Out[2]"))], 10
        ),
        stepfsm.ResourceLeakError("LLM 'a'", [stepfsm.ReleasedObject("cache[0]", "Model", 0)], 0),
    ]


def _same(one: Any, other: Any) -> bool:
    """Equal, comparing exceptions by type, text and attributes."""
    if isinstance(one, BaseException):
        return (
            type(one) is type(other)
            and str(one) == str(other)
            and vars(one).keys() == vars(other).keys()
            and all(_same(v, vars(other)[k]) for k, v in vars(one).items())
        )
    if isinstance(one, (tuple, list)):  # e.g. GroupLoadError.rollback_errors
        return (
            type(one) is type(other)
            and len(one) == len(other)
            and all(_same(a, b) for a, b in zip(one, other, strict=True))
        )
    return bool(one == other)


def test_every_error_and_warning_has_a_sample() -> None:
    """The samples cover every class of stepfsm.errors (a new one must be added here)."""
    covered = {type(sample).__name__ for sample in _error_samples()}
    exported = set(errors.__all__)
    assert exported - covered == set()


@pytest.mark.parametrize(
    "error", _error_samples(), ids=lambda e: f"{type(e).__name__}-{str(e)[:12]}"
)
def test_errors_and_warnings_round_trip_with_message_and_attributes(error: BaseException) -> None:
    """A pickled error arrives with its type, message and every attribute (cause included)."""
    arrived = pickle.loads(pickle.dumps(error))
    assert _same(arrived, error)
    if type(error) not in (stepfsm.StepFSMError, stepfsm.DefinitionError, stepfsm.DiagramError):
        assert vars(arrived), "no attributes travelled"  # the others have none


def test_errors_round_trip_through_a_spawn_child() -> None:
    """Errors raised in a fresh interpreter arrive with their attributes (as distilabel's do)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        arrived = pool.apply(_error_samples)
    assert len(arrived) == len(_error_samples())
    for mine, theirs in zip(_error_samples(), arrived, strict=True):
        assert _same(theirs, mine)


# ---------------------------------------------------------- in this process


@pytest.fixture
def late() -> Iterator[type[Late]]:
    """``Late`` made stateful at run time (as a user's script does to a library's class)."""
    stepfsm.stateful(guard=("generate",), on_repeat="warn")(Late)
    yield Late
    from stepfsm.wrap import unmake_stateful

    unmake_stateful(Late)


def test_a_pickled_step_arrives_unloaded_with_its_instance_settings() -> None:
    """Instance settings travel with the instance; the copy is unloaded, the original loaded."""
    step = Tiny("gen_0")
    lc = stepfsm.lifecycle(step)
    lc.on_repeat, lc.on_unloaded_use, lc.timeout = "warn", "ignore", 12.5
    step.load()
    arrived = pickle.loads(pickle.dumps(step))
    other = stepfsm.lifecycle(arrived)
    assert other.state is State.UNLOADED
    assert (other.on_repeat, other.on_unloaded_use, other.timeout) == ("warn", "ignore", 12.5)
    assert other.own_settings() == lc.own_settings()
    assert arrived.model is None
    assert stepfsm.state(step) is State.LOADED
    step.unload()


def test_a_step_without_instance_settings_carries_none() -> None:
    """Nothing set on the instance: the arrived step has no settings of its own."""
    arrived = pickle.loads(pickle.dumps(Tiny()))
    assert stepfsm.lifecycle(arrived).own_settings() == {}


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy])
def test_copies_carry_instance_settings_too(how: Any) -> None:
    """A copy is the same step, configured the same way (docs/decisions.md)."""
    step = Tiny()
    stepfsm.lifecycle(step).on_repeat = "ignore"
    assert stepfsm.lifecycle(how(step)).on_repeat == "ignore"


def test_a_class_made_stateful_at_run_time_is_restored_on_arrival(late: type[Late]) -> None:
    """The class options travel: an arrival remakes a plain class stateful the same way."""
    payload = pickle.dumps(late())
    from stepfsm.wrap import unmake_stateful

    unmake_stateful(late)  # as in a process that imports the class plain
    assert not stepfsm.is_stateful(late)
    arrived = pickle.loads(payload)
    assert stepfsm.is_stateful(arrived)
    assert stepfsm.lifecycle(arrived).on_repeat == "warn"
    with pytest.raises(stepfsm.NotLoadedError):
        arrived.generate()


def test_a_requirement_runs_before_the_step_is_rebuilt() -> None:
    """A process-wide requirement is called where the step arrives, before it exists."""
    calls: list[dict[str, Any]] = []
    remove = _travel.require("test", __name__, "_record", {"seen": "yes"})
    try:
        _RECORDED.clear()
        pickle.loads(pickle.dumps(Tiny()))
        calls = list(_RECORDED)
    finally:
        remove()
    assert calls == [{"seen": "yes"}]
    _RECORDED.clear()
    pickle.loads(pickle.dumps(Tiny()))
    assert _RECORDED == [], "the requirement was not removed"


_RECORDED: list[dict[str, Any]] = []


def _record(settings: dict[str, Any]) -> None:
    _RECORDED.append(settings)


def test_a_failing_requirement_never_breaks_unpickling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A requirement that raises is logged and skipped; the step still arrives."""
    remove = _travel.require("broken", __name__, "_explode", {})
    try:
        arrived = pickle.loads(pickle.dumps(Tiny("x")))
    finally:
        remove()
    assert stepfsm.state(arrived) is State.UNLOADED
    assert "raised; skipped" in caplog.text


def _explode(settings: dict[str, Any]) -> None:
    raise RuntimeError("boom")


# ------------------------------------------------------------ in a spawn child


def _expected(step: Any) -> dict[str, Any]:
    """What a child's ``travel_child.report`` must say of ``step``: its settings here, unloaded."""
    lc = stepfsm.lifecycle(step)
    return {
        "stateful": True,
        "state": "unloaded",
        "on_repeat": lc.on_repeat,
        "on_unloaded_use": lc.on_unloaded_use,
        "timeout": lc.timeout,
        "second_load": "AlreadyLoadedError" if lc.on_repeat == "raise" else "no error",
        "warnings": ["RepeatedLoadWarning"] if lc.on_repeat == "warn" else [],
    }


@pytest.mark.slow
@pytest.mark.parametrize("how", ["decorator", "mixin", "run-time"])
def test_a_spawn_child_gets_class_and_instance_settings(
    how: str, request: pytest.FixtureRequest
) -> None:
    """A fresh interpreter: a class made stateful by ``@stateful`` or by the ``Stateful``
    mixin is stateful on import, one made stateful at run time on arrival; each step arrives
    unloaded, guarded, with the sender's class and instance settings in force there."""
    cls: type[Any] = {"decorator": Tiny, "mixin": Mixed}.get(how) or request.getfixturevalue("late")
    tuned = cls()
    lc = stepfsm.lifecycle(tuned)
    lc.on_repeat, lc.timeout = "warn", 12.5  # instance: the child warns, does not raise
    tuned.load()
    plain = cls()  # nothing set on it: the class's settings (or the child's defaults) apply
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        reports = pool.map(travel_child.report, [tuned, plain])
        guards = pool.map(travel_child.unloaded_use, [tuned, plain])
    for step, report, guard in zip((tuned, plain), reports, guards, strict=True):
        assert report["pid"] != os.getpid()
        assert "stepfsm.integrations.distilabel" not in report["integrations"]
        assert {key: report.get(key) for key in _expected(step)} == _expected(step), report
        assert guard == "NotLoadedError", "the guard did not travel"
    assert reports[0]["on_repeat"] == "warn"
    assert reports[0]["timeout"] == 12.5
    if cls is Mixed:  # the mixin's class keywords
        assert reports[1]["timeout"] == 30.0
    if cls is Late:  # made stateful with on_repeat="warn": the plain one warns too
        assert reports[1]["warnings"] == ["RepeatedLoadWarning"]
    assert stepfsm.state(tuned) is State.LOADED
    tuned.unload()


def test_import_stepfsm_and_the_ray_integration_never_import_ray() -> None:
    """`import stepfsm.integrations.ray` is light: Ray is imported when first used."""
    code = (
        "import sys, stepfsm, stepfsm.integrations.ray\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
