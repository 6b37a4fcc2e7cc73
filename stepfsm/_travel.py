"""What a pickled step carries to another process, and what runs there before it is rebuilt.

A step whose class is stateful pickles through the ``__reduce_ex__`` hook that
``_snapshot`` puts on the class (plain classes' copies take the same path);
:func:`reduce` wraps the rebuild it returns, so that unpickling calls
:func:`arrive`, which

1. calls the *requirements* first: the step's integration, if its class got
   stateful through one (``Layer.home``'s ``arrive(policies)`` with the
   sender's integration policies: the distilabel integration installs itself
   unless that process has installed or uninstalled it itself), then each
   process-wide requirement registered with :func:`require` (the Ray
   integration's reporting);
2. rebuilds the object with the original callable and arguments;
3. makes its class stateful with the sender's class settings if it is not (a
   class made stateful by a call at run time, not where it is defined);
4. gives the step the sender's instance settings.

The step arrives ``unloaded``, with the sender's policies in force: class and
integration settings travel with the class, instance settings with the
instance (``docs/design.md``, section 13). ``stepfsm.configure()`` settings are
the process's own and do not travel. A requirement that raises is logged and
skipped: it never breaks the unpickling.

Copies made in the same process carry the instance settings too (pydantic
models' ``copy``/``deepcopy``/``model_copy`` go through the same hook).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from . import _snapshot, registry
from ._settings import class_config
from ._typing import TYPE_CHECKING
from .errors import log
from .machine import lifecycle
from .wrap import stateful

if TYPE_CHECKING:
    from typing import Any, Final

    #: ``(module, function name, settings)``: ``module.function(settings)`` runs on arrival.
    Requirement = tuple[str, str, dict[str, Any]]
    #: ``(requirements, class options or None, instance settings or None)``
    Travel = tuple[tuple[Requirement, ...], "dict[str, Any] | None", "dict[str, Any] | None"]

__all__ = ["arrive", "reduce", "require", "requirements"]


_LOCK: Final = threading.Lock()
#: key -> requirement, for every step pickled in this process (copy-on-write).
_required: dict[str, Requirement] = {}
#: (module, function) -> the function, once imported.
_functions: dict[tuple[str, str], Callable[[dict[str, Any]], object]] = {}


def require(key: str, module: str, function: str, settings: dict[str, Any]) -> Callable[[], None]:
    """Make every step pickled from now on call ``module.function(settings)`` where it arrives.

    ``key`` identifies the requirement: registering the same key again
    replaces it. Returns the function that removes it.
    """
    global _required
    entry: Requirement = (module, function, dict(settings))
    with _LOCK:
        _required = {**_required, key: entry}

    def remove() -> None:
        global _required
        with _LOCK:
            if _required.get(key) is entry:
                _required = {k: v for k, v in _required.items() if k != key}

    return remove


def requirements() -> tuple[Requirement, ...]:
    """The process-wide requirements a step pickled now carries."""
    return tuple(_required.values())


def _class_options(cls: type) -> dict[str, Any] | None:
    """The options that make ``cls`` stateful as it is here; ``None`` for an integration's."""
    cfg = class_config(cls)
    if cfg is None:
        return None
    if cfg.layer is not None and cfg.layer.home is not None:
        return None  # the integration's arrive() makes it stateful
    options = {
        "load": cfg.load,
        "unload": cfg.unload,
        "guard": cfg.guard,
        "on_repeat": cfg.on_repeat,
        "on_unloaded_use": cfg.on_unloaded_use,
        "timeout": cfg.timeout,
        "on_leak": cfg.on_leak,
        "drain_timeout": cfg.drain_timeout,
        "idle_timeout": cfg.idle_timeout,
    }
    return {key: value for key, value in options.items() if value not in (None, ())}


def reduce(obj: Any, rebuild: Any, args: Any) -> tuple[Any, Any]:
    """The rebuild of a reduce of ``obj``, wrapped so that what travels with it arrives first."""
    cls = type(obj)
    cfg = class_config(cls)
    if cfg is None:
        return rebuild, args
    needs: list[Requirement] = []
    layer = cfg.layer
    if layer is not None and layer.home is not None:
        needs.append((layer.home, "arrive", layer.policies()))
    needs.extend(_required.values())
    lc = registry.find(obj)
    own = lc.own_settings() if lc is not None else None
    travel: Travel = (tuple(needs), _class_options(cls), own or None)
    return arrive, (travel, rebuild, args)


def _function(module: str, name: str) -> Callable[[dict[str, Any]], object]:
    fn = _functions.get((module, name))
    if fn is None:
        fn = getattr(importlib.import_module(module), name)
        _functions[(module, name)] = fn
    return fn


def arrive(travel: Travel, rebuild: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Rebuild a step that was pickled with :func:`reduce`: requirements first, then the step.

    Called by ``pickle`` (and ``copy``), never by hand.
    """
    needs, options, own = travel
    for module, name, settings in needs:
        try:
            _function(module, name)(settings)
        except Exception:
            log.warning(
                "stepfsm: %s.%s(%r), which a step unpickled here asked for, raised; skipped",
                module,
                name,
                settings,
                exc_info=True,
            )
    obj = rebuild(*args)
    cls = type(obj)
    if options is not None and class_config(cls) is None:
        stateful(**options)(cls)
    if own and class_config(cls) is not None:
        lc = lifecycle(obj)
        for key, value in own.items():
            setattr(lc, key, value)
    return obj


_snapshot.on_reduce(reduce)
