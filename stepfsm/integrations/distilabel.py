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

``install(on_unloaded_use="warn")`` is the migration mode (``docs/design.md``, section 4):
distilabel's own unit tests see no change. A guarded call on a step that is
not loaded warns and runs; ``on_repeat`` defaults to ``"warn"`` too (a
repeated ``load()`` warns and does nothing); and a ``load()``/``unload()``
whose own code raises re-raises that exception unchanged instead of
``LoadError``/``UnloadError`` (the step is ``failed`` all the same). See
``docs/distilabel-compat.md`` for the measurement.

distilabel deep-copies each step and pickles it into its worker processes;
the copies arrive ``unloaded`` without the parent's resources (``docs/design.md``, section 5),
so the worker loads its own and the notebook's LLM stays loaded.

Logging: every ``Pipeline.run()`` points the root logger at distilabel's own
log (level INFO, in the parent and in every worker). So that stepfsm's
routine INFO lines ("loaded ... in 0.006 s") do not go there, :func:`install`
sets the ``stepfsm`` logger to WARNING when its level is unset; a level you
set yourself, before or after, wins (``docs/decisions.md``, "stepfsm's INFO
lines under the distilabel integration"). Warnings still reach that log.

Other processes (``docs/design.md``, section 13): a distilabel step pickled
while the integration is installed carries its policies, and the process
that unpickles it (a Ray actor, a ``spawn`` worker) calls :func:`arrive`
before the step is rebuilt, which installs the integration there with the
sender's policies, unless that process called :func:`install` or
:func:`uninstall` itself. :func:`install` also makes distilabel's
``RayPipeline`` end ``run()`` with an error naming the step when a step's
load fails in its actor (``stepfsm.integrations._distilabel_ray``).

This and ``_distilabel_ray`` are the only stepfsm modules that import
distilabel (besides the demo's ``stepfsm._demo_distilabel``, imported only
when distilabel is installed).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Final

from distilabel.models.embeddings.base import Embeddings
from distilabel.models.image_generation.base import ImageGenerationModel
from distilabel.models.llms.base import LLM
from distilabel.steps.base import _Step

from .. import registry
from .._settings import Layer, check_policy
from ..wrap import install_subclass_hook, make_stateful, unmake_stateful
from . import _distilabel_ray

if TYPE_CHECKING:
    from .._settings import OnLeak, OnRepeat, OnUnloadedUse

__all__ = ["BASES", "LAYER", "arrive", "install", "installed", "uninstall"]

#: The distilabel base classes and the methods guarded on them and their subclasses.
BASES: Final[dict[type, tuple[str, ...]]] = {
    LLM: ("generate", "agenerate", "generate_outputs"),
    Embeddings: ("encode",),
    ImageGenerationModel: ("generate", "agenerate", "generate_outputs"),
    _Step: ("process",),
}

_lock = threading.Lock()
_installed = False
#: The level :func:`install` gives the ``stepfsm`` logger when it has none.
_QUIET_LEVEL: Final = logging.WARNING
#: Whether :func:`install` set the ``stepfsm`` logger's level (so :func:`uninstall` unsets it).
_quieted = False
#: The integration's policies (``install(on_repeat=..., on_unloaded_use=...)``); a
#: pickled step of the family carries them to :func:`arrive` in the receiving process.
LAYER: Final = Layer(home=__name__)
#: Whether this process's own code called install() or uninstall(): arrivals then
#: leave the integration as it is (the receiving process's own settings win).
_decided = False


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _installed


#: The logger-name prefix that distilabel's own base ``load()`` uses, per model base.
_MODEL_LOGGERS: Final[dict[type, str]] = {
    LLM: "distilabel.llm.",
    Embeddings: "distilabel.models.embeddings.",
    ImageGenerationModel: "distilabel.models.image_generation.",
}


def _ensure_logger(obj: Any) -> None:
    """Give a step or model the logger its base ``load()`` would give it, before its load runs.

    distilabel's base ``load()`` sets ``_logger``, and unloads log through it
    (``_Step.unload``, ``_Task.unload``, often users' own). A load that raises
    before ``super().load()`` would leave it ``None``, so the clean-up unload
    that distilabel's worker runs after a failed load would raise too:

    * for a step, the worker's report of the failure then raises as well,
      which hangs ``Pipeline.run()``;
    * for a model, the clean-up fails with a ``CleanupWarning``; where warnings
      are errors (forked workers inherit pytest's ``filterwarnings = error``),
      that warning is raised out of the step's unload: the same hang.
    """
    private = obj.__pydantic_private__
    if private is None or private.get("_logger") is not None:
        return
    if isinstance(obj, _Step):
        name = f"distilabel.step.{obj.name}"
    else:
        prefix = next(p for base, p in _MODEL_LOGGERS.items() if isinstance(obj, base))
        try:
            name = f"{prefix}{obj.model_name}"
        except Exception:  # a model_name that needs the load: leave it to the load
            return
    obj._logger = logging.getLogger(name)


def _quiet_stepfsm_log() -> None:
    """Keep stepfsm's per-transition INFO lines out of distilabel's log, unless asked for.

    distilabel's ``setup_logging`` (run by every ``Pipeline.run()``, in the
    parent and in each worker) clears the root logger's handlers, adds its
    own (rich on the terminal, the run's ``pipeline.log``) and sets the root
    level to INFO: logger ``stepfsm``, whose level is unset, would inherit it.
    A level the user gave logger ``stepfsm`` is left alone.
    """
    global _quieted
    log = logging.getLogger("stepfsm")
    if log.level == logging.NOTSET:
        log.setLevel(_QUIET_LEVEL)
        _quieted = True


def _unquiet_stepfsm_log() -> None:
    """Undo :func:`_quiet_stepfsm_log`, unless the user has set another level since."""
    global _quieted
    log = logging.getLogger("stepfsm")
    if _quieted and log.level == _QUIET_LEVEL:
        log.setLevel(logging.NOTSET)
    _quieted = False


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
    on_leak: OnLeak | None = None,
) -> None:
    """Make every distilabel LLM, embeddings model, image model and step stateful.

    Idempotent: calling it again only replaces the policies. Class and
    instance settings still win over these, and these over ``stepfsm.configure``.

    Also sets the ``stepfsm`` logger's level to WARNING if it has none, so
    that its INFO lines stay out of the log every ``Pipeline.run()`` sets up
    on the root logger; ``logging.getLogger("stepfsm").setLevel(logging.INFO)``
    brings them back.

    Args:
        on_repeat: the integration's policy for ``load()`` on a loaded step;
            unset, ``"warn"`` in the migration mode, else ``stepfsm.configure``'s.
        on_unloaded_use: the integration's policy for guarded calls on a step
            that is not loaded. ``"warn"`` is the migration mode, in which
            distilabel's own unit tests see no change: a guarded call on an
            unloaded step warns and runs as it would without stepfsm, a
            repeated ``load()`` warns and does nothing (unless ``on_repeat``
            says otherwise), and a ``load()``/``unload()`` whose own code
            raises re-raises that exception instead of ``LoadError``/``UnloadError``.
        on_leak: the integration's policy when an unload leaves alive what
            the load created (a model still referenced): ``"warn"``,
            ``"raise"`` or ``"ignore"``; unset, ``stepfsm.configure``'s.

    Raises:
        ValueError: an unknown policy name.
    """
    global _decided
    _decided = True
    _install(on_repeat, on_unloaded_use, on_leak)


