"""stepfsm: an explicit, thread-safe lifecycle for resource-holding pipeline steps.

Layering, bottom to top (each module imports only modules above it in this
list; ``tests/unit/test_layout.py`` checks it):

* ``_typing``    what the modules take from typing, without importing it at run time
* ``states``     the states and the transition table, as plain data
* ``errors``     the error and warning hierarchy, every message, the logger
* ``_settings``  policies and their one resolver, class configuration, listeners
* ``_snapshot``  what a load set: pre-load values, copies, pickles
* ``_release``   verified release: what an unload freed, sizes, who holds a leak
* ``_engine``    the shared ``transitions`` machine and firing a trigger
* ``_aio``       event-loop plumbing for the async operations (worker threads, wake-ups)
* ``_drain``     the guarded calls running now (counted by their token)
* ``registry``   live lifecycles, what is loaded, ``status()``, ``unload_all()``, fork
* ``_budget``    budgets: pools, costs, least recently used eviction
* ``machine``    ``Lifecycle``: claims, holders, waiting, operations (sync and async),
  recovery
* ``_group``     ``group()``: several steps loaded at once, all or nothing (imported
  on first use of ``stepfsm.group``)
* ``_guard``     guards: the loaded check written into a guarded method
* ``wrap``       ``@stateful`` / ``Stateful``: definitions, wrapping
* ``_travel``    what a pickled step carries to another process (settings, its
  integration) and what runs there before it is rebuilt
* ``diagrams``, ``testing``, ``integrations.*``: built on the above,
  imported only when used (``integrations.distilabel``, ``integrations.ray``;
  ``import stepfsm`` never imports distilabel, ray, graphviz, hypothesis, rich
  or IPython).

One exception, on purpose: ``Lifecycle`` and ``Status`` draw themselves in
Jupyter (``_repr_mimebundle_``) with ``diagrams``, imported when Jupyter asks.

Then this package (the public API), and the programs built on it like any
user's code, bottom to top:

* ``_demo_distilabel``, ``_demo``: the demo's story (``stepfsm demo``)
* ``cli``        the ``stepfsm`` command: ``diagram``, ``demo``
* ``__main__``   ``python -m stepfsm``
"""

from __future__ import annotations

import contextlib as _contextlib
from collections.abc import Iterator as _Iterator

from . import _travel  # wires what a pickled step carries (no public names)
from ._budget import Budget as Budget
from ._budget import budget as budget
from ._budget import budgets as budgets
from ._drain import RunningCall as RunningCall
from ._release import ReleasedObject as ReleasedObject
from ._release import ReleaseReport as ReleaseReport
from ._settings import Configured as Configured
from ._settings import configure as configure
from ._settings import is_stateful as is_stateful
from ._settings import subscribe as subscribe
from ._typing import TYPE_CHECKING as _TYPE_CHECKING
from .errors import AlreadyLoadedError as AlreadyLoadedError
from .errors import BudgetExceededError as BudgetExceededError
from .errors import CleanupWarning as CleanupWarning
from .errors import DefinitionError as DefinitionError
from .errors import DiagramError as DiagramError
from .errors import DuplicateLoadWarning as DuplicateLoadWarning
from .errors import GroupLoadError as GroupLoadError
from .errors import LeakWarning as LeakWarning
from .errors import LoadError as LoadError
from .errors import NotLoadedError as NotLoadedError
from .errors import RepeatedLoadWarning as RepeatedLoadWarning
from .errors import ResourceLeakError as ResourceLeakError
from .errors import StepFailedError as StepFailedError
from .errors import StepFSMError as StepFSMError
from .errors import StepFSMWarning as StepFSMWarning
from .errors import StepInUseError as StepInUseError
from .errors import StepStateError as StepStateError
from .errors import TransitionError as TransitionError
from .errors import TransitionInProgressError as TransitionInProgressError
from .errors import UnloadedUseWarning as UnloadedUseWarning
from .errors import UnloadError as UnloadError
from .machine import AsyncLoaded as AsyncLoaded
from .machine import Lifecycle as Lifecycle
from .machine import LifecycleStatistics as LifecycleStatistics
from .machine import TransitionRecord as TransitionRecord
from .machine import lifecycle as lifecycle
from .registry import Status as Status
from .registry import StepStatus as StepStatus
from .registry import Unloaded as Unloaded
from .registry import status as status
from .registry import unload_all as unload_all
from .states import State as State
from .wrap import Stateful as Stateful
from .wrap import stateful as stateful

