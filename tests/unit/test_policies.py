"""The on_repeat, on_unloaded_use and timeout settings: global, class and instance."""

from __future__ import annotations

import math
import warnings

import pytest

import stepfsm
from stepfsm import (
    AlreadyLoadedError,
    DefinitionError,
    NotLoadedError,
    RepeatedLoadWarning,
    State,
    StepFailedError,
    UnloadedUseWarning,
)
from tests.conftest import FakeStep
from tests.fakes import Boom


@stepfsm.stateful(on_repeat="warn", on_unloaded_use="ignore", guard=("use",), timeout=3)
class Lenient:
    """A class whose own settings differ from the defaults."""

    def __init__(self) -> None:
        self.loads = 0
        self.name = "lenient"

    def load(self) -> None:
        self.loads += 1

    def unload(self) -> None:
        pass

    def use(self) -> str:
        return "ran"


def test_default_policy_raises(step: FakeStep) -> None:
    """With no settings, a repeated load raises and an early use raises."""
    assert stepfsm.lifecycle(step).on_repeat == "raise"
    assert stepfsm.lifecycle(step).on_unloaded_use == "raise"
    with pytest.raises(NotLoadedError):
        step.use()
    step.load()
    with pytest.raises(AlreadyLoadedError):
        step.load()


def test_global_warn_makes_repeated_load_a_warned_noop(step: FakeStep) -> None:
    """configure(on_repeat='warn') turns a repeated load into a RepeatedLoadWarning no-op."""
    step.load()
    handle = step.handle
    with (
        stepfsm.configure(on_repeat="warn"),
        pytest.warns(
            RepeatedLoadWarning, match="FakeStep 'gen_0' is already loaded; load\\(\\) did nothing"
        ) as record,
    ):
        step.load()
    assert record[0].filename == __file__  # attributed to the caller, not to stepfsm
    assert step.loads == 1
    assert step.handle is handle
    with pytest.raises(AlreadyLoadedError):
        step.load()  # the context manager restored "raise"


def test_global_ignore_makes_repeated_load_silent(step: FakeStep) -> None:
    """configure(on_repeat='ignore') makes a repeated load a silent no-op."""
    handle = stepfsm.configure(on_repeat="ignore")
    step.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.load()
    handle.restore()
    assert step.loads == 1


def test_class_setting_beats_global_and_instance_beats_class() -> None:
    """The nearest setting wins: instance, then class, then global."""
    obj = Lenient()
    lc = stepfsm.lifecycle(obj)
    with stepfsm.configure(on_repeat="raise", on_unloaded_use="raise", timeout=1):
        assert (lc.on_repeat, lc.on_unloaded_use, lc.timeout) == ("warn", "ignore", 3.0)
        assert obj.use() == "ran"  # ignore: runs as it would without stepfsm
        obj.load()
        with pytest.warns(RepeatedLoadWarning):
            obj.load()
        lc.on_repeat = "raise"
        lc.on_unloaded_use = "warn"
        lc.timeout = math.inf
        assert (lc.on_repeat, lc.on_unloaded_use, lc.timeout) == ("raise", "warn", math.inf)
        with pytest.raises(AlreadyLoadedError):
            obj.load()
        lc.on_repeat = None  # back to the class setting
        lc.timeout = None
        assert (lc.on_repeat, lc.timeout) == ("warn", 3.0)
    assert obj.loads == 1


def test_unloaded_use_warn_warns_then_runs(step: FakeStep) -> None:
    """on_unloaded_use='warn' emits UnloadedUseWarning and then runs the call."""
    stepfsm.lifecycle(step).on_unloaded_use = "warn"
    step.handle = object()  # type: ignore[assignment]  # the method can run without a load
    with pytest.warns(
        UnloadedUseWarning,
        match=r"is not loaded \(state .unloaded.\), but use\(\) runs anyway because "
        r"on_unloaded_use=.warn.",
    ) as rec:
        assert step.use(7) == 7
    assert rec[0].filename == __file__


def test_unloaded_use_warn_on_failed_step_mentions_cause(step: FakeStep) -> None:
    """Under 'warn', a guarded call on a failed step warns with the failure's cause."""
    step.fail_load = Boom("bad weights")
    with pytest.raises(stepfsm.LoadError):
        step.load()
    stepfsm.configure(on_unloaded_use="warn")
    step.handle = object()  # type: ignore[assignment]
    with pytest.warns(UnloadedUseWarning, match="The step failed with Boom: bad weights"):
        step.use()


