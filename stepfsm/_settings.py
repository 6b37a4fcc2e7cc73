"""Settings: the policies and their one resolver, class configuration, listeners.

A setting is looked up in four places, nearest first, by :func:`resolve`:

1. the instance (``lifecycle(step).on_repeat = "warn"``),
2. the class (``@stateful(on_repeat="warn")``, inherited by subclasses),
3. an integration's :class:`Layer` (``install(on_repeat="warn")`` for distilabel),
4. the process-wide values that :func:`configure` changes.

``None`` at the first three levels means "not set here". :func:`configure`
returns a handle that restores the previous values, either when used as a
context manager or when :meth:`Configured.restore` is called.

Process-wide listeners are kept here too; :func:`subscribe` and its
unsubscribe function may race from any number of threads.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from types import TracebackType

from ._typing import TYPE_CHECKING, NamedTuple
from .errors import bad_listener

if TYPE_CHECKING:
    from typing import Any, Final, Literal

    from .machine import Lifecycle, TransitionRecord

    # the policy types (tests/unit/test_typing_at_runtime.py checks each against POLICIES)
    OnRepeat = Literal["raise", "warn", "ignore"]
    OnUnloadedUse = Literal["raise", "warn", "ignore"]
    OnLeak = Literal["raise", "warn", "ignore"]
    Listener = Callable[[Lifecycle, TransitionRecord], object]
    #: The settings :func:`resolve` knows, and the type of each.
    Setting = Literal[
        "on_repeat", "on_unloaded_use", "timeout", "on_leak", "drain_timeout", "idle_timeout"
    ]

__all__ = [
    "LISTENERS",
    "ClassConfig",
    "Configured",
    "Layer",
    "LOADED_FLAG",
    "POLICIES",
    "check_policy",
    "check_timeout",
    "class_config",
    "configure",
    "is_stateful",
    "layer_of",
    "patch",
    "resolve",
    "Subscription",
    "subscribe",
    "unpatch",
]

#: The values of each policy (``on_repeat``, ``on_unloaded_use``, ``on_leak``).
POLICIES: Final = frozenset({"raise", "warn", "ignore"})

#: The instance attribute that is ``True`` exactly while a step (whose class
#: has a ``__dict__``) is loaded: the guards' fast path reads it. Stateful
#: classes carry ``False`` under the same name, so a read never reaches a
#: ``__getattr__``. Copies, pickles, ``model_dump()`` and ``==`` never see it.
LOADED_FLAG: Final = "__stepfsm_loaded__"


class _Settings:
    __slots__ = (
        "drain_timeout",
        "history",
        "idle_timeout",
        "on_leak",
        "on_repeat",
        "on_unloaded_use",
        "timeout",
    )

    def __init__(self) -> None:
        self.drain_timeout: float | None = None  # None: the timeout in force
        self.idle_timeout: float | None = None  # None: loaded steps never unload by themselves
        self.on_leak: OnLeak = "warn"
        self.on_repeat: OnRepeat = "raise"
        self.on_unloaded_use: OnUnloadedUse = "raise"
        self.timeout: float | None = None
        self.history: int = 32


_GLOBAL: Final = _Settings()


class Layer:
    """Policies shared by a family of classes (an integration), between class and global.

    ``None`` means "not set here".

    ``home`` names the integration module that owns the layer (its ``LAYER``).
    A step of the family pickled into another process carries the layer's
    policies, and that process calls ``home.arrive(policies)`` before the step
    is rebuilt, so the integration is installed there too (``docs/design.md``,
    section 13). A layer pickles as a reference to ``home.LAYER``.
    """

    __slots__ = (
        "drain_timeout",
        "home",
        "idle_timeout",
        "on_leak",
        "on_repeat",
        "on_unloaded_use",
        "raise_original",
        "timeout",
    )

    def __init__(self, home: str | None = None) -> None:
        self.home = home
        self.drain_timeout: float | None = None
        self.idle_timeout: float | None = None
        self.on_leak: OnLeak | None = None
        self.on_repeat: OnRepeat | None = None
        self.on_unloaded_use: OnUnloadedUse | None = None
        self.timeout: float | None = None
        #: a failing load/unload raises the step's own exception instead of
        #: LoadError/UnloadError (the step is still 'failed'); for migration modes
        self.raise_original = False

    def policies(self) -> dict[str, Any]:
        """The policies set here (``None`` left out): what a pickled step of the family carries."""
        values = {
            "on_repeat": self.on_repeat,
            "on_unloaded_use": self.on_unloaded_use,
            "timeout": self.timeout,
            "on_leak": self.on_leak,
            "drain_timeout": self.drain_timeout,
            "idle_timeout": self.idle_timeout,
        }
        return {key: value for key, value in values.items() if value is not None}

    def __reduce__(self) -> tuple[Any, ...]:
        if self.home is None:
            return (Layer, (), (None, {name: getattr(self, name) for name in self.__slots__}))
        return (layer_of, (self.home,))


def layer_of(home: str) -> Layer:
    """The ``LAYER`` of the integration module ``home`` (how a pickled :class:`Layer` arrives)."""
    import importlib  # lazily: only unpickling needs it

    layer: Layer = importlib.import_module(home).LAYER
    return layer


class ClassConfig(NamedTuple):
    """The stateful settings of a class, inherited by its subclasses.

    A named tuple, not a dataclass: a frozen dataclass of this size costs
    ~1.7 ms of ``import stepfsm`` to generate its methods.
    """

    load: str = "load"
    unload: str = "unload"
    guard: tuple[str, ...] = ()
    on_repeat: OnRepeat | None = None
    on_unloaded_use: OnUnloadedUse | None = None
    timeout: float | None = None
    #: instances have a ``__dict__`` (the loaded flag lives there; copies are patched)
    has_dict: bool = True
    #: instances are pydantic models (private attributes are snapshotted too)
    private: bool = False
    #: the ``__slots__`` names whose values a copy carries
    slots: tuple[str, ...] = ()
    #: run just before the user's load code (integrations use it; see distilabel)
    before_load: Callable[[Any], None] | None = None
    #: an integration's policies, consulted after the class's own and before the global ones
    layer: Layer | None = None
    #: load and unload are ``async def``: operations must be awaited (``aload()``...)
    is_async: bool = False
    #: what an unload that leaves its load's objects alive does (docs/design.md §11)
    on_leak: OnLeak | None = None
    #: seconds an unload waits for running guarded calls (None: the timeout in force)
    drain_timeout: float | None = None
    #: what a load books in a budget: (pool, amount) or a callable (docs/design.md §12)
    cost: Any = None
    #: seconds a loaded step nobody holds stays loaded without use (None: forever)
    idle_timeout: float | None = None


def class_config(cls: type) -> ClassConfig | None:
    """The :class:`ClassConfig` of a stateful class, or ``None``."""
    return getattr(cls, "__stepfsm__", None)


def is_stateful(obj: object) -> bool:
    """Whether ``obj`` (a class or an instance) has a stepfsm lifecycle."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__stepfsm__", None) is not None


