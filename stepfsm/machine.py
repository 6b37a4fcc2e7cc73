"""The running lifecycle: a ``transitions`` machine, a lock, holders and history.

One :class:`transitions.Machine` is built from :data:`stepfsm.states.TRANSITIONS`
and shared by every lifecycle. A :class:`Lifecycle` is the machine's model
(never the user's object, which may be a pydantic model); its events are fired
with ``Event.trigger(lifecycle)`` so lifecycles are never registered in
``Machine.models`` (that list holds strong references) and carry no
per-model trigger attributes.

Locking: each lifecycle has one ``threading.Lock``. State is only changed
with that lock held, and the user's load/unload code always runs with it
released. Other threads that find a transient state wait on a
``threading.Condition`` (created lazily, on the first wait), then look at the
settled state again. The thread running a load or unload is recorded, so its
own nested calls pass through (DESIGN.md §2 and §4) instead of deadlocking.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from transitions import Machine, MachineError

from . import _settings, registry
from ._settings import OnRepeat, OnUnloadedUse, check_policy, check_timeout
from .errors import (
    AlreadyLoadedError,
    CleanupWarning,
    DuplicateLoadWarning,
    LoadError,
    NotLoadedError,
    RepeatedLoadWarning,
    StepFailedError,
    StepFSMWarning,
    StepInUseError,
    StepStateError,
    TransitionInProgressError,
    UnloadedUseWarning,
    UnloadError,
    describe,
)
from .states import INITIAL, TRANSITIONS, State

if TYPE_CHECKING:
    import datetime as _dt

    from .wrap import ClassConfig

__all__ = ["Lifecycle", "TransitionRecord", "lifecycle"]

log: Final = logging.getLogger("stepfsm")
log.addHandler(logging.NullHandler())  # a library never prints by itself


class _QuietEngine(logging.Filter):
    """Drop ``transitions``' own records about stepfsm's machine.

    ``transitions`` logs every state entry/exit at INFO; stepfsm logs its
    transitions itself (logger ``stepfsm``), so those records are noise (and
    distilabel turns INFO on). Records of the user's own machines pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and args[0] == "stepfsm: ")


logging.getLogger("transitions.core").addFilter(_QuietEngine())

# The engine works on plain string states (the State values): transitions' enum
# support costs ~7% per trigger. The machine's attribute is ``Lifecycle._fsm``;
# ``Lifecycle._state`` mirrors it as the ``State`` member after every trigger.
_MACHINE: Final = Machine(
    model=None,
    states=[s.value for s in State],
    transitions=[
        {"trigger": t.trigger, "source": [s.value for s in t.sources], "dest": t.dest.value}
        for t in TRANSITIONS
    ],
    initial=INITIAL.value,
    auto_transitions=False,
    model_attribute="_fsm",
    name="stepfsm",
)
_STATES: Final[dict[str, State]] = {s.value: s for s in State}
_EVENTS: Final[dict[str, Any]] = {t.trigger: _MACHINE.events[t.trigger] for t in TRANSITIONS}

_LOADED: Final = State.LOADED
_LOADING: Final = State.LOADING
_UNLOADING: Final = State.UNLOADING
_UNLOADED: Final = State.UNLOADED
_FAILED: Final = State.FAILED

_get_ident: Final = threading.get_ident
_wall: Final = time.time


class _Frames(threading.local):
    """Per thread: the lifecycles whose load/unload this thread is running."""

    def __init__(self) -> None:
        self.stack: list[tuple[Lifecycle, str]] = []


_frames = _Frames()


class TransitionRecord(NamedTuple):
    """One transition in :attr:`Lifecycle.history` and in listener calls.

    ``started`` is the wall-clock time (``time.time()``) at which the
    operation began: for ``begin_*`` the transition itself, for ``finish_*``
    and ``fail`` the matching ``begin_*``. ``duration`` is the seconds since
    ``started`` (``0.0`` for ``begin_*``); for ``finish_load`` it is the load time.
    ``error`` (on ``fail``) is a copy of the exception without its traceback,
    so the history never keeps a failed step's frames (and the step) alive;
    while the step is ``failed``, ``lifecycle.error`` is the original.
    """

    trigger: str
    source: State
    dest: State
    started: float
    duration: float
    thread: int
    error: BaseException | None


_tuple_new: Final[Any] = tuple.__new__  # builds a TransitionRecord without its Python __new__


class _Hold:
    """One holder of a lifecycle: ``key`` identifies it (``None`` = anonymous)."""

    __slots__ = ("key", "label")

    def __init__(self, key: object, label: str) -> None:
        self.key = key
        self.label = label


