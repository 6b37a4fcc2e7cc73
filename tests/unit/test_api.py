"""The public API of ``stepfsm``, pinned: what it exports and nothing more.

Related checks live elsewhere: ``test_errors.py`` checks the error hierarchy
and that ``import stepfsm`` imports no optional dependency (distilabel,
graphviz, hypothesis, rich, IPython, pydantic); ``test_layout.py`` checks which
of stepfsm's own modules it imports; ``tests/typing/`` checks the types.
"""

from __future__ import annotations

import inspect
import types

import pytest

import stepfsm
from stepfsm import errors
from stepfsm.states import State

#: ``stepfsm.__all__``, exactly (sorted as ``sorted()`` sorts: classes first).
PUBLIC = [
    "AlreadyLoadedError",
    "AsyncLoaded",
    "Budget",
    "BudgetExceededError",
    "CleanupWarning",
    "Configured",
    "DefinitionError",
    "DiagramError",
    "DuplicateLoadWarning",
    "Group",
    "GroupLoadError",
    "LeakWarning",
    "Lifecycle",
    "LifecycleStatistics",
    "LoadError",
    "NotLoadedError",
    "ReleaseReport",
    "ReleasedObject",
    "RepeatedLoadWarning",
    "ResourceLeakError",
    "RunningCall",
    "State",
    "Stateful",
    "Status",
    "StepFSMError",
    "StepFSMWarning",
    "StepFailedError",
    "StepInUseError",
    "StepStateError",
    "StepStatus",
    "TransitionError",
    "TransitionInProgressError",
    "TransitionRecord",
    "UnloadError",
    "Unloaded",
    "UnloadedUseWarning",
    "aensure_loaded",
    "aload",
    "aloaded",
    "areload",
    "aunload",
    "budget",
    "budgets",
    "configure",
    "diagram",
    "ensure_loaded",
    "group",
    "is_loaded",
    "is_stateful",
    "lifecycle",
    "loaded",
    "reload",
    "state",
    "stateful",
    "status",
    "subscribe",
    "unload_all",
]


def _is_submodule(name: str, value: object) -> bool:
    return isinstance(value, types.ModuleType) and value.__name__ == f"stepfsm.{name}"


def _exception_classes(module: types.ModuleType) -> dict[str, type[BaseException]]:
    """The module's public attributes that are exception (or warning) classes."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isclass(value) and issubclass(value, BaseException)
    }


def test_all_is_exactly_the_public_api() -> None:
    """stepfsm.__all__ is exactly PUBLIC, in this order (sorted, no duplicates)."""
    assert sorted(set(PUBLIC)) == PUBLIC, "keep PUBLIC sorted and without duplicates"
    added = sorted(set(stepfsm.__all__) - set(PUBLIC))
    removed = sorted(set(PUBLIC) - set(stepfsm.__all__))
    assert (added, removed) == ([], []), f"added to __all__: {added}; removed: {removed}"
    assert stepfsm.__all__ == PUBLIC, "stepfsm.__all__ is not sorted (or has duplicates)"


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_resolves(name: str) -> None:
    """Each name in __all__ is an attribute of stepfsm (diagram lazily, through __getattr__)."""
    assert getattr(stepfsm, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    """The module's lazy ``__getattr__`` (for ``diagram``) refuses other names normally."""
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        stepfsm.nope  # type: ignore[attr-defined]  # noqa: B018
    assert "diagram" in dir(stepfsm), "dir() lists the lazily imported name too"


def test_star_import_gives_exactly_all() -> None:
    """`from stepfsm import *` binds exactly the names in __all__, all resolvable."""
    namespace: dict[str, object] = {}
    exec("from stepfsm import *", namespace)
    del namespace["__builtins__"]
    assert sorted(namespace) == sorted(PUBLIC)


def test_no_public_attribute_outside_all() -> None:
    """Every public attribute of stepfsm is in __all__ or is a stepfsm submodule.

    ``annotations`` (bound by ``from __future__ import annotations``) is the
    language's, not stepfsm's.
    """
    stray = {
        name
        for name, value in vars(stepfsm).items()
        if not name.startswith("_")
        and name not in stepfsm.__all__
        and not _is_submodule(name, value)
        and not (name == "annotations" and type(value).__module__ == "__future__")
    }
    assert not stray, (
        f"public attributes of stepfsm outside __all__ (not submodules): {sorted(stray)}; "
        "import helpers under private names (import contextlib as _contextlib)"
    )


def test_every_error_is_exported_from_stepfsm_and_errors_as_one_object() -> None:
    """Each exception and warning class is the same object in stepfsm and stepfsm.errors."""
    in_errors = {
        name: cls
        for name, cls in _exception_classes(errors).items()
        if cls.__module__ == errors.__name__
    }
    assert {"StepFSMError", "StepFSMWarning"} <= set(in_errors)
    assert sorted(in_errors) == sorted(errors.__all__), "errors.__all__ lists its classes"
    missing = sorted(set(in_errors) - set(stepfsm.__all__))
    assert not missing, f"stepfsm.errors classes not exported by stepfsm: {missing}"
    for name, cls in in_errors.items():
        assert getattr(stepfsm, name) is cls, f"stepfsm.{name} is not stepfsm.errors.{name}"
    elsewhere = {
        name: cls.__module__
        for name, cls in _exception_classes(stepfsm).items()
        if in_errors.get(name) is not cls
    }
    assert not elsewhere, f"stepfsm exports exception classes not from stepfsm.errors: {elsewhere}"


def test_state_values_are_the_five_lower_case_names() -> None:
    """State has exactly five members, each valued as its name in lower case."""
    assert {s.name: s.value for s in State} == {
        "UNLOADED": "unloaded",
        "LOADING": "loading",
        "LOADED": "loaded",
        "UNLOADING": "unloading",
        "FAILED": "failed",
    }
    assert stepfsm.State is State
    assert all(isinstance(s, str) and s == s.value and str(s) == s.value for s in State)