_MISSING: Final[Any] = object()


def patch(cls: type, name: str, value: object) -> None:
    """Set ``name`` on ``cls`` and remember what was there, so :func:`unpatch` can undo it."""
    patched = cls.__dict__.get("__stepfsm_patched__")
    if patched is None:
        patched = {}
        type.__setattr__(cls, "__stepfsm_patched__", patched)
    patched.setdefault(name, cls.__dict__.get(name, _MISSING))
    type.__setattr__(cls, name, value)


def unpatch(cls: type) -> None:
    """Undo every :func:`patch` on ``cls`` alone (subclasses are not touched)."""
    patched = cls.__dict__.get("__stepfsm_patched__")
    if not patched:
        return
    for name, previous in patched.items():
        if previous is _MISSING:
            if name in cls.__dict__:
                type.__delattr__(cls, name)
        else:
            type.__setattr__(cls, name, previous)
    type.__delattr__(cls, "__stepfsm_patched__")


def resolve(name: Setting, own: Mapping[str, Any] | None, cfg: ClassConfig) -> Any:
    """The setting ``name`` in force: instance (``own``), class, integration layer, global."""
    if own is not None:
        value = own.get(name)
        if value is not None:
            return value
    value = getattr(cfg, name)
    if value is not None:
        return value
    layer = cfg.layer
    if layer is not None:
        value = getattr(layer, name)
        if value is not None:
            return value
    return getattr(_GLOBAL, name)