class _ParentKey:
    """Identifies the holds one load of a parent step takes on its children.

    A fresh key per load means a late release of an old load's holds can never
    drop a hold that a newer load of the same parent took.
    """

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "a parent step"  # set to the parent's name when it takes a hold

    def __repr__(self) -> str:
        return self.name


class _ContextHold:
    """The holder used by ``with loaded(step):``."""

    __slots__ = ("thread",)

    def __init__(self) -> None:
        self.thread = threading.current_thread().name

    def __repr__(self) -> str:
        return f"with loaded() in thread {self.thread}"


_MISSING: Final[Any] = object()


def display_name(obj: object) -> str:
    """``"TextGeneration 'gen_0'"`` when ``obj`` has a string ``name``, else ``"Cls at 0x…"``."""
    cls = type(obj).__name__
    try:
        name = obj.__dict__.get("name") if hasattr(obj, "__dict__") else getattr(obj, "name", None)
    except Exception:  # a broken __dict__/property must not break an error message
        name = None
    if isinstance(name, str) and name:
        return f"{cls} {name!r}"
    return f"{cls} at {id(obj):#x}"


_NO_CHANGE: Final[tuple[dict[str, Any], dict[str, Any]]] = ({}, {})


class Lifecycle:
    """The lifecycle of one stateful object: its state, lock, holders and history.

    Get it with :func:`stepfsm.lifecycle`. Its operations and the object's own
    wrapped ``load()``/``unload()`` are the same thing. Every operation is
    thread-safe; the outcome of each in each state is DESIGN.md §2.
    """

    __slots__ = (
        "__weakref__",
        "_acquired_load",
        "_began",
        "_cfg",
        "_children",
        "_cleanup_error",
        "_cond",
        "_diff",
        "_error",
        "_evicted",
        "_fsm",
        "_history",
        "_hold_key",
        "_holds",
        "_listeners",
        "_load_s",
        "_load_seq",
        "_lock",
        "_on_repeat",
        "_on_unloaded_use",
        "_outbox",
        "_owner",
        "_pre",
        "_since",
        "_state",
        "_thread",
        "_timeout",
    )

    def __init__(self, owner: object, cfg: ClassConfig) -> None:
        ref = registry.OwnerRef(owner, registry.forget)
        ref.key = id(owner)
        self._owner: registry.OwnerRef = ref
        self._cfg = cfg
        self._state: State = INITIAL
        self._fsm: str = INITIAL.value
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None
        self._thread: int | None = None
        self._since: float | None = None
        self._began = 0.0
        self._load_s: float | None = None
        self._load_seq = 0
        self._error: BaseException | None = None
        self._cleanup_error: BaseException | None = None
        self._holds: list[_Hold] = []
        self._evicted: dict[int, int] | None = None
        self._acquired_load = False
        self._children: list[tuple[Lifecycle, object]] | None = None
        self._hold_key: object = None  # the key of the holds this step's current load takes
        self._history: deque[TransitionRecord] | None = None
        self._listeners: tuple[_settings.Listener, ...] = ()
        self._outbox: list[TransitionRecord] | None = None
        self._diff: tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]] | None
        self._diff = None
        self._pre: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None
        self._on_repeat: OnRepeat | None = None
        self._on_unloaded_use: OnUnloadedUse | None = None
        self._timeout: float | None = None

    # ------------------------------------------------------------------ facts

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def step(self) -> object:
        """The object this lifecycle belongs to (``None`` once it has been garbage-collected)."""
        return self._owner()

    @property
    def name(self) -> str:
        """The step's display name, e.g. ``"TextGeneration 'gen_0'"``."""
        owner = self._owner()
        return display_name(owner) if owner is not None else "<dead step>"

    @property
    def since(self) -> _dt.datetime | None:
        """When the current state was entered (``None`` if it never changed)."""
        if self._since is None:
            return None
        import datetime  # lazily: keeps `import stepfsm` light

        return datetime.datetime.fromtimestamp(self._since)

    @property
    def error(self) -> BaseException | None:
        """The exception that made the step ``failed`` (``None`` unless it is ``failed``)."""
        return self._error

    @property
    def cleanup_error(self) -> BaseException | None:
        """The exception raised by the last failed clean-up of a ``failed`` step."""
        return self._cleanup_error

    @property
    def holders(self) -> tuple[str, ...]:
        """The display names of the current holders (``acquire()``, ``loaded()``, parents)."""
        return tuple(h.label for h in self._holds)

    @property
    def history(self) -> tuple[TransitionRecord, ...]:
        """The last transitions, oldest first (``configure(history=N)`` sets how many)."""
        return tuple(self._history) if self._history is not None else ()

    @property
    def last_load_seconds(self) -> float | None:
        """How long the last successful load took, in seconds."""
        return self._load_s

    @property
    def on_repeat(self) -> OnRepeat:
        """What ``load()`` on a loaded step does; set it to override class and global settings.

        Setting ``None`` goes back to the class/global setting.
        """
        cfg = self._cfg
        return (
            self._on_repeat
            or cfg.on_repeat
            or (cfg.layer and cfg.layer.on_repeat)
            or _settings.SETTINGS.on_repeat
        )

    @on_repeat.setter
    def on_repeat(self, value: OnRepeat | None) -> None:
        if value is not None:
            check_policy(value, "on_repeat")
        self._on_repeat = value

    @property
    def on_unloaded_use(self) -> OnUnloadedUse:
        """What a guarded call on a step that is not loaded does (instance setting wins)."""
        cfg = self._cfg
        return (
            self._on_unloaded_use
            or cfg.on_unloaded_use
            or (cfg.layer and cfg.layer.on_unloaded_use)
            or _settings.SETTINGS.on_unloaded_use
        )

    @on_unloaded_use.setter
    def on_unloaded_use(self, value: OnUnloadedUse | None) -> None:
        if value is not None:
            check_policy(value, "on_unloaded_use")
        self._on_unloaded_use = value

    @property
    def timeout(self) -> float | None:
        """Seconds to wait for another thread's load/unload; ``None`` = as long as it takes.

        Setting ``None`` goes back to the class/global setting; use
        ``math.inf`` to wait forever regardless of them.
        """
        if self._timeout is not None:
            return self._timeout
        if self._cfg.timeout is not None:
            return self._cfg.timeout
        return _settings.SETTINGS.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = check_timeout(value)

    def __repr__(self) -> str:
        since = self.since
        when = f" since {since:%H:%M:%S}" if since else ""
        return f"<Lifecycle of {self.name}: {self._state.value}{when}>"

    def _repr_mimebundle_(
        self, include: object = None, exclude: object = None
    ) -> dict[str, str]:  # pragma: no cover - exercised through the diagrams feature
        from .diagrams import mimebundle

        return mimebundle(self)

    # ------------------------------------------------------------ operations

    def load(self) -> None:
        """Load the step (the same as calling its own wrapped ``load()``).

        Raises:
            AlreadyLoadedError: the step is loaded and ``on_repeat`` is ``"raise"``.
            LoadError: the step's load (or the clean-up before it) raised.
            TransitionInProgressError: called from inside the step's own unload,
                or a wait for another thread exceeded ``timeout``.
        """
        self.call_load(self._user_fn(self._cfg.load), (), {})

    def unload(self, force: bool = False) -> None:
        """Unload the step; a no-op when it is ``unloaded``.

        Args:
            force: evict the holders instead of raising ``StepInUseError``.

        Raises:
            StepInUseError: other holders remain and ``force`` is false.
            UnloadError: the step's own unload raised (from ``loaded``).
            TransitionInProgressError: called from inside the step's own load,
                or a wait exceeded ``timeout``.
        """
        self.call_unload(self._user_fn(self._cfg.unload), (), {}, force)

    def ensure_loaded(self) -> bool:
        """Load the step unless it is loaded already.

        Returns:
            ``True`` if this call ran a load, ``False`` if the step was loaded.

        Raises:
            LoadError: the load (or the clean-up before it) raised.
            TransitionInProgressError: called from inside the step's own
                load/unload, or a wait exceeded ``timeout``.
        """
        if _frames.stack:
            parent = self._parent()
            if parent is not None:
                return self._acquire(parent._hold_key, parent.name, parent)
        if self._state is _LOADED:
            return False
        try:
            with self._lock:
                ran = self._ensure("ensure_loaded")
        finally:
            if self._outbox:
                self._deliver()
        return ran

    def reload(self, force: bool = False) -> None:
        """Unload (if loaded) and load again; from ``failed``, clean up then load.

        Args:
            force: reload even while other holders remain (they keep their hold).

        Raises:
            StepInUseError: other holders remain and ``force`` is false.
            LoadError: the load raised.
            UnloadError: the unload before the load raised.
            TransitionInProgressError: see :meth:`load`.
        """
        try:
            with self._lock:
                state = self._state
                if state is _LOADING or state is _UNLOADING:
                    state = self._settle("reload")
                acquired = self._acquired_load  # holders keep their hold across a reload
                if self._holds and not force and (state is _LOADED or state is _FAILED):
                    raise self._in_use("reload")
                if state is _LOADED:
                    self._unload_now("reload", force=False, keep_holds=True)
                self._ensure("reload")
                self._acquired_load = acquired and bool(self._holds)
        finally:
            if self._outbox:
                self._deliver()

    def acquire(self, holder: object = None) -> None:
        """Take a hold on the step, loading it first if needed.

        The step stays loaded while any hold remains; ``release()`` unloads it
        when the last hold goes, but only if an ``acquire()`` did the load.

        Args:
            holder: who holds it (shown in ``holders`` and in ``StepInUseError``);
                ``release()`` must name the same holder. ``None`` is anonymous.

        Raises:
            LoadError: the load raised.
            TransitionInProgressError: see :meth:`ensure_loaded`.
        """
        self._acquire(holder, self._label(holder))

    def release(self, holder: object = None) -> None:
        """Drop a hold taken by :meth:`acquire` (the same ``holder``).

        Unloads the step when the last hold goes and an ``acquire()`` did the
        load. A release still owed by a holder that a forced unload evicted
        is a no-op.

        Raises:
            StepStateError: no hold by ``holder`` exists.
            UnloadError: the unload after the last release raised.
        """
        try:
            with self._lock:
                state = self._state
                if (state is _LOADING or state is _UNLOADING) and self._thread != _get_ident():
                    self._settle("release")  # decide on the settled state, as every operation does
                for index in range(len(self._holds) - 1, -1, -1):
                    if self._holds[index].key is holder:
                        del self._holds[index]
                        break
                else:
                    owed = self._evicted.get(id(holder), 0) if self._evicted else 0
                    if owed:
                        assert self._evicted is not None
                        self._evicted[id(holder)] = owed - 1
                        return
                    raise StepStateError(
                        f"{self.name} has no hold by {self._label(holder)} to release "
                        f"(holders: {', '.join(self.holders) or 'none'}). Call release() once "
                        "per acquire(), with the same holder.",
                        step=self.name,
                        state=self._state,
                        operation="release",
                    )
                if not self._holds and self._acquired_load and self._state is _LOADED:
                    self._unload_now("release", force=False, keep_holds=False)
        finally:
            if self._outbox:
                self._deliver()

    @contextlib.contextmanager
    def loaded(self) -> Iterator[Any]:
        """Hold the step loaded for a ``with`` block; yields the step.

        A step the block loaded is unloaded at the end (when no other holder
        remains); a step that was already loaded stays loaded.
        """
        token = _ContextHold()
        self.acquire(token)
        try:
            yield self._owner()
        finally:
            self.release(token)

    def require_loaded(self, operation: str = "require_loaded") -> None:
        """Return if the step may be used now; wait out a transition in another thread.

        Inside the step's own load or unload (same thread) it always returns.

        Raises:
            NotLoadedError: the step is ``unloaded`` (policy ``on_unloaded_use="raise"``).
            StepFailedError: the step is ``failed`` (same policy).
            TransitionInProgressError: a wait exceeded ``timeout``.
        """
        if self._state is _LOADED or self._thread == _get_ident():
            return
        # Read again under the lock: without it, a compound operation such as
        # reload() can be seen between its unload and its load ('unloaded').
        with self._lock:
            state: State = self._state
            if state is _LOADING or state is _UNLOADING:
                state = self._settle(operation)
        if state is _LOADED:
            return
        policy = self.on_unloaded_use
        if policy == "ignore":
            return
        if state is _FAILED:
            error: NotLoadedError = StepFailedError(self.name, operation, self._error, self._since)
        else:
            error = NotLoadedError(self.name, state, operation, self._since)
        if policy == "raise":
            raise error
        _warn(
            UnloadedUseWarning(
                f"{self.name} is not loaded (state '{state.value}'), but {operation}() runs "
                "anyway because on_unloaded_use='warn'. Call load() or ensure_loaded() first; "
                f"under the default policy this raises {type(error).__name__}."
                + (f" The step failed with {describe(self._error)}." if self._error else "")
            )
        )

    def subscribe(self, fn: _settings.Listener) -> Callable[[], None]:
        """Call ``fn(lifecycle, record)`` after each of this step's transitions.

        Returns a function that unsubscribes ``fn``. A listener that raises is
        logged and never breaks the step. The listener lives as long as the
        step: one that refers to the step keeps it alive (use
        ``lifecycle.step`` inside it, or unsubscribe).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"subscribe() needs a callable, not {type(fn).__name__}")
        self._listeners = (*self._listeners, fn)

        def unsubscribe() -> None:
            self._listeners = tuple(f for f in self._listeners if f is not fn)

        return unsubscribe

    # ------------------------------------------------ entry points from wrap

    def call_load(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        """Run a call of the object's wrapped load method ``fn`` (DESIGN.md §2, §4)."""
        if self._thread == _get_ident():
            if self._state is _LOADING:  # a super().load() inside our own load
                return fn(self._owner(), *args, **kwargs)
            raise TransitionInProgressError(self.name, self._state, "load", None)
        if _frames.stack:
            parent = self._parent()
            if parent is not None:
                self._acquire(parent._hold_key, parent.name, parent)
                return None
        try:
            with self._lock:
                while True:
                    state = self._state
                    if state is _LOADING or state is _UNLOADING:
                        state = self._settle("load")
                    if state is not _LOADED:
                        self._ensure("load", fn, args, kwargs)
                        break
                    policy = self.on_repeat
                    if policy == "raise":
                        raise AlreadyLoadedError(self.name, self._since, self._load_s)
                    if policy == "warn":
                        _warn(
                            RepeatedLoadWarning(
                                f"{self.name} is already loaded; load() did nothing. Use "
                                "ensure_loaded() to say that on purpose, or reload() to load again."
                            )
                        )
                    break
        finally:
            if self._outbox:
                self._deliver()
        return None

    def call_unload(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, force: bool = False
    ) -> Any:
        """Run a call of the object's wrapped unload method ``fn`` (DESIGN.md §2, §4)."""
        if self._thread == _get_ident():
            if self._state is _UNLOADING:  # a super().unload() inside our own unload
                return fn(self._owner(), *args, **kwargs)
            raise TransitionInProgressError(self.name, self._state, "unload", None)
        if _frames.stack:
            key = _frames.stack[-1][0]._hold_key
            if key is not None:
                with self._lock:
                    owned = any(h.key is key for h in self._holds)
                if owned:
                    self.release(key)  # the parent's unload lets go of what its load took
                    return None
        try:
            with self._lock:
                state = self._state
                if state is _LOADING or state is _UNLOADING:
                    state = self._settle("unload")
                if state is _LOADED:
                    if self._holds and not force:
                        raise self._in_use("unload")
                    self._unload_now("unload", force, keep_holds=False, fn=fn, args=args, kw=kwargs)
                elif state is _FAILED:
                    if self._holds and not force:
                        raise self._in_use("unload")
                    if force:
                        self._evict()
                    self._cleanup("unload", fn, args, kwargs)
        finally:
            if self._outbox:
                self._deliver()
        return None

    # -------------------------------------------------------------- internals

    def _parent(self) -> Lifecycle | None:
        """The lifecycle whose load this thread is running, if it is not this one."""
        parent, op = _frames.stack[-1]
        if op == "load" and parent is not self:
            return parent
        return None

    def _acquire(self, holder: object, label: str, parent: Lifecycle | None = None) -> bool:
        if self._thread == _get_ident():
            raise TransitionInProgressError(self.name, self._state, "acquire", None)
        try:
            with self._lock:
                ran = self._ensure("acquire")
                if ran:
                    self._acquired_load = True
                self._holds.append(_Hold(holder, label))
        finally:
            if self._outbox:
                self._deliver()
        if parent is not None:  # released when the parent's unload completes or its load fails
            if isinstance(holder, _ParentKey):
                holder.name = label
            with parent._lock:
                if parent._children is None:
                    parent._children = []
                parent._children.append((self, holder))
        return ran

    def _label(self, holder: object) -> str:
        if holder is None:
            return f"acquire() in thread {threading.current_thread().name}"
        if isinstance(holder, Lifecycle):
            return holder.name
        if isinstance(holder, (_ContextHold, _ParentKey)):
            return repr(holder)
        from .wrap import is_stateful

        if is_stateful(holder):
            return display_name(holder)
        text = repr(holder)
        return text if len(text) <= 60 else text[:57] + "..."

    def _settle(self, operation: str) -> State:
        """With the lock held: wait until no other thread is mid-transition.

        The timeout counts from the first wait.
        """
        state = self._state
        deadline: float | None = None
        while state is _LOADING or state is _UNLOADING:
            if self._thread == _get_ident():
                raise TransitionInProgressError(self.name, state, operation, None)
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            timeout = self.timeout
            if timeout is None or timeout == math.inf:
                self._cond.wait()
            else:
                if deadline is None:
                    deadline = time.monotonic() + timeout
                remaining = deadline - time.monotonic()
                timed_out = remaining <= 0 or not self._cond.wait(remaining)
                if timed_out and self._state is state:
                    raise TransitionInProgressError(self.name, state, operation, timeout)
            state = self._state
        return state

    def _ensure(
        self,
        operation: str,
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Any = None,
    ) -> bool:
        """With the lock held: make the step ``loaded``; return whether a load ran."""
        while True:
            state = self._state
            if state is _LOADING or state is _UNLOADING:
                state = self._settle(operation)
            if state is _LOADED:
                return False
            if state is _FAILED:
                self._cleanup_before_load()
                continue
            self._run_load(fn or self._user_fn(self._cfg.load), args, kwargs or {})
            return True

    def _user_fn(self, name: str) -> Callable[..., Any]:
        """The user's own (unwrapped) method ``name`` of the most-derived class."""
        fn = getattr(type(self._owner()), name)
        return getattr(fn, "__stepfsm_original__", fn)  # type: ignore[no-any-return]

    def _run_load(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> None:
        owner: Any = self._owner()
        cfg = self._cfg
        pre = _attributes(owner, cfg) if cfg.has_dict or cfg.slots else None
        pre_private = dict(owner.__pydantic_private__ or ()) if cfg.private else None
        if registry.LOADED:
            # Before begin_load: a warning filtered to an error leaves the state alone.
            _check_duplicate(self, owner)
        self._hold_key = _ParentKey()
        self._pre = (pre, pre_private)  # copies made while the load runs use these
        self._fire("begin_load")
        error = self._run_user(owner, "load", fn, args, kwargs)
        # What the load set, even if it then raised: a failed step may hold part of
        # the resource, and its copies must not carry it (DESIGN.md §5).
        before, after = _changes(pre, _attributes(owner, cfg)) if pre is not None else _NO_CHANGE
        if pre_private is not None:
            private = _changes(pre_private, owner.__pydantic_private__ or {})
        else:
            private = _NO_CHANGE
        self._diff = (before, after, *private) if before or private[0] else None
        self._pre = None
        if error is None:
            self._load_s = self._history[-1].duration if self._history else None
            self._load_seq = next(registry.LOAD_ORDER)
            self._error = self._cleanup_error = None
            if log.isEnabledFor(logging.INFO):
                log.info("loaded %s in %.3f s", self.name, self._load_s or 0.0)
            return
        if self._children:
            self._release_children()
        if not isinstance(error, Exception) or self._raise_original():
            raise error
        raise LoadError(self.name, "load", error) from error

    def _unload_now(
        self,
        operation: str,
        force: bool,
        keep_holds: bool,
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kw: Any = None,
    ) -> None:
        """With the lock held and the state ``loaded``: run the unload."""
        if force and not keep_holds:
            self._evict()
        owner = self._owner()
        self._fire("begin_unload")
        error = self._run_user(
            owner, "unload", fn or self._user_fn(self._cfg.unload), args, kw or {}
        )
        if error is None:
            self._after_unload()
            return
        if not isinstance(error, Exception) or self._raise_original():
            raise error
        raise UnloadError(self.name, operation, error) from error

    def _cleanup(
        self, operation: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> BaseException | None:
        """With the lock held and the state ``failed``: run the unload as a clean-up.

        Returns the clean-up's exception (the step then stays ``failed``).
        """
        self._fire("begin_unload")
        first = self._error
        error = self._run_user(self._owner(), "unload", fn, args, kwargs, cleanup=True)
        if error is None:
            self._after_unload()
            return None
        self._error = first
        self._cleanup_error = error
        if not isinstance(error, Exception):
            raise error
        if operation == "unload":
            with contextlib.suppress(CleanupWarning):  # filtered to an error: still logged,
                # but a clean-up unload never raises (DESIGN.md §2); distilabel's worker
                # calls unload() after a failed load and hangs if it raises.
                _warn(
                    CleanupWarning(
                        f"clean-up (unload) of failed {self.name} raised "
                        f"{type(error).__name__}: {error}; the step stays 'failed' and keeps its "
                        "first error. See lifecycle(step).cleanup_error."
                    )
                )
        return error

    def _raise_original(self) -> bool:
        """Whether an integration asked for the step's own exceptions (a migration mode)."""
        layer = self._cfg.layer
        return layer is not None and layer.raise_original

    def _cleanup_before_load(self) -> None:
        error = self._cleanup("load", self._user_fn(self._cfg.unload), (), {})
        if error is not None:
            if self._raise_original():
                raise error
            raise LoadError(
                self.name,
                "load",
                error,
                detail=" in the clean-up (unload) that runs before a retried load, so the "
                "load did not run",
            ) from error

    def _after_unload(self) -> None:
        self._acquired_load = False
        self._diff = None
        self._error = self._cleanup_error = None
        if self._children:
            self._release_children()
        if log.isEnabledFor(logging.INFO):
            took = self._history[-1].duration if self._history else 0.0
            log.info("unloaded %s in %.3f s", self.name, took)

    def _release_children(self) -> None:
        children, self._children = self._children, None
        if not children:
            return
        interrupted: BaseException | None = None
        self._lock.release()
        try:
            for child, key in reversed(children):
                try:
                    child.release(key)
                except StepStateError:  # a forced unload of the child evicted us already
                    pass
                except Exception:
                    log.exception("releasing %s held by %s failed", child.name, self.name)
                except BaseException as error:  # release the others, then re-raise it
                    interrupted = interrupted or error
        finally:
            self._lock.acquire()
        if interrupted is not None:
            raise interrupted

    def _run_user(
        self,
        owner: Any,
        op: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        cleanup: bool = False,
    ) -> BaseException | None:
        """Run the user's load/unload with the lock released; settle the state after."""
        error: BaseException | None = None
        stack = _frames.stack
        self._lock.release()
        try:
            if self._outbox:
                self._deliver()
            stack.append((self, op))
            try:
                if op == "load" and self._cfg.before_load is not None:
                    self._cfg.before_load(owner)
                fn(owner, *args, **kwargs)
            finally:
                stack.pop()
        except BaseException as raised:
            error = raised
        finally:
            self._lock.acquire()
        if error is None:
            self._fire("finish_load" if op == "load" else "finish_unload")
        else:
            self._fire("fail", error)
            if not cleanup:
                self._error = error
            log.warning(
                "%s of %s failed with %s; the step is now 'failed'",
                "clean-up" if cleanup else op,
                self.name,
                describe(error),
            )
        if self._cond is not None:
            self._cond.notify_all()
        return error

    def _fire(self, trigger: str, error: BaseException | None = None) -> None:
        """With the lock held: fire ``trigger`` on the shared machine and record it."""
        source = self._state
        try:
            _EVENTS[trigger].trigger(self)
        except MachineError as err:
            raise StepStateError(
                f"{self.name} cannot {trigger} from state '{source.value}' (an internal "
                "stepfsm error; please report it).",
                step=self.name,
                state=source,
                operation=trigger,
            ) from err
        self._state = state = _STATES[self._fsm]
        if source is _LOADED:
            registry.LOADED.pop(self._owner.key, None)
        elif state is _LOADED:
            registry.LOADED[self._owner.key] = self
        wall = _wall()
        if trigger[0] == "b":  # begin_load / begin_unload
            self._thread = thread = _get_ident()
            self._began = wall
            record = _tuple_new(TransitionRecord, (trigger, source, state, wall, 0.0, thread, None))
        else:
            began = self._began
            record = _tuple_new(
                TransitionRecord,
                (
                    trigger,
                    source,
                    state,
                    began,
                    max(0.0, wall - began),
                    _get_ident(),
                    None if error is None else _detached(error),
                ),
            )
            self._thread = None
        self._since = wall
        history = self._history
        if history is None:
            history = self._history = deque(maxlen=_settings.SETTINGS.history)
        history.append(record)
        if self._listeners or _settings.LISTENERS:
            if self._outbox is None:
                self._outbox = []
            self._outbox.append(record)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s %s -> %s", self.name, trigger, source.value, state.value)

    def _deliver(self) -> None:
        """Without the lock: give pending transition records to the listeners."""
        if not self._outbox:
            return
        with self._lock:
            records, self._outbox = self._outbox, None
        for record in records or ():
            for fn in (*self._listeners, *_settings.LISTENERS):
                try:
                    fn(self, record)
                except Exception:
                    log.exception("stepfsm listener %r raised; ignored", fn)

    def _evict(self) -> None:
        if not self._holds:
            return
        if self._evicted is None:
            self._evicted = {}
        for hold in self._holds:
            self._evicted[id(hold.key)] = self._evicted.get(id(hold.key), 0) + 1
        self._holds.clear()

    def _in_use(self, operation: str) -> StepInUseError:
        return StepInUseError(self.name, self._state, operation, self.holders)

    def _reset_after_fork(self) -> None:
        """In a forked child: start over as ``unloaded`` (attributes are left alone)."""
        self._lock = threading.Lock()
        self._cond = None
        self._thread = None
        self._state = INITIAL
        self._fsm = INITIAL.value
        self._holds = []
        self._evicted = None
        self._acquired_load = False
        self._children = None
        self._diff = None
        self._pre = None
        self._outbox = None
        self._error = self._cleanup_error = None
        self._history = None
        self._since = None

    def preload_state(self, state: dict[str, Any], private: bool = False) -> dict[str, Any]:
        """Return ``state`` with the attributes the step's load set put back to pre-load values.

        ``state`` is an instance ``__dict__`` (or pydantic private dict when
        ``private``) as it would go into a copy or pickle. An attribute the load
        added is left out; one the user changed after the load is kept.
        """
        diff = self._diff
        pre = self._pre
        if pre is not None and self._state is _LOADING:
            snapshot = pre[1] if private else pre[0]
            if snapshot is None:
                return state
            before, after = _changes(snapshot, state)
        elif diff is None or self._state is _UNLOADED:
            return state
        else:
            before, after = (diff[2], diff[3]) if private else (diff[0], diff[1])
        if not before:
            return state
        result = dict(state)
        for key, loaded_value in after.items():
            if result.get(key, _MISSING) is not loaded_value:
                continue  # changed after the load: the user's value wins
            old = before[key]
            if old is _MISSING:
                result.pop(key, None)
            else:
                result[key] = old
        return result


def _attributes(owner: Any, cfg: ClassConfig) -> dict[str, Any]:
    """The instance's attributes: its ``__dict__`` plus its set ``__slots__``."""
    values = dict(owner.__dict__) if cfg.has_dict else {}
    for name in cfg.slots:
        value = getattr(owner, name, _MISSING)
        if value is not _MISSING:
            values[name] = value
    return values


def _detached(error: BaseException) -> BaseException:
    """A copy of ``error`` without its traceback, for the history.

    The original's traceback frames reference the step (its load's ``self``);
    kept in the history, they would keep every step that ever failed alive.
    ``lifecycle.error`` keeps the original while the step is ``failed``.
    """
    import copy

    try:
        clone = copy.copy(error)
    except Exception:  # an exception type that cannot be copied: keep its text
        clone = RuntimeError(f"{type(error).__name__}: {error}")
    clone.__traceback__ = None
    clone.__cause__ = clone.__context__ = None
    return clone


def _changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys of ``new`` whose value is not (identically) the one in ``old``."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key, value in new.items():
        previous = old.get(key, _MISSING)
        if previous is not value:
            before[key] = previous
            after[key] = value
    return before, after


def _same_configuration(a: object, b: object) -> bool:
    try:
        dump = getattr(a, "model_dump", None)
        if dump is not None and callable(dump) and hasattr(type(a), "model_fields"):
            return bool(dump() == b.model_dump())  # type: ignore[attr-defined]
        if type(a).__eq__ is object.__eq__:
            return False  # identity-only equality never matches
        return bool(a == b)
    except Exception:
        return False


def _check_duplicate(lc: Lifecycle, owner: object) -> None:
    if type(owner).__eq__ is object.__eq__ and not lc._cfg.private:
        return  # identity equality never matches: skip the scan of loaded steps
    for other in list(registry.LOADED.values()):
        if other is lc or other._state is not _LOADED:
            continue
        first = other._owner()
        if first is None or type(first) is not type(owner):
            continue
        if _same_configuration(owner, first):
            _warn(
                DuplicateLoadWarning(
                    f"{lc.name} has the same configuration as {other.name}, which is still "
                    f"loaded (since {other.since:%H:%M:%S}): two copies now hold the "
                    "resource. Reuse the first, or free it with "
                    "stepfsm.lifecycle(old).unload() or stepfsm.unload_all() "
                    "(stepfsm.status() lists both)."
                )
            )
            return


#: Frames from these files are stepfsm's own (the last: generated guard wrappers).
_INTERNAL: Final = (os.path.dirname(os.path.abspath(__file__)), "<stepfsm ")


def _warn(warning: StepFSMWarning) -> None:
    """Log ``warning`` and emit it, attributed to the first caller outside stepfsm."""
    log.warning("%s: %s", type(warning).__name__, warning)
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(warning, stacklevel=level)


def lifecycle(obj: object) -> Lifecycle:
    """Return the :class:`Lifecycle` of a stateful object, creating it on first use.

    Raises:
        TypeError: ``obj`` is not stateful (decorate its class with
            ``@stepfsm.stateful`` or inherit ``stepfsm.Stateful``).
    """
    lc = registry.LIVE.get(id(obj))
    if lc is not None and lc._owner() is obj:
        return lc
    return _create(obj)


def _create(obj: object) -> Lifecycle:
    cfg = getattr(type(obj), "__stepfsm__", None)
    if cfg is None:
        raise TypeError(
            f"{type(obj).__qualname__} is not stateful: decorate the class with "
            "@stepfsm.stateful or inherit stepfsm.Stateful"
            + (
                " (or call stepfsm.integrations.distilabel.install() for distilabel steps)"
                if type(obj).__module__.startswith("distilabel")
                else ""
            )
            + "."
        )
    with registry.CREATE_LOCK:
        lc = registry.LIVE.get(id(obj))
        if lc is not None and lc._owner() is obj:
            return lc
        lc = Lifecycle(obj, cfg)
        registry.LIVE[id(obj)] = lc
        return lc


def _reset_frames_after_fork() -> None:
    _frames.stack = []


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_frames_after_fork)
