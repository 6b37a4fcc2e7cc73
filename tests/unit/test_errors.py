"""The error hierarchy, its messages and attributes, and the public surface."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import stepfsm
from stepfsm import errors
from stepfsm.states import State


def test_every_error_lives_in_stepfsm_errors() -> None:
    """Every exported error and warning class reports stepfsm.errors as its module."""
    for name in errors.__all__:
        cls = getattr(stepfsm, name)
        assert cls.__module__ == "stepfsm.errors", name


def test_hierarchy_matches_the_design() -> None:
    """The classes nest as docs/design.md §3 draws them."""
    assert issubclass(stepfsm.StepStateError, stepfsm.StepFSMError)
    for cls in (
        stepfsm.AlreadyLoadedError,
        stepfsm.NotLoadedError,
        stepfsm.StepInUseError,
        stepfsm.TransitionInProgressError,
    ):
        assert issubclass(cls, stepfsm.StepStateError)
    assert issubclass(stepfsm.StepFailedError, stepfsm.NotLoadedError)
    assert issubclass(stepfsm.LoadError, stepfsm.TransitionError)
    assert issubclass(stepfsm.UnloadError, stepfsm.TransitionError)
    assert issubclass(stepfsm.DefinitionError, TypeError)
    assert issubclass(stepfsm.DefinitionError, stepfsm.StepFSMError)
    assert issubclass(stepfsm.DiagramError, stepfsm.StepFSMError)
    for warning in (
        stepfsm.RepeatedLoadWarning,
        stepfsm.DuplicateLoadWarning,
        stepfsm.UnloadedUseWarning,
        stepfsm.CleanupWarning,
    ):
        assert issubclass(warning, stepfsm.StepFSMWarning)
    assert issubclass(stepfsm.StepFSMWarning, UserWarning)


def _samples() -> list[stepfsm.StepFSMError]:
    cause = RuntimeError("boom")
    return [
        stepfsm.AlreadyLoadedError("LLM 'a'", 0.0, 2.25),
        stepfsm.NotLoadedError("LLM 'a'", State.UNLOADED, "generate", 0.0),
        stepfsm.StepFailedError("LLM 'a'", "generate", cause, 0.0),
        stepfsm.StepInUseError("LLM 'a'", State.LOADED, "unload", ["task 'x'", "h"]),
        stepfsm.TransitionInProgressError("LLM 'a'", State.LOADING, "unload", 1.5),
        stepfsm.TransitionInProgressError("LLM 'a'", State.UNLOADING, "load", None),
        stepfsm.LoadError("LLM 'a'", "load", cause),
        stepfsm.UnloadError("LLM 'a'", "unload", cause),
        stepfsm.DefinitionError("bad class"),
        stepfsm.DiagramError("no dot"),
    ]


@pytest.mark.parametrize("error", _samples(), ids=lambda e: type(e).__name__)
def test_errors_pickle_with_message_and_attributes(error: stepfsm.StepFSMError) -> None:
    """Every error survives pickling (worker processes send them back) unchanged."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert {k: v for k, v in vars(copy).items() if k != "cause"} == {
        k: v for k, v in vars(error).items() if k != "cause"
    }


def test_messages_say_what_state_and_next_move() -> None:
    """Each state error's text names the step, the state and what to do next."""
    texts = {type(e).__name__ + str(i): str(e) for i, e in enumerate(_samples())}
    assert "already loaded (since " in texts["AlreadyLoadedError0"]
    assert "load took 2.2 s" in texts["AlreadyLoadedError0"]
    assert "Call load() or ensure_loaded() first" in texts["NotLoadedError1"]
    assert "after RuntimeError: boom" in texts["StepFailedError2"]
    assert "held by 2 holders (task 'x', h)" in texts["StepInUseError3"]
    assert (
        "still 'loading' after waiting 1.5 s, so unload() gave up"
        in texts["TransitionInProgressError4"]
    )
    assert "cannot load() from inside its own unload" in texts["TransitionInProgressError5"]
    assert texts["LoadError6"].startswith(
        "load() of LLM 'a' failed with RuntimeError: boom; the step is now 'failed'."
    )
    assert "unload() to release what it holds" in texts["UnloadError7"]


def test_error_without_text_is_described_by_type() -> None:
    """A cause with an empty message is shown by its type name alone."""
    error = stepfsm.LoadError("X", "load", KeyError())
    assert "failed with KeyError; the step" in str(error)
    failed = stepfsm.StepFailedError("X", "use", None, None)
    assert "'failed' after an unknown error" in str(failed)


def test_import_stepfsm_stays_light() -> None:
    """`import stepfsm` (and building a machine) never imports the optional dependencies."""
    code = (
        "import sys, stepfsm\n"
        "@stepfsm.stateful(guard=('g',))\n"
        "class S:\n"
        "    def load(self): pass\n"
        "    def unload(self): pass\n"
        "    def g(self): pass\n"
        "s = S(); s.load(); s.g(); stepfsm.status(); s.unload()\n"
        "heavy = {'distilabel', 'graphviz', 'hypothesis', 'rich', 'IPython', 'pydantic',"
        " 'stepfsm.diagrams', 'stepfsm.testing'}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_nested_load_error_names_the_child_and_the_root_cause_once() -> None:
    """A parent's LoadError caused by its child's LoadError names both and the root once."""
    root = OSError("CUDA out of memory")
    child = stepfsm.LoadError("LLM 'llm'", "load", stepfsm.LoadError("Inner 'x'", "load", root))
    parent = stepfsm.LoadError("Task 'task'", "load", child)
    text = str(parent)
    assert text.startswith(
        "load() of Task 'task' failed because load() of LLM 'llm' failed with "
        "OSError: CUDA out of memory; the step is now 'failed'."
    )
    assert text.count("the step is now") == 1
