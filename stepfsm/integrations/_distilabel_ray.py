"""distilabel's ``RayPipeline`` under the integration: a failing load ends ``run()`` with an error.

distilabel 1.5's ``RayPipeline`` learns that a step failed to load only from a
``"load_failed"`` message on its load queue, and its
``_set_steps_not_loaded_exception()`` does nothing, so ``run()`` returns an
empty result with one ERROR line in the log (the local ``Pipeline`` raises
``RuntimeError("Failed to load all the steps...")`` from the worker's
exception instead). While the integration is installed:

* in the step's actor, ``_StepWrapper._notify_load_failed()`` (called inside
  the ``except`` block of the failed load) adds the exception to its message:
  its text always, the exception itself when it pickles;
* in the driver, ``RayPipeline.run()`` records those exceptions as its load
  queue delivers them, and ``_set_steps_not_loaded_exception()`` sets the
  error that ``run()`` raises: ``RuntimeError("Failed to load all the steps.
  Could not run pipeline: step 'x' failed to load: LoadError: ...")`` whose
  ``__cause__`` is the step's exception (a :class:`~stepfsm.LoadError` naming
  the step and the original cause). The pipeline's step actors are then
  stopped, as the local pipeline terminates its worker pool.

``RayPipeline.run()`` also imports :mod:`stepfsm.integrations.ray`, so the
steps it sends to its actors report their transitions to
``cluster_status()``. The actors themselves need no user code: the steps
they unpickle install the integration first (``docs/design.md``, section 13).
"""

from __future__ import annotations

import pickle
import sys
import weakref
from typing import Any, Final

from distilabel.pipeline.step_wrapper import _StepWrapper

from .._settings import patch as patch_attribute
from .._settings import unpatch as unpatch_class
from ..errors import describe

__all__ = ["patch", "unpatch"]

#: The key the failed load's exception travels under in a load-queue message.
KEY: Final = "stepfsm_error"
#: pipeline -> {step name: (the exception's text, the exception or None)}
_ERRORS: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, BaseException | None]]] = (
    weakref.WeakKeyDictionary()
)


def _ray_pipeline() -> Any:
    try:
        from distilabel.pipeline.ray import RayPipeline
    except ImportError:  # pragma: no cover - part of distilabel 1.5
        return None
    return RayPipeline


def _portable(error: BaseException) -> BaseException | None:
    """``error`` if it survives a pickle round trip (its traceback never does), else ``None``."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return None
    return error


def patch() -> None:
    """Put the hooks on ``_StepWrapper`` and ``RayPipeline`` (``install()`` calls it)."""
    notify = _StepWrapper._notify_load_failed

    def _notify_load_failed(self: Any) -> None:
        error = sys.exc_info()[1]  # called inside the except block of the failed load
        if not getattr(self, "ray_pipeline", False) or not isinstance(error, Exception):
            notify(self)
            return
        self.load_queue.put(
            {
                "name": self.step.name,
                "status": "load_failed",
                KEY: (describe(error), _portable(error)),
            }
        )

    patch_attribute(_StepWrapper, "_notify_load_failed", _notify_load_failed)
    pipeline = _ray_pipeline()
    if pipeline is None:  # pragma: no cover
        return
    run = pipeline.run
    loop = pipeline._run_load_queue_loop

    def run_(self: Any, *args: Any, **kwargs: Any) -> Any:
        from . import ray  # noqa: F401 - the steps sent to the actors report to cluster_status()

        return run(self, *args, **kwargs)

    def _run_load_queue_loop(self: Any) -> None:
        queue = self._load_queue
        self._load_queue = _Recording(queue, _ERRORS.setdefault(self, {}))
        try:
            loop(self)
        finally:
            self._load_queue = queue

    patch_attribute(pipeline, "run", run_)
    patch_attribute(pipeline, "_run_load_queue_loop", _run_load_queue_loop)
    patch_attribute(pipeline, "_set_steps_not_loaded_exception", _set_steps_not_loaded_exception)


def unpatch() -> None:
    """Undo :func:`patch` (``uninstall()`` calls it)."""
    unpatch_class(_StepWrapper)
    pipeline = _ray_pipeline()
    if pipeline is not None:
        unpatch_class(pipeline)


class _Recording:
    """A load queue whose ``get()`` records the exception a ``load_failed`` message carries.

    It stands in for the pipeline's ``_load_queue`` while the load loop runs,
    so the steps started meanwhile are handed it: it pickles as the queue itself.
    """

    def __init__(self, queue: Any, errors: dict[str, tuple[str, BaseException | None]]) -> None:
        self.queue = queue
        self.errors = errors

    def get(self, *args: Any, **kwargs: Any) -> Any:
        item = self.queue.get(*args, **kwargs)
        if isinstance(item, dict) and KEY in item:
            self.errors.setdefault(item["name"], item[KEY])
        return item

    def __getattr__(self, name: str) -> Any:
        if name in ("queue", "errors"):  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.queue, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_itself, (self.queue,))


def _itself(queue: Any) -> Any:
    return queue


def _set_steps_not_loaded_exception(self: Any) -> None:
    """The error ``RayPipeline.run()`` raises when a step's load failed in its actor."""
    from distilabel.pipeline.base import _STEP_LOAD_FAILED_CODE

    errors = _ERRORS.get(self) or {}
    failed = [
        name for name, code in self._steps_load_status.items() if code == _STEP_LOAD_FAILED_CODE
    ]
    parts = []
    for name in failed or list(errors):
        text = errors.get(name, ("", None))[0]
        parts.append(
            f"step '{name}' failed to load: {text}"
            if text
            else f"step '{name}' failed to load (the cause is in its actor's log)"
        )
    error = RuntimeError(
        "Failed to load all the steps. Could not run pipeline: " + "; ".join(parts)
    )
    error.__cause__ = next((e for _, e in errors.values() if e is not None), None)
    self._exception = error
    _stop_step_actors(self)


def _stop_step_actors(pipeline: Any) -> None:
    """Kill the pipeline's step actors (the run is over), as the local pipeline ends its pool."""
    try:
        import ray

        for step in pipeline.dag:
            for replica in range(pipeline.dag.get_step_replica_count(step)):
                try:
                    actor = ray.get_actor(f"distilabel-{pipeline.name}-{step}-{replica}")
                except ValueError:  # never started, or gone already
                    continue
                ray.kill(actor)
    except Exception:  # a clean-up: never hide the load error
        return