def test_unloaded_use_raise_on_failed_is_step_failed(step: FakeStep) -> None:
    """Under the default policy a failed step's guarded call raises StepFailedError."""
    step.fail_load = Boom("x")
    with pytest.raises(stepfsm.LoadError):
        step.load()
    with pytest.raises(StepFailedError):
        step.use()


@pytest.mark.parametrize("bad", ["loud", "", 3])
def test_configure_rejects_unknown_policies(bad: object) -> None:
    """configure() refuses a policy it does not know, saying which values exist."""
    with pytest.raises(ValueError, match="must be one of 'raise', 'warn', 'ignore'"):
        stepfsm.configure(on_unloaded_use=bad)  # type: ignore[arg-type]


def test_none_policy_in_configure_is_rejected() -> None:
    """configure(on_repeat=None) is rejected: the global policy always has a value."""
    with pytest.raises(ValueError, match="on_repeat must be one of"):
        stepfsm.configure(on_repeat=None)  # type: ignore[arg-type]


def test_instance_setters_reject_unknown_policies(step: FakeStep) -> None:
    """Setting an unknown policy on a lifecycle raises ValueError."""
    lc = stepfsm.lifecycle(step)
    with pytest.raises(ValueError, match="on_repeat must be one of"):
        lc.on_repeat = "sometimes"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="on_unloaded_use must be one of"):
        lc.on_unloaded_use = "sometimes"  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1, ValueError, "timeout must be >= 0 seconds"),
        (math.nan, ValueError, "timeout must be >= 0 seconds"),
        ("5", TypeError, "timeout must be a number of seconds or None"),
        (True, TypeError, "not bool"),
    ],
)
def test_timeouts_are_checked(value: object, error: type[Exception], match: str) -> None:
    """A negative, NaN or non-numeric timeout is refused everywhere it can be set."""
    with pytest.raises(error, match=match):
        stepfsm.configure(timeout=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        stepfsm.lifecycle(FakeStep()).timeout = value  # type: ignore[assignment]


def test_class_timeout_is_checked_at_decoration() -> None:
    """A negative class timeout is a DefinitionError when the class is decorated."""
    with pytest.raises(DefinitionError, match="timeout must be >= 0"):

        @stepfsm.stateful(timeout=-2)
        class Bad:
            def load(self) -> None: ...
            def unload(self) -> None: ...


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_configure_history_must_be_positive_int(bad: object) -> None:
    """configure(history=...) takes a whole number >= 1."""
    with pytest.raises(ValueError, match="history must be a whole number >= 1"):
        stepfsm.configure(history=bad)  # type: ignore[arg-type]


def test_configure_history_bounds_new_histories(step: FakeStep) -> None:
    """The history keeps at most the configured number of transitions."""
    stepfsm.configure(history=3)
    for _ in range(3):
        step.load()
        step.unload()
    history = stepfsm.lifecycle(step).history
    assert len(history) == 3
    assert [r.trigger for r in history] == ["finish_load", "begin_unload", "finish_unload"]
    assert stepfsm.state(step) is State.UNLOADED


def test_layer_can_ask_for_the_steps_own_exceptions() -> None:
    """With Layer.raise_original (a migration mode) a failing load raises the original error."""
    from stepfsm._settings import Layer
    from stepfsm.wrap import make_stateful

    layer = Layer()
    layer.raise_original = True

    class Migrating:
        def __init__(self) -> None:
            self.fail: Exception | None = Boom("original")

        def load(self) -> None:
            if self.fail is not None:
                raise self.fail

        def unload(self) -> None:
            if self.fail is not None:
                raise self.fail

    make_stateful(Migrating, layer=layer)
    obj = Migrating()
    with pytest.raises(Boom, match="original"):
        obj.load()
    assert stepfsm.state(obj) is State.FAILED  # the lifecycle still recorded the failure
    with pytest.raises(Boom):
        obj.load()  # the clean-up before the retry raised: that error, unwrapped
    obj.fail = None
    obj.load()
    obj.fail = Boom("unload")
    with pytest.raises(Boom, match="unload"):
        obj.unload()
    assert stepfsm.state(obj) is State.FAILED