def history_size() -> int:
    """How many transitions a lifecycle whose history starts now keeps."""
    return _GLOBAL.history


def raise_original(cfg: ClassConfig) -> bool:
    """Whether an integration asked for the step's own exceptions (a migration mode)."""
    layer = cfg.layer
    return layer is not None and layer.raise_original


def check_policy(value: object, what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless ``value`` is one of the three policy names."""
    if value not in POLICIES:
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
    if value != value or value < 0:  # NaN, or negative
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
            setattr(_GLOBAL, key, value)

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
    on_leak: OnLeak = _UNSET,
    drain_timeout: float | None = _UNSET,
    idle_timeout: float | None = _UNSET,
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
        on_leak: what an unload that leaves alive what its load created does:
            ``"warn"`` (``LeakWarning``), ``"raise"`` (``ResourceLeakError``,
            after the step is unloaded) or ``"ignore"`` (no check).
        drain_timeout: seconds an unload waits for guarded calls still running
            on other threads or tasks before ``StepInUseError`` (the unload
            code does not run); ``None`` means the ``timeout`` in force.
        idle_timeout: seconds a loaded step that nobody holds stays loaded
            without a load or guarded call before stepfsm unloads it; ``None``
            (the default) never does.

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
    if on_leak is not _UNSET:
        check_policy(on_leak, "on_leak")
        changes["on_leak"] = on_leak
    if drain_timeout is not _UNSET:
        changes["drain_timeout"] = check_timeout(drain_timeout, "drain_timeout")
    if idle_timeout is not _UNSET:
        changes["idle_timeout"] = check_timeout(idle_timeout, "idle_timeout")
    if history is not _UNSET:
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a whole number >= 1, not {history!r}")
        changes["history"] = history
    previous = {key: getattr(_GLOBAL, key) for key in changes}
    for key, value in changes.items():
        setattr(_GLOBAL, key, value)
    return Configured(previous)


def snapshot() -> Configured:
    """A handle that puts every process-wide setting back as it is now (tests use it)."""
    return Configured({key: getattr(_GLOBAL, key) for key in _Settings.__slots__})


# ------------------------------------------------------------------ listeners

#: Serialises the read-copy-write of listener tables (here and per lifecycle).
LISTENER_LOCK: Final = threading.Lock()
#: The process-wide listeners, in subscription order; replaced (never mutated), so readers
#: need no lock (read it as ``_settings.LISTENERS``: it is rebound).
LISTENERS: tuple[Listener, ...] = ()


def check_listener(fn: object) -> None:
    """Raise ``TypeError`` unless ``fn`` can be called as ``fn(lifecycle, record)``."""
    if not callable(fn):
        raise bad_listener(fn, f"is a {type(fn).__name__}, not a function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise bad_listener(fn, f"has the signature {signature}") from None


def subscribe(fn: Listener) -> Callable[[], None]:
    """Call ``fn(lifecycle, record)`` after every transition of every step.

    A listener that raises is logged (logger ``stepfsm``) and never breaks the
    step. An operation on the step from inside a listener is an ordinary call
    from outside the transition; where it would have to wait for the
    transition the listener runs in, it raises ``TransitionInProgressError``.

    Returns:
        A function that unsubscribes ``fn`` (calling it again does nothing).

    Raises:
        TypeError: ``fn`` cannot be called as ``fn(lifecycle, record)``.
    """
    global LISTENERS
    check_listener(fn)
    token = Subscription(fn)
    with LISTENER_LOCK:
        LISTENERS = (*LISTENERS, token)

    def unsubscribe() -> None:
        global LISTENERS
        with LISTENER_LOCK:
            LISTENERS = tuple(f for f in LISTENERS if f is not token)

    return unsubscribe


def restore_listeners(saved: tuple[Listener, ...]) -> None:
    """Put back a tuple read from :data:`LISTENERS` (tests use it)."""
    global LISTENERS
    with LISTENER_LOCK:
        LISTENERS = saved


class Subscription:
    """One subscription: the same function subscribed twice is two subscriptions."""

    __slots__ = ("fn",)

    def __init__(self, fn: Listener) -> None:
        self.fn = fn

    def __call__(self, lifecycle: Lifecycle, record: TransitionRecord) -> object:
        return self.fn(lifecycle, record)

    def __repr__(self) -> str:
        return repr(self.fn)