def arrive(policies: dict[str, Any]) -> None:
    """Install the integration with a sender's policies, where one of its pickled steps arrives.

    Called by stepfsm when a distilabel step pickled under :func:`install`
    is unpickled, before the step is rebuilt (``docs/design.md``, section 13):
    a Ray actor, a ``spawn`` worker or any process that never called
    :func:`install` ends up with the integration installed, with the
    sender's ``on_repeat``/``on_unloaded_use``. Does nothing where the process
    called :func:`install` or :func:`uninstall` itself, or is installed already
    (the first arrival's policies stay).
    """
    if _decided or _installed:
        return
    _install(policies.get("on_repeat"), policies.get("on_unloaded_use"), policies.get("on_leak"))
    if policies.get("timeout") is not None:
        LAYER.timeout = policies["timeout"]


def _install(
    on_repeat: OnRepeat | None,
    on_unloaded_use: OnUnloadedUse | None,
    on_leak: OnLeak | None = None,
) -> None:
    global _installed
    for value, what in (
        (on_repeat, "on_repeat"),
        (on_unloaded_use, "on_unloaded_use"),
        (on_leak, "on_leak"),
    ):
        if value is not None:
            check_policy(value, what)
    if on_repeat is None and on_unloaded_use == "warn":
        on_repeat = "warn"  # the migration mode: a repeated load() must not start raising
    with _lock:
        LAYER.on_repeat = on_repeat
        LAYER.on_unloaded_use = on_unloaded_use
        LAYER.on_leak = on_leak
        # The migration mode: a failing load()/unload() raises the step's own
        # exception (the step is still 'failed'), as distilabel alone would.
        LAYER.raise_original = on_unloaded_use == "warn"
        if _installed:
            return
        for base, guards in BASES.items():
            for cls in _tree(base):
                make_stateful(
                    cls,
                    guard=tuple(n for n in guards if callable(getattr(cls, n, None))),
                    before_load=_ensure_logger,
                    layer=LAYER,
                )
            install_subclass_hook(base)
        _distilabel_ray.patch()
        _quiet_stepfsm_log()
        _installed = True


def uninstall() -> None:
    """Undo :func:`install`: every distilabel class gets its original methods back.

    Lifecycles of existing distilabel objects are forgotten (they were created
    by the integration). A class decorated with ``@stepfsm.stateful`` that
    derives from a distilabel base loses that decoration too. The ``stepfsm``
    logger gets its level back (unset), unless you have set one since.
    """
    global _installed, _decided
    _decided = True
    with _lock:
        if not _installed:
            return
        _distilabel_ray.unpatch()
        classes = [cls for base in BASES for cls in _tree(base)]
        for cls in reversed(classes):
            unmake_stateful(cls)
        bases = tuple(BASES)
        registry.forget_where(lambda step: isinstance(step, bases))
        LAYER.on_repeat = LAYER.on_unloaded_use = LAYER.timeout = LAYER.on_leak = None
        LAYER.raise_original = False
        _unquiet_stepfsm_log()
        _installed = False
