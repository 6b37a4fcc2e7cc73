"""distilabel integration: every ``LLM``, ``Embeddings``, ``ImageGenerationModel`` and step.

::

    import stepfsm.integrations.distilabel as sd

    sd.install()                     # or install(on_unloaded_use="warn"): migration mode
    llm = MyLLM(...)
    llm.load(); llm.load()           # AlreadyLoadedError instead of a second model copy
    sd.uninstall()                   # distilabel exactly as before

:func:`install` makes distilabel's model and step base classes stateful, and
every subclass: those already defined (a walk of ``__subclasses__()``) and
those defined later (a subclass hook), so a user's class in a notebook cell
after ``install()`` is covered. Guarded methods: ``generate``, ``agenerate``,
``generate_outputs`` (LLMs and image models), ``encode`` (embeddings) and
``process`` (steps). A task's ``load()`` loading its ``llm`` is an acquire, so
an LLM loaded by hand is reused and stays loaded after the task unloads.

distilabel deep-copies each step and pickles it into its worker processes;
the copies arrive ``unloaded`` without the parent's resources (DESIGN.md §5),
so the worker loads its own and the notebook's LLM stays loaded.

This is the only stepfsm module that imports distilabel.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from distilabel.models.embeddings.base import Embeddings
from distilabel.models.image_generation.base import ImageGenerationModel
from distilabel.models.llms.base import LLM
from distilabel.steps.base import _Step

from .. import registry
from .._settings import Layer, OnRepeat, OnUnloadedUse, check_policy
from ..wrap import _install_subclass_hook, make_stateful, unmake_stateful

__all__ = ["BASES", "LAYER", "install", "installed", "uninstall"]

#: The distilabel base classes and the methods guarded on them and their subclasses.
BASES: Final[dict[type, tuple[str, ...]]] = {
    LLM: ("generate", "agenerate", "generate_outputs"),
    Embeddings: ("encode",),
    ImageGenerationModel: ("generate", "agenerate", "generate_outputs"),
    _Step: ("process",),
}

_lock = threading.Lock()
_installed = False
#: The integration's policies (``install(on_repeat=..., on_unloaded_use=...)``).
LAYER: Final = Layer()


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed


def _ensure_step_logger(step: Any) -> None:
    """Give a step its logger before its own load runs.

    distilabel's worker reports a failed load through ``step._logger``; a load
    that raises before ``super().load()`` would leave it ``None`` and the
    report itself would raise, which hangs ``Pipeline.run()``.
    """
    private = step.__pydantic_private__
    if private is not None and private.get("_logger") is None:
        step._logger = logging.getLogger(f"distilabel.step.{step.name}")


def _tree(base: type) -> list[type]:
    """``base`` and all its subclasses, every class after all of its parents."""
    seen: dict[type, None] = {}
    todo = [base]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen[cls] = None
            todo.extend(cls.__subclasses__())
    return sorted(seen, key=lambda cls: len(cls.__mro__))


def install(
    *,
    on_repeat: OnRepeat | None = None,
    on_unloaded_use: OnUnloadedUse | None = None,
) -> None:
    """Make every distilabel LLM, embeddings model, image model and step stateful.

    Idempotent: calling it again only replaces the policies. Class and
    instance settings still win over these, and these over ``stepfsm.configure``.

    Args:
        on_repeat: the integration's policy for ``load()`` on a loaded step.
        on_unloaded_use: the integration's policy for guarded calls on a step
            that is not loaded; ``"warn"`` is the migration mode (a warning,
            then the call runs as it would without stepfsm).

    Raises:
        ValueError: an unknown policy name.
    """
    global _installed
    for value, what in ((on_repeat, "on_repeat"), (on_unloaded_use, "on_unloaded_use")):
        if value is not None:
            check_policy(value, what)
    with _lock:
        LAYER.on_repeat = on_repeat
        LAYER.on_unloaded_use = on_unloaded_use
        if _installed:
            return
        for base, guards in BASES.items():
            for cls in _tree(base):
                make_stateful(
                    cls,
                    guard=tuple(n for n in guards if callable(getattr(cls, n, None))),
                    before_load=_ensure_step_logger if cls is _Step else None,
                    layer=LAYER,
                )
            _install_subclass_hook(base)
        _installed = True


def uninstall() -> None:
    """Undo :func:`install`: every distilabel class gets its original methods back.

    Lifecycles of existing distilabel objects are forgotten (they were created
    by the integration). A class decorated with ``@stepfsm.stateful`` that
    derives from a distilabel base loses that decoration too.
    """
    global _installed
    with _lock:
        if not _installed:
            return
        classes = [cls for base in BASES for cls in _tree(base)]
        for cls in reversed(classes):
            unmake_stateful(cls)
        for key, lc in list(registry.LIVE.items()):
            owner = lc._owner()
            if owner is not None and isinstance(owner, tuple(BASES)):
                registry.LIVE.pop(key, None)
                registry.LOADED.pop(key, None)
        LAYER.on_repeat = LAYER.on_unloaded_use = None
        _installed = False