if _TYPE_CHECKING:
    from typing import Any as _Any
    from typing import Final as _Final
    from typing import TypeVar as _TypeVar

    _T = _TypeVar("_T")

    # imported on first use: see __getattr__
    from ._group import Group as Group
    from ._group import group as group
    from .diagrams import diagram as diagram

__version__ = "0.1.0"


__all__ = [
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


def state(obj: object) -> State:
    """The current :class:`State` of a stateful object.

    Raises:
        TypeError: ``obj`` is not stateful.
    """
    return lifecycle(obj).state


def is_loaded(obj: object) -> bool:
    """Whether a stateful object is ``loaded`` right now.

    Raises:
        TypeError: ``obj`` is not stateful.
    """
    return lifecycle(obj).state is State.LOADED


def ensure_loaded(obj: object) -> bool:
    """Load ``obj`` unless it is loaded; ``True`` if a load ran.

    Raises:
        LoadError: the load raised.
        TypeError: ``obj`` is not stateful.
    """
    return lifecycle(obj).ensure_loaded()


def reload(obj: object, force: bool = False) -> _Any:
    """Unload ``obj`` (if loaded) and load it again; returns what its load returned.

    Raises:
        StepInUseError: other holders remain and ``force`` is false.
        LoadError: the load raised.
        TypeError: ``obj`` is not stateful.
    """
    return lifecycle(obj).reload(force=force)


@_contextlib.contextmanager
def loaded(obj: _T) -> _Iterator[_T]:
    """Hold ``obj`` loaded for a ``with`` block and yield it.

    A step the block loaded is unloaded at the end (unless another holder
    remains); a step that was already loaded stays loaded.

    Raises:
        LoadError: the load raised.
        TypeError: ``obj`` is not stateful.
    """
    with lifecycle(obj).loaded():
        yield obj


async def aload(obj: object) -> _Any:
    """Load ``obj``, awaited (the event loop keeps running); returns what its load returned.

    A sync step's load runs in a worker thread; an async step's (``async def
    load``) runs on this loop. Outcomes as :meth:`Lifecycle.load`.
    """
    return await lifecycle(obj).aload()


async def aunload(obj: object, force: bool = False) -> _Any:
    """Unload ``obj``, awaited; returns what its unload returned (as :meth:`Lifecycle.unload`)."""
    return await lifecycle(obj).aunload(force)


async def aensure_loaded(obj: object) -> bool:
    """Load ``obj`` unless it is loaded, awaited; ``True`` if a load ran.

    Any mix of tasks and threads asking at once produces one load.
    """
    return await lifecycle(obj).aensure_loaded()


async def areload(obj: object, force: bool = False) -> _Any:
    """Unload ``obj`` (if loaded) and load it again, awaited (as :meth:`Lifecycle.reload`)."""
    return await lifecycle(obj).areload(force)


def aloaded(obj: _T) -> AsyncLoaded[_T]:
    """``async with stepfsm.aloaded(step) as step:`` hold ``obj`` loaded for the block.

    Like :func:`loaded`: a step the block loaded is unloaded at the end.
    """
    return lifecycle(obj).aloaded()


def __getattr__(name: str) -> _Any:
    """The public names whose module is imported on first use (``import stepfsm`` stays light)."""
    if name == "diagram":  # diagrams pulls in transitions' diagram support
        from .diagrams import diagram as value
    elif name in _GROUP:  # group() is all it needs: no step loads with it
        from . import _group

        value = getattr(_group, name)
    else:
        raise AttributeError(f"module 'stepfsm' has no attribute {name!r}")
    globals()[name] = value
    return value


_GROUP: _Final = ("Group", "group")


def __dir__() -> list[str]:
    return sorted({*globals(), "diagram", *_GROUP})
