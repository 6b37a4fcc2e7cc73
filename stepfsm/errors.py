"""Every error and warning stepfsm raises or emits.

Two kinds of refusal are kept apart, as trio does with ``ClosedResourceError``
and ``BrokenResourceError``:

* :class:`StepStateError` and its subclasses: *your code* asked for something
  the step's current state does not allow (``generate()`` before ``load()``,
  ``load()`` twice). Nothing ran and nothing changed.
* :class:`TransitionError` and its subclasses: something *outside* stepfsm
  failed (the step's own ``load()`` or ``unload()`` raised). The step is now
  ``failed`` and the original exception is the ``__cause__``.

Each error stores its facts as attributes and builds its message from them,
so the text and the data always agree. Every error pickles (a distilabel
worker sends exceptions back to the parent process).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .states import State

__all__ = [
    "AlreadyLoadedError",
    "CleanupWarning",
    "DefinitionError",
    "DiagramError",
    "DuplicateLoadWarning",
    "LoadError",
    "NotLoadedError",
    "RepeatedLoadWarning",
    "StepFSMError",
    "StepFSMWarning",
    "StepFailedError",
    "StepInUseError",
    "StepStateError",
    "TransitionError",
    "TransitionInProgressError",
    "UnloadError",
    "UnloadedUseWarning",
]


def _rebuild(cls: type[BaseException], message: str, attrs: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    BaseException.__init__(error, message)
    error.__dict__.update(attrs)
    return error


def _clock(when: float | None) -> str:
    if when is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(when))


def _since(when: float | None) -> str:
    return "" if when is None else f" since {_clock(when)}"


def describe(error: BaseException) -> str:
    """``"Type: text"`` (or just ``"Type"`` when the text is empty)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class StepFSMError(Exception):
    """The root of every error stepfsm raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class StepStateError(StepFSMError):
    """An operation was refused because of the step's current state.

    You get this (or a subclass) when your code asks for something the state
    does not allow; nothing ran and the state did not change. You do not get
    it when the step's own load/unload raised: that is :class:`TransitionError`.

    Attributes:
        step: the step's display name, e.g. ``"TextGeneration 'gen_0'"``.
        state: the state the step was in when the operation was refused.
        operation: the refused operation, e.g. ``"load"`` or ``"generate"``.
    """

    def __init__(self, message: str, *, step: str, state: State, operation: str) -> None:
        self.step = step
        self.state = state
        self.operation = operation
        super().__init__(message)


class AlreadyLoadedError(StepStateError):
    """``load()`` was called on a step that is already loaded.

    You get this from a plain ``load()`` under the default ``on_repeat="raise"``
    policy. You do not get it from ``ensure_loaded()``, from a load made inside
    another step's load (that is an acquire), nor when ``load()`` itself fails
    (that is :class:`LoadError`).
    """

    def __init__(self, step: str, since: float | None, load_s: float | None) -> None:
        self.since = since
        self.load_s = load_s
        took = f", load took {load_s:.1f} s" if load_s is not None else ""
        super().__init__(
            f"{step} is already loaded ({_since(since).strip()}{took}). Use ensure_loaded() "
            "to make this a no-op, reload() to load again, or unload() first.",
            step=step,
            state=State.LOADED,
            operation="load",
        )


class NotLoadedError(StepStateError):
    """A method that needs the loaded resource was called on a step that is not loaded.

    You get this from a guarded method (``generate()``, ``process()``, any name
    in ``guard=``) or ``require_loaded()`` while the step is ``unloaded``, under
    the default ``on_unloaded_use="raise"`` policy. You do not get it while a
    load is running in another thread (the call waits), nor from inside the
    step's own load (the call passes through).
    """

    def __init__(
        self,
        step: str,
        state: State,
        operation: str,
        since: float | None = None,
        message: str | None = None,
    ) -> None:
        self.since = since
        if message is None:
            message = (
                f"{step} is not loaded (state '{state.value}'{_since(since)}), "
                f"so {operation}() cannot run. Call load() or ensure_loaded() first, "
                "or use `with stepfsm.loaded(step):`."
            )
        super().__init__(message, step=step, state=state, operation=operation)


class StepFailedError(NotLoadedError):
    """A method that needs the loaded resource was called on a ``failed`` step.

    The step's last load or unload raised; ``cause`` is that exception. You get
    this instead of a plain :class:`NotLoadedError` so the original error is not
    lost. Call ``load()`` again (it cleans up first) or ``unload()``.
    """

    def __init__(
        self, step: str, operation: str, cause: BaseException | None, since: float | None
    ) -> None:
        self.cause = cause
        what = describe(cause) if cause is not None else "an unknown error"
        super().__init__(
            step,
            State.FAILED,
            operation,
            since,
            message=(
                f"{step} is 'failed'{_since(since)} after {what}, so {operation}() "
                "cannot run. Fix the cause and call load() again (it cleans up first), "
                "or unload() to release what it holds."
            ),
        )


class StepInUseError(StepStateError):
    """``unload()`` or ``reload()`` was called while other holders still use the step.

    Holders come from ``acquire()``, ``with stepfsm.loaded(step):`` and from
    other steps that loaded this one inside their own load. You do not get this
    from ``unload(force=True)`` or ``unload_all()``, which evict the holders.

    Attributes:
        holders: the display names of the remaining holders.
    """

    def __init__(self, step: str, state: State, operation: str, holders: Sequence[str]) -> None:
        self.holders = tuple(holders)
        count = len(self.holders)
        names = ", ".join(self.holders)
        super().__init__(
            f"{step} cannot {operation}(): it is held by {count} "
            f"holder{'s' if count != 1 else ''} ({names}). Release them first "
            f"(release(), or leave the `with loaded()` block), or call {operation}(force=True).",
            step=step,
            state=state,
            operation=operation,
        )


class TransitionInProgressError(StepStateError):
    """A load or unload of the step is running and the operation could not wait for it.

    You get this when waiting for another thread's transition took longer than
    the lifecycle's ``timeout``, or when code running inside the step's own
    load or unload asks for a different lifecycle operation on the same step
    on the same thread (waiting would deadlock). Calls of ``load()`` and
    guarded methods inside the step's own load pass straight through instead.

    Attributes:
        timeout: the timeout that expired, or ``None`` for a same-thread re-entry.
    """

    def __init__(self, step: str, state: State, operation: str, timeout: float | None) -> None:
        self.timeout = timeout
        if timeout is None:
            doing = "load" if state is State.LOADING else "unload"
            message = (
                f"{step} cannot {operation}() from inside its own {doing} on the same thread "
                f"(state '{state.value}'); waiting would deadlock. Move the call out of "
                f"{doing}(), after it returns."
            )
        else:
            message = (
                f"{step} is still '{state.value}' after waiting {timeout:g} s, so "
                f"{operation}() gave up. Wait longer (raise the lifecycle's timeout) or find "
                "out why the load/unload in the other thread is slow (stepfsm.status())."
            )
        super().__init__(message, step=step, state=state, operation=operation)


class TransitionError(StepFSMError):
    """The step's own load or unload code raised; the step is now ``failed``.

    The original exception is ``__cause__`` (and ``cause``), its type and text
    are in the message, and the lifecycle keeps it as ``lifecycle.error``.

    Attributes:
        step: the step's display name.
        operation: ``"load"`` or ``"unload"``.
        cause: the exception the step's code raised.
    """

    def __init__(self, step: str, operation: str, cause: BaseException, detail: str = "") -> None:
        self.step = step
        self.operation = operation
        self.cause = cause
        self.state = State.FAILED
        if isinstance(cause, TransitionError):  # a child step's load failed inside ours
            what = f"because {cause.operation}() of {cause.step} failed with "
            root = cause.cause
            while isinstance(root, TransitionError):  # name the deepest cause once
                root = root.cause
            what += describe(root)
        else:
            what = f"with {describe(cause)}"
        super().__init__(
            f"{operation}() of {step} failed {what}{detail}; the step is now "
            "'failed'. Fix the cause and call load() again (it cleans up first), or unload() "
            "to release what it holds."
        )


class LoadError(TransitionError):
    """The step's own ``load()`` raised (or the clean-up before a retried load did).

    You do not get this for a ``KeyboardInterrupt`` or other non-``Exception``
    interruption: those leave the step ``failed`` and propagate unchanged.
    """


class UnloadError(TransitionError):
    """The step's own ``unload()`` raised while unloading a ``loaded`` step.

    You do not get this when the unload was a clean-up of an already ``failed``
    step: that emits a :class:`CleanupWarning` instead, so the first error is
    not masked.
    """


class DefinitionError(StepFSMError, TypeError):
    """A class or argument that cannot work, found when it is declared.

    Raised by ``@stateful``/``Stateful`` at class-creation time (no ``load``
    method, a ``guard`` name that is not callable, an unknown policy), never
    while a step is being used.
    """


class DiagramError(StepFSMError):
    """A diagram could not be produced in the requested format (e.g. no Graphviz ``dot``)."""


class StepFSMWarning(UserWarning):
    """The root of every warning stepfsm emits."""


class RepeatedLoadWarning(StepFSMWarning):
    """``load()`` on a loaded step under ``on_repeat="warn"``; the call was a no-op."""


class DuplicateLoadWarning(StepFSMWarning):
    """A second live object with the same class and configuration was loaded."""


class UnloadedUseWarning(StepFSMWarning):
    """A guarded call on a step that is not loaded, under ``on_unloaded_use="warn"``."""


class CleanupWarning(StepFSMWarning):
    """The clean-up (unload) of a ``failed`` step raised; the first error is kept."""
