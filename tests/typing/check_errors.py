"""Static checks of the errors' and warnings' attributes (mypy only; never run, never collected)."""

# mypy: warn-unused-ignores, enable-error-code="ignore-without-code"

from __future__ import annotations

from typing_extensions import assert_type

import stepfsm
from stepfsm import errors


def check_state_errors(error: stepfsm.StepStateError) -> None:
    assert_type(error.step, str)
    assert_type(error.state, stepfsm.State)
    assert_type(error.operation, str)


def check_transition_errors(error: stepfsm.TransitionError) -> None:
    assert_type(error.step, str)
    assert_type(error.state, stepfsm.State)
    assert_type(error.operation, str)
    assert_type(error.cause, BaseException)  # always set: the step's own exception


def check_caught() -> None:
    try:
        pass
    except stepfsm.LoadError as error:
        assert_type(error.cause, BaseException)
        assert_type(error.step, str)
    except stepfsm.UnloadError as error:
        assert_type(error.cause, BaseException)
        assert_type(error.operation, str)
    except stepfsm.StepFailedError as error:
        # unlike TransitionError.cause, this one may be unknown
        assert_type(error.cause, BaseException | None)
        assert_type(error.since, float | None)
        assert_type(error.state, stepfsm.State)
        _ = error.cause.args  # type: ignore[union-attr]
    except stepfsm.NotLoadedError as error:
        assert_type(error.since, float | None)
        assert_type(error.operation, str)
    except stepfsm.AlreadyLoadedError as error:
        assert_type(error.since, float | None)
        assert_type(error.load_s, float | None)
    except stepfsm.StepInUseError as error:
        assert_type(error.holders, tuple[str, ...])
    except stepfsm.TransitionInProgressError as error:
        assert_type(error.timeout, float | None)
    except stepfsm.DefinitionError as error:
        as_type_error: TypeError = error  # both a TypeError and a StepFSMError
        as_stepfsm_error: stepfsm.StepFSMError = error
        del as_type_error, as_stepfsm_error
    except stepfsm.StepFSMError as error:
        _ = error.step  # type: ignore[attr-defined]  # only the subclasses name a step


def check_warnings(
    base: stepfsm.StepFSMWarning,
    duplicate: stepfsm.DuplicateLoadWarning,
    unloaded: stepfsm.UnloadedUseWarning,
    cleanup: stepfsm.CleanupWarning,
    repeated: stepfsm.RepeatedLoadWarning,
) -> None:
    assert_type(base.step, str)
    assert_type(repeated.step, str)
    assert_type(duplicate.other, str)
    assert_type(duplicate.other_since, float | None)
    assert_type(unloaded.state, stepfsm.State)
    assert_type(unloaded.operation, str)
    assert_type(unloaded.cause, BaseException | None)
    assert_type(cleanup.cause, BaseException)


def check_same_classes() -> None:
    assert_type(errors.LoadError("s", "load", OSError()), stepfsm.LoadError)
    assert_type(stepfsm.StepFailedError("s", "use", None, None), errors.StepFailedError)
