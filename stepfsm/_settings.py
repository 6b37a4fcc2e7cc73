"""Process-wide settings: the global policies, timeout, history size and listeners.

The nearest setting wins: an instance's own setting, then its class's
(decorator argument), then the values here. :func:`configure` changes them and
returns a handle that restores the previous values, either when used as a
context manager or when :meth:`Configured.restore` is called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:
    from .machine import Lifecycle, TransitionRecord

__all__ = ["Configured", "OnRepeat", "OnUnloadedUse", "configure", "subscribe"]

OnRepeat = Literal["raise", "warn", "ignore"]
OnUnloadedUse = Literal["raise", "warn", "ignore"]
Listener = Callable[["Lifecycle", "TransitionRecord"], object]

ON_REPEAT_CHOICES: Final = frozenset(get_args(OnRepeat))
ON_UNLOADED_USE_CHOICES: Final = frozenset(get_args(OnUnloadedUse))


class _Settings:
    __slots__ = ("history", "on_repeat", "on_unloaded_use", "timeout")

    def __init__(self) -> None:
        self.on_repeat: OnRepeat = "raise"
        self.on_unloaded_use: OnUnloadedUse = "raise"
        self.timeout: float | None = None
        self.history: int = 32


SETTINGS: Final = _Settings()


class Layer:
    """Policies shared by a family of classes (an integration), between class and global.

    ``None`` means "not set here".
    """

    __slots__ = ("on_repeat", "on_unloaded_use", "raise_original")

    def __init__(self) -> None:
        self.on_repeat: OnRepeat | None = None
        self.on_unloaded_use: OnUnloadedUse | None = None
        #: a failing load/unload raises the step's own exception instead of
        #: LoadError/UnloadError (the step is still 'failed'); for migration modes
        self.raise_original = False


#: Process-wide listeners; replaced (never mutated) so readers need no lock.
LISTENERS: list[Listener] = []


def check_policy(value: object, what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless ``value`` is one of the three policy names."""
    if value not in ON_REPEAT_CHOICES:
        raise error(
            f"{what} must be one of 'raise', 'warn', 'ignore', not {value!r}; "
            f"for example {what}='warn'."
        )


def check_timeout(value: object, what: str = "timeout") -> float | None:
    """Return ``value`` as a float (or ``None``), or raise ``ValueError``/``TypeError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{what} must be a number of seconds or None (wait as long as it takes), "
            f"not {type(value).__name__}"
        )
    if math.isnan(value) or value < 0:
        raise ValueError(
            f"{what} must be >= 0 seconds (or None to wait as long as it takes), not {value!r}"
        )
    return float(value)


class Configured:
    """The handle :func:`configure` returns; restores the previous settings.

    Use it as a context manager to scope a change::

        with stepfsm.configure(on_repeat="warn"):
            llm.load()
            llm.load()  # RepeatedLoadWarning, no second load
    """

    def __init__(self, previous: dict[str, Any]) -> None:
        self._previous = previous

    def restore(self) -> None:
        """Put back the settings that were in force before :func:`configure`."""
        for key, value in self._previous.items():
            setattr(SETTINGS, key, value)

    def __enter__(self) -> Configured:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


_UNSET: Any = object()


def configure(
    *,
    on_repeat: OnRepeat = _UNSET,
    on_unloaded_use: OnUnloadedUse = _UNSET,
    timeout: float | None = _UNSET,
    history: int = _UNSET,
) -> Configured:
    """Change the process-wide defaults; class and instance settings still win.

    Args:
        on_repeat: what ``load()`` on a loaded step does: ``"raise"``
            (``AlreadyLoadedError``), ``"warn"`` or ``"ignore"``.
        on_unloaded_use: what a guarded call on a step that is not loaded
            does: ``"raise"`` (``NotLoadedError``), ``"warn"`` or ``"ignore"``.
        timeout: seconds an operation waits for another thread's load/unload
            before ``TransitionInProgressError``; ``None`` waits as long as it takes.
        history: how many transitions each lifecycle keeps (applies to
            lifecycles whose history starts after this call).

    Returns:
        A :class:`Configured` handle; ``with configure(...):`` restores on exit.

    Raises:
        ValueError: an unknown policy, a negative timeout or a history below 1.
    """
    changes: dict[str, Any] = {}
    if on_repeat is not _UNSET:
        check_policy(on_repeat, "on_repeat")
        changes["on_repeat"] = on_repeat
    if on_unloaded_use is not _UNSET:
        check_policy(on_unloaded_use, "on_unloaded_use")
        changes["on_unloaded_use"] = on_unloaded_use
    if timeout is not _UNSET:
        changes["timeout"] = check_timeout(timeout)
    if history is not _UNSET:
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a whole number >= 1, not {history!r}")
        changes["history"] = history
    previous = {key: getattr(SETTINGS, key) for key in changes}
    for key, value in changes.items():
        setattr(SETTINGS, key, value)
    return Configured(previous)


def subscribe(fn: Listener) -> Callable[[], None]:
    """Call ``fn(lifecycle, record)`` after every transition of every step.

    A listener that raises is logged (logger ``stepfsm``) and never breaks the
    step. Returns a function that unsubscribes ``fn``.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    global LISTENERS
    if not callable(fn):
        raise TypeError(f"subscribe() needs a callable, not {type(fn).__name__}")
    LISTENERS = [*LISTENERS, fn]

    def unsubscribe() -> None:
        global LISTENERS
        LISTENERS = [f for f in LISTENERS if f is not fn]

    return unsubscribe
