"""The running lifecycle: its state, its claim (the lock), holders, waiting and operations.

Every operation that may change a lifecycle first *claims* it. A claim is the
pair ``(frame, thread id)`` of the operation's own Python frame, put into a
process-wide table with one atomic ``dict.setdefault``; it is released when
the operation ends. A claim is held for the whole operation, including the
user's own load/unload code (the transient states ``loading``/``unloading``
last exactly that long), so "is a transition running, and who runs it" is
always "who holds the claim".

Interrupt safety (``docs/design.md``, section 9; ``docs/decisions.md``,
"Interrupt safety") rests on three facts:

* A claim can never outlive the code that holds it unnoticed: a frame that
  has stopped running is dead (``frame.clear()`` succeeds on it and raises on
  a running one), so a claim whose frame is dead is *abandoned*. Whoever
  meets one (an operation wanting the claim, a waiter, a read of ``state``)
  takes it over and settles the lifecycle. No lock can stay held for good,
  whatever bytecode a ``KeyboardInterrupt`` hits.
* State changes are ordered so that every prefix is consistent: the loaded
  flag that guards read is set after the state becomes ``loaded`` and cleared
  before it leaves it; a transition records that the user's code returned on
  the same line that calls it.
* :meth:`Lifecycle._recover` settles a transient state from those records,
  whether the interrupted operation calls it (it knows the exception) or the
  next one does: ``loaded`` only if the user's load returned, else ``failed``.

Waiting threads block on a lock of their own, listed on the lifecycle and
released when the claim is; they also wake every :data:`_SLICE` seconds to
look for an abandoned claim, so a lost wake-up can delay them but never hang
them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType, GenericAlias

from . import _aio, _budget, _drain, _engine, _settings, _snapshot, registry
from . import _release as _rel  # the module (Lifecycle has a method _release)
from ._settings import (
    ClassConfig,
    check_policy,
    check_timeout,
    class_config,
    is_stateful,
    raise_original,
    resolve,
)
from ._typing import TYPE_CHECKING, NamedTuple
from .errors import (
    AlreadyLoadedError,
    CleanupWarning,
    DuplicateLoadWarning,
    LeakWarning,
    LoadError,
    NotLoadedError,
    RepeatedLoadWarning,
    ResourceLeakError,
    StepFailedError,
    StepInUseError,
    StepStateError,
    TransitionInProgressError,
    UnloadedUseWarning,
    UnloadError,
    async_with_needed,
    describe,
    emit,
    interrupted,
    log,
    not_stateful,
    sync_on_async,
)
from .states import INITIAL, State

if TYPE_CHECKING:
    import asyncio
    import datetime as _dt
    from types import TracebackType
    from typing import Any, Final, Generic, TypeVar

    from ._settings import OnLeak, OnRepeat, OnUnloadedUse
    from .states import Trigger

    _Step = TypeVar("_Step")

    class _Generic(Generic[_Step]):
        __slots__ = ()

else:
    _Step = object  # what AsyncLoaded's base is subscripted with at run time

    class _Generic:
        """``Generic[_Step]`` at run time, without typing: subscripting gives an alias."""

        __slots__ = ()
        __class_getitem__ = classmethod(GenericAlias)


__all__ = [
    "AsyncLoaded",
    "Lifecycle",
    "LifecycleStatistics",
    "TransitionRecord",
    "acall_load",
    "acall_unload",
    "load_method",
    "unload_method",
    "display_name",
    "lifecycle",
    "require_loaded",
]

_LOADED: Final = State.LOADED
_LOADING: Final = State.LOADING
_UNLOADING: Final = State.UNLOADING
_UNLOADED: Final = State.UNLOADED
_FAILED: Final = State.FAILED

_get_ident: Final = threading.get_ident
_getrefcount: Final = sys.getrefcount
_getframe: Final = sys._getframe
_wall: Final = time.time
_monotonic: Final = time.monotonic
_live_by_id: Final = registry.live_by_id
_log_enabled: Final = log.isEnabledFor
_running: Final = registry.RUNNING
_INF: Final = float("inf")
_EVENTS: Final = _engine.EVENTS
_ENGINE_STATES: Final = _engine.STATES
_MachineError: Final = _engine.MachineError
_object_eq: Final[Any] = object.__eq__
_DEBUG: Final = logging.DEBUG
_INFO: Final = logging.INFO

#: ``(frame of the operation holding the claim, its thread id)``
Claim = tuple[FrameType, int]
#: Lifecycle -> the claim held on it. One table for all: an empty dict per
#: lifecycle would cost more memory than the claims ever do.
_CLAIMS: Final[dict[Lifecycle, Claim]] = {}
#: Serialises take-overs of abandoned claims (two threads may find the same one).
_take_over_lock = threading.Lock()
#: Seconds between a waiter's checks for an abandoned claim.
_SLICE: Final = 0.2


def _operating(lc: Lifecycle) -> bool:
    """Whether an operation runs on ``lc`` now (a claim whose frame still runs)."""
    held = _CLAIMS.get(lc)
    return held is not None and _alive(held)


def _alive(claim: Claim) -> bool:
    """Whether the operation that holds ``claim`` is still running.

    ``frame.clear()`` raises on a frame that is executing (in any thread) and
    succeeds on one that has finished, releasing what its locals held.
    """
    try:
        claim[0].clear()
    except RuntimeError:
        return True
    return False


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
    #: why stepfsm itself ran the transition (an eviction: ``"budget 'gpu:0' needed
    #: room for ..."``); ``None`` when the step's own operation ran it
    reason: str | None = None


_tuple_new: Final[Any] = tuple.__new__  # builds a TransitionRecord without its Python __new__


class LifecycleStatistics(NamedTuple):
    """A frozen view of a lifecycle's bookkeeping, from :meth:`Lifecycle.statistics`.

    Attributes:
        state: the current state.
        holders: the display names of the holders.
        waiting: how many threads and tasks are waiting to operate on the step (not woken yet).
        owner: the id of the thread running an operation on the step, or ``None``.
        running_user_code: whether that operation is inside the step's own
            load/unload code right now.
        since: when the current state was entered (``time.time()``), or ``None``.
    """

    state: State
    holders: tuple[str, ...]
    waiting: int
    owner: int | None
    running_user_code: bool
    since: float | None


class _History(list[TransitionRecord]):
    """A lifecycle's last transitions, oldest first, at most ``limit`` of them.

    A list that the firing thread trims, not a ``deque(maxlen=...)``: a deque
    takes ~760 bytes from its first record on, a short list ~100 (most steps
    make a handful of transitions). Only the thread that holds the claim
    changes it; a reader's ``tuple()`` copies it in one step.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit


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


class Lifecycle:
    """The lifecycle of one stateful object: its state, holders and history.

    Get it with :func:`stepfsm.lifecycle`. Its operations and the object's own
    wrapped ``load()``/``unload()`` are the same thing. Every operation is
    thread-safe; the outcome of each in each state is the table in
    ``docs/design.md``, section 2.
    """

    __slots__ = (
        "__weakref__",
        "_acquired_load",
        "_awaiters",
        "_awaiting",
        "_began",
        "_booked",
        "_cfg",
        "_children",
        "_cleanup_error",
        "_config",
        "_cost",
        "_cuda",
        "_draining",
        "_due",
        "_engine_state",
        "_error",
        "_evicted",
        "_from",
        "_history",
        "_hold_key",
        "_holds",
        "_keep_booking",
        "_last_release",
        "_listeners",
        "_load_s",
        "_outbox",
        "_own",
        "_reason",
        "_released",
        "_ret",
        "_since",
        "_state",
        "_token",
        "_user",
        "_waiters",
        "owner_ref",
    )

    def __init__(self, owner: object, cfg: ClassConfig) -> None:
        #: the weak reference to the step (registry bookkeeping)
        self.owner_ref: registry.OwnerRef = registry.owner_ref(owner)
        self._cfg = cfg
        self._state: State = INITIAL
        self._engine_state: str = INITIAL.value
        self._from: State = INITIAL  # the source of the current (or last) begin_*
        self._since: float | None = None
        self._began = 0.0
        self._load_s: float | None = None
        self._error: BaseException | None = None
        self._cleanup_error: BaseException | None = None
        self._holds: list[_Hold] = []
        self._evicted: dict[int, int] | None = None
        self._acquired_load = False
        #: holds this step's current load took on other steps: (child, key)
        self._children: list[tuple[Lifecycle, object]] | None = None
        #: such holds whose parent load ended: released after the operation
        self._due: list[tuple[Lifecycle, object]] | None = None
        self._hold_key: object = None  # the key of the holds this step's current load takes
        self._config: Any = None  # its pre-load configuration key, while loaded
        self._history: _History | None = None
        self._listeners: tuple[_settings.Listener, ...] = ()
        self._outbox: list[TransitionRecord] | None = None
        self._own: dict[str, Any] | None = None  # the instance's own settings
        self._waiters: list[Any] = []
        #: event loop -> the future its waiting tasks share (async operations)
        self._awaiters: dict[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        #: the event each waiting task awaits (one entry per task; statistics())
        self._awaiting: list[asyncio.Event] | None = None
        self._user: Claim | None = None  # the claim whose user load/unload code is running
        self._ret: tuple[Any] | None = None  # set when the user's code of a transition returns
        #: (thread ident, watch) of an unload that returned: its release is checked
        #: by that thread once the claim is let go
        self._released: tuple[int, _rel.Watch] | None = None
        self._last_release: _rel.ReleaseReport | None = None
        self._cuda: int | None = None  # CUDA bytes allocated when the last load began
        self._draining = False  # an unload waits for running guarded calls
        #: what the guarded calls of the current (or last) load hold while they run
        self._token: registry.Token | None = None
        self._cost: _budget.CostSetting | None = None  # the instance's cost (not a setting:
        self._booked: _budget.Budget | None = None  # per process), and the pool counting it
        self._reason: str | None = None  # why stepfsm runs the current transition (eviction)
        self._keep_booking = False  # a reload between its unload and its load

    # ------------------------------------------------------------------ facts

    @property
    def state(self) -> State:
        """The current state.

        A transient state whose operation was abandoned (an interrupt escaped
        from stepfsm's own code) is settled by this read.
        """
        state = self._state
        if state is _LOADING or state is _UNLOADING:
            held = _CLAIMS.get(self)
            if held is None or not _alive(held):
                self._repair(held)
                state = self._state
        return state

    @property
    def step(self) -> object:
        """The object this lifecycle belongs to (``None`` once it has been garbage-collected)."""
        return self.owner_ref()

    @property
    def name(self) -> str:
        """The step's display name, e.g. ``"TextGeneration 'gen_0'"``."""
        owner = self.owner_ref()
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
    def last_release(self) -> _rel.ReleaseReport | None:
        """What the last unload freed and what it left alive (``docs/design.md`` §11).

        ``None`` before the first unload, and after an unload of a load that
        set nothing stepfsm could watch (no attribute it could weakly reference).
        """
        return self._last_release

    @property
    def last_load_seconds(self) -> float | None:
        """How long the last successful load took, in seconds."""
        return self._load_s

    def statistics(self) -> LifecycleStatistics:
        """A frozen snapshot of the bookkeeping (for tests and debugging)."""
        held = _CLAIMS.get(self)
        return LifecycleStatistics(
            state=self._state,
            holders=self.holders,
            waiting=len(self._waiters)
            + sum(not event.is_set() for event in tuple(self._awaiting or ())),
            owner=held[1] if held is not None else None,
            running_user_code=held is not None and self._user is held,
            since=self._since,
        )

    def _setting(self, name: _settings.Setting, value: Any) -> None:
        own = self._own
        if own is None:
            own = self._own = {}
        own[name] = value

    def own_settings(self) -> dict[str, Any]:
        """The settings made on this instance, not inherited (what a pickle of the step carries)."""
        return {key: value for key, value in (self._own or {}).items() if value is not None}

    @property
    def on_repeat(self) -> OnRepeat:
        """What ``load()`` on a loaded step does; set it to override class and global settings.

        Setting ``None`` goes back to the class/global setting.
        """
        return resolve("on_repeat", self._own, self._cfg)  # type: ignore[no-any-return]

    @on_repeat.setter
    def on_repeat(self, value: OnRepeat | None) -> None:
        if value is not None:
            check_policy(value, "on_repeat")
        self._setting("on_repeat", value)

    @property
    def on_unloaded_use(self) -> OnUnloadedUse:
        """What a guarded call on a step that is not loaded does (instance setting wins)."""
        return resolve("on_unloaded_use", self._own, self._cfg)  # type: ignore[no-any-return]

    @on_unloaded_use.setter
    def on_unloaded_use(self, value: OnUnloadedUse | None) -> None:
        if value is not None:
            check_policy(value, "on_unloaded_use")
        self._setting("on_unloaded_use", value)

    @property
    def on_leak(self) -> OnLeak:
        """What an unload that leaves its load's objects alive does (instance setting wins)."""
        return resolve("on_leak", self._own, self._cfg)  # type: ignore[no-any-return]

    @on_leak.setter
    def on_leak(self, value: OnLeak | None) -> None:
        if value is not None:
            check_policy(value, "on_leak")
        self._setting("on_leak", value)

    @property
    def timeout(self) -> float | None:
        """Seconds to wait for another thread's load/unload; ``None`` = as long as it takes.

        Setting ``None`` goes back to the class/global setting; use
        ``math.inf`` to wait forever regardless of them.
        """
        return resolve("timeout", self._own, self._cfg)  # type: ignore[no-any-return]

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._setting("timeout", check_timeout(value))

    @property
    def drain_timeout(self) -> float | None:
        """Seconds an unload waits for guarded calls running on other threads or tasks.

        When it expires the unload code does not run and the unload raises
        ``StepInUseError`` (``docs/design.md`` §11). Unset (``None``) at every
        level, it is :attr:`timeout`. Setting ``None`` goes back to the
        class/global setting.
        """
        value: float | None = resolve("drain_timeout", self._own, self._cfg)
        return self.timeout if value is None else value

    @drain_timeout.setter
    def drain_timeout(self, value: float | None) -> None:
        self._setting("drain_timeout", check_timeout(value, "drain_timeout"))

    @property
    def idle_timeout(self) -> float | None:
        """Seconds the step, loaded and held by nobody, stays loaded without use.

        Use is a load or a guarded call; then stepfsm unloads it (one timer
        thread for the whole process). ``None``: never (the default). A load
        schedules its first look with the timeout in force then; a later change
        counts from the next look (or the next load).
        """
        value: float | None = resolve("idle_timeout", self._own, self._cfg)
        return value

    @idle_timeout.setter
    def idle_timeout(self, value: float | None) -> None:
        self._setting("idle_timeout", check_timeout(value, "idle_timeout"))

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

    def load(self) -> Any:
        """Load the step (the same as calling its own wrapped ``load()``).

        Returns:
            What the step's own ``load()`` returned (``None`` if it did not run).

        Raises:
            AlreadyLoadedError: the step is loaded and ``on_repeat`` is ``"raise"``.
            LoadError: the step's load (or the clean-up before it) raised.
            TransitionInProgressError: called from inside the step's own unload,
                or a wait for another thread exceeded ``timeout``.
            StepStateError: the step is an async step (use :meth:`aload`).
        """
        if self._cfg.is_async:
            self._sync_allowed("load")
        return self._call_load(self._user_fn(self._cfg.load), (), {})

    def unload(self, force: bool = False) -> Any:
        """Unload the step; a no-op when it is ``unloaded``.

        Args:
            force: evict the holders instead of raising ``StepInUseError``.

        Returns:
            What the step's own ``unload()`` returned (``None`` if it did not run).

        Raises:
            StepInUseError: other holders remain and ``force`` is false.
            UnloadError: the step's own unload raised (from ``loaded``).
            TransitionInProgressError: called from inside the step's own load,
                or a wait exceeded ``timeout``.
            StepStateError: the step is an async step (use :meth:`aunload`).
        """
        if self._cfg.is_async:
            self._sync_allowed("unload")
        return self._call_unload(self._user_fn(self._cfg.unload), (), {}, force)

    def ensure_loaded(self) -> bool:
        """Load the step unless it is loaded already.

        Returns:
            ``True`` if this call ran a load, ``False`` if the step was loaded.

        Raises:
            LoadError: the load (or the clean-up before it) raised.
            TransitionInProgressError: called from inside the step's own
                load/unload, or a wait exceeded ``timeout``.
            StepStateError: the step is an async step (use :meth:`aensure_loaded`).
        """
        if self._cfg.is_async:
            self._sync_allowed("ensure_loaded")
        stack = _running.stack
        if stack:
            parent = self._parent(stack)
            if parent is not None:
                return self._acquire(parent._key(), parent.name, parent)
        if self._state is _LOADED:
            return False
        claim = self._claim("ensure_loaded")
        try:
            return self._ensure(claim)
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees

    def reload(self, force: bool = False) -> Any:
        """Unload (if loaded) and load again; from ``failed``, clean up then load.

        Args:
            force: reload even while other holders remain (they keep their hold).

        Returns:
            What the step's own ``load()`` returned.

        Raises:
            StepInUseError: other holders remain and ``force`` is false.
            LoadError: the load raised.
            UnloadError: the unload before the load raised.
            TransitionInProgressError: see :meth:`load`.
            StepStateError: the step is an async step (use :meth:`areload`).
        """
        if self._cfg.is_async:
            self._sync_allowed("reload")
        claim = self._claim("reload")
        try:
            state = self._state
            acquired = self._acquired_load  # holders keep their hold across a reload
            if self._holds and not force and (state is _LOADED or state is _FAILED):
                raise self._in_use("reload")
            if state is _LOADED:
                unload = self._user_fn(self._cfg.unload)
                self._keep_booking = True  # a budget keeps the room for the load again
                self._unload_now(claim, "reload", unload, (), {}, not force)
            if self._state is _FAILED:
                self._cleanup_before_load(claim)
            result = self._run_load(claim, self._user_fn(self._cfg.load), (), {})
            self._acquired_load = acquired and bool(self._holds)
            return result
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            if self._keep_booking:
                self._keep_booking = False
                if self._booked is not None and self._state is not _LOADED:
                    _budget.give_back(self)
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees
            if self._released is not None or _rel.DEFERRED.checks:  # outside the claim
                self._check_release()

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
            StepStateError: the step is an async step (use :meth:`aloaded`).
        """
        if self._cfg.is_async:
            self._sync_allowed("acquire")
        self._acquire(holder, self._label(holder))

    def release(self, holder: object = None) -> None:
        """Drop a hold taken by :meth:`acquire` (the same ``holder``).

        Unloads the step when the last hold goes and an ``acquire()`` did the
        load. A release still owed by a holder that a forced unload evicted
        is a no-op.

        Raises:
            StepStateError: no hold by ``holder`` exists (or the step is an
                async step: use :meth:`aloaded`).
            UnloadError: the unload after the last release raised.
        """
        if self._cfg.is_async:
            self._sync_allowed("release")
        self._release(holder)

    def _release(self, holder: object) -> None:
        claim = self._claim("release")
        try:
            if not self._drop_hold(holder):
                evicted = self._evicted
                owed = evicted.get(id(holder), 0) if evicted else 0
                if owed:
                    assert evicted is not None
                    evicted[id(holder)] = owed - 1
                    return
                raise StepStateError.no_hold(
                    self.name, self._state, self._label(holder), self.holders
                )
            self._unload_if_unheld(claim)
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees
            if self._released is not None or _rel.DEFERRED.checks:  # outside the claim
                self._check_release()

    @contextlib.contextmanager
    def loaded(self) -> Iterator[Any]:
        """Hold the step loaded for a ``with`` block; yields the step.

        A step the block loaded is unloaded at the end (when no other holder
        remains); a step that was already loaded stays loaded.

        Raises:
            LoadError: the load raised.
            StepStateError: the step is an async step (use :meth:`aloaded`).
        """
        if self._cfg.is_async:
            self._sync_allowed("loaded")
        token = _ContextHold()
        self.acquire(token)
        try:
            yield self.owner_ref()
        finally:
            self.release(token)

    def require_loaded(self, operation: str = "require_loaded") -> None:
        """Return if the step may be used now; wait out a transition in another thread.

        Inside the step's own load or unload (same thread) it always returns.

        Raises:
            NotLoadedError: the step is ``unloaded`` (policy ``on_unloaded_use="raise"``).
            StepFailedError: the step is ``failed`` (same policy).
            TransitionInProgressError: a wait exceeded ``timeout``, or the call
                comes from a listener on the thread of the step's own transition,
                or from an event loop's thread while the async step is in a
                transition (the wait would block that loop: await instead).
        """
        if self._state is _LOADED:
            return
        held = _CLAIMS.get(self)
        if held is not None and held[1] == _get_ident() and _alive(held):
            if self._user is held:
                return  # inside the step's own load/unload: pass through
            raise TransitionInProgressError(self.name, self._state, operation, None, listener=True)
        if held is not None and self._in_task():
            return  # inside the step's own async load/unload (this task runs it)
        if self._draining and _drain.holds(self._token):
            return  # a running call's nested call: the unload waits for that call to return
        if held is not None and self._cfg.is_async and _aio.on_loop_thread():
            # its user code may need this very loop: a blocking wait would never end
            raise TransitionInProgressError(self.name, self._state, operation, None, on_loop=True)
        self._refuse_use(self._settled(operation), operation)

    def _refuse_use(self, state: State, operation: str) -> None:
        """Apply ``on_unloaded_use`` to a use of the step in the settled ``state``."""
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
        emit(UnloadedUseWarning(self.name, state, operation, self._error))

    def _settled(self, operation: str) -> State:
        """The state once no operation runs (waits for one that does).

        A compound operation such as reload() holds the claim between its
        unload and its load, where the state reads 'unloaded'.
        """
        claim = self._claim(operation)
        try:
            return self._state
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees

    def subscribe(self, fn: _settings.Listener) -> Callable[[], None]:
        """Call ``fn(lifecycle, record)`` after each of this step's transitions.

        Returns a function that unsubscribes ``fn``. A listener that raises is
        logged and never breaks the step. An operation on the step from inside
        a listener is an ordinary call from outside the transition; where it
        would wait for the transition the listener runs in, it raises
        ``TransitionInProgressError``. The listener lives as long as the step:
        one that refers to the step keeps it alive (use ``lifecycle.step``
        inside it, or unsubscribe).

        Raises:
            TypeError: ``fn`` cannot be called as ``fn(lifecycle, record)``.
        """
        _settings.check_listener(fn)
        token = _settings.Subscription(fn)
        with _settings.LISTENER_LOCK:
            self._listeners = (*self._listeners, token)

        def unsubscribe() -> None:
            with _settings.LISTENER_LOCK:
                self._listeners = tuple(f for f in self._listeners if f is not token)

        return unsubscribe

    # ------------------------------------------------------- async operations

    async def aload(self) -> Any:
        """:meth:`load`, awaited: the event loop never blocks.

        A sync step's load runs in a worker thread; an async step's load runs
        on the caller's loop, in a task linked to the caller (cancelling the
        caller cancels it: the step ends ``failed`` with ``CancelledError``).
        Inside another step's async load it is an :meth:`acquire` by that step.

        Returns, raises: as :meth:`load`.
        """
        return await self._acall_load(self._user_fn(self._cfg.load), (), {})

    async def aunload(self, force: bool = False) -> Any:
        """:meth:`unload`, awaited (see :meth:`aload`)."""
        return await self._acall_unload(self._user_fn(self._cfg.unload), (), {}, force)

    async def aensure_loaded(self) -> bool:
        """:meth:`ensure_loaded`, awaited (see :meth:`aload`); no thread when loaded."""
        parent = self._aparent()
        if parent is not None:
            return await _aio.in_thread(lambda: self._acquire_for(parent))
        if self._state is _LOADED and self not in _CLAIMS:
            return False
        await self._await_free("ensure_loaded")
        if self._state is _LOADED and self not in _CLAIMS:
            return False
        return await _aio.in_thread(self.ensure_loaded)

    async def areload(self, force: bool = False) -> Any:
        """:meth:`reload`, awaited (see :meth:`aload`)."""
        self._not_in_task("reload")
        await self._await_free("reload")
        return await _aio.in_thread(lambda: self.reload(force))

    def aloaded(self) -> AsyncLoaded[Any]:
        """:meth:`loaded` for ``async with``: hold the step loaded, yield it."""
        return AsyncLoaded(self, self.owner_ref())

    async def arequire_loaded(self, operation: str = "require_loaded") -> None:
        """:meth:`require_loaded`, awaiting a transition instead of blocking the loop."""
        if self._state is _LOADED:
            return
        held = _CLAIMS.get(self)
        if held is not None and self._in_task():
            return  # inside the step's own async load/unload: pass through
        while True:
            await self._await_free(operation)
            # Read the state under a claim, as the sync path does: between the
            # wait and the read another operation may start (a reload() would
            # show 'unloaded' or 'loading' to a call that no order explains).
            claim = (_getframe(), _get_ident())
            if _CLAIMS.setdefault(self, claim) is claim:
                state = self._state
                self._end(claim)
                self._refuse_use(state, operation)
                return

    async def _acall_load(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        """A call of the object's wrapped async load ``fn`` (or :meth:`aload`)."""
        mine = self._in_task()
        if mine == "load" and self._state is _LOADING:  # a super().load() in our own load
            return await fn(self.owner_ref(), *args, **kwargs)
        self._not_in_task("load", mine)
        parent = self._aparent()
        if parent is not None:
            await _aio.in_thread(lambda: self._acquire_for(parent))
            return None
        await self._await_free("load")
        return await _aio.in_thread(lambda: self._call_load(fn, args, kwargs))

    async def _acall_unload(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, force: bool = False
    ) -> Any:
        """A call of the object's wrapped async unload ``fn`` (or :meth:`aunload`)."""
        mine = self._in_task()
        if mine == "unload" and self._state is _UNLOADING:  # a super().unload() in our own
            return await fn(self.owner_ref(), *args, **kwargs)
        self._not_in_task("unload", mine)
        running = _aio.running()  # inside another step's async load/unload: that step's release
        holder: Lifecycle | None = running[-1][0] if running else None  # type: ignore[index]
        await self._await_free("unload")
        return await _aio.in_thread(lambda: self._call_unload(fn, args, kwargs, force, holder))

    def _key(self) -> object:
        """The holder key of this step's current load (the holds it takes on children)."""
        key = self._hold_key
        if key is None:
            key = self._hold_key = _ParentKey()
        return key

    def _acquire_for(self, parent: Lifecycle) -> bool:
        """An acquire by ``parent``, whose load is running (its holds are released with it)."""
        return self._acquire(parent._key(), parent.name, parent)

    def _sync_allowed(self, operation: str) -> None:
        """An async step's operation runs synchronously only in a worker of an async one."""
        if _aio.bridging() is None:
            raise sync_on_async(self.name, self._state, operation)

    def _in_task(self) -> str | None:
        """The operation whose async user code the current task runs on this step, if any."""
        for marker in reversed(_aio.running()):
            if marker[0] is self:  # type: ignore[index]
                return marker[1]  # type: ignore[index,no-any-return]
        return None

    def _not_in_task(self, operation: str, mine: str | None = None) -> None:
        """Refuse an operation that would wait for this task's own running transition."""
        if (mine or self._in_task()) is not None:
            raise TransitionInProgressError(self.name, self._state, operation, None)

    def _aparent(self) -> Lifecycle | None:
        """The step whose async load the current task runs, if it is not this one."""
        running = _aio.running()
        if running:
            top: tuple[Lifecycle, str] = running[-1]  # type: ignore[assignment]
            if top[1] == "load" and top[0] is not self:
                return top[0]
        return None

    async def _await_free(self, operation: str) -> None:
        """Await (never blocking the loop) until no operation holds the claim.

        Abandoned claims are settled; the wait honours ``timeout``. Another
        operation may claim the lifecycle right after: the worker thread that
        runs the caller's operation then waits like any thread.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            held = _CLAIMS.get(self)
            if held is None:
                return
            if not _alive(held):
                self._repair(held)
                continue
            self._not_in_task(operation)
            timeout = self.timeout
            if deadline is None and timeout is not None and timeout != _INF:
                deadline = _monotonic() + timeout
            pause: float | None = None  # no slices: one watcher per future looks for abandonment
            if deadline is not None:
                pause = deadline - _monotonic()
                if pause <= 0:
                    raise TransitionInProgressError(self.name, self._state, operation, timeout)
            awaiters = self._awaiters
            if awaiters is None:
                awaiters = self._awaiters = {}
            event = awaiters.get(loop)
            if event is None or event.is_set():
                event = awaiters[loop] = asyncio.Event()
                _aio.watch(event, loop, self._still_held(held), _SLICE)
            if _CLAIMS.get(self) is held:  # registered before this check: no lost wake-up
                awaiting = self._awaiting
                if awaiting is None:
                    awaiting = self._awaiting = []
                awaiting.append(event)
                try:
                    await _aio.wait(event, pause)
                finally:
                    with contextlib.suppress(ValueError):
                        awaiting.remove(event)

    def _still_held(self, held: Claim) -> Callable[[], bool]:
        """A check that ``held`` is still this lifecycle's claim, and alive."""
        return lambda: _CLAIMS.get(self) is held and _alive(held)

    # --------------------------------------------------- wrapped load/unload

    def _call_load(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        """A call of the object's wrapped load method ``fn`` (or :meth:`load`)."""
        held = _CLAIMS.get(self)
        if held is not None and held[1] == _get_ident() and self._user is held and _alive(held):
            if self._state is _LOADING:  # a super().load() inside our own load
                return fn(self.owner_ref(), *args, **kwargs)
            raise TransitionInProgressError(self.name, self._state, "load", None)
        stack = _running.stack
        if stack:
            parent = self._parent(stack)
            if parent is not None:
                self._acquire(parent._key(), parent.name, parent)
                return None
        claim = self._claim("load")
        try:
            state = self._state
            if state is _LOADED:
                policy = resolve("on_repeat", self._own, self._cfg)
                if policy == "raise":
                    raise self._already_loaded()
                if policy == "warn":
                    emit(RepeatedLoadWarning(self.name))
                return None
            if state is _FAILED:
                self._cleanup_before_load(claim)
            return self._run_load(claim, fn, args, kwargs)
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees

    def _call_unload(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        force: bool = False,
        holder: Lifecycle | None = None,
        drain: bool | None = None,
    ) -> Any:
        """A call of the object's wrapped unload method ``fn`` (or :meth:`unload`).

        Inside another step's load or unload (on this thread, or ``holder``'s
        async one), it first drops a hold that step's load took. It waits for
        running guarded calls first (``drain``) unless ``force``.
        """
        if drain is None:
            drain = not force
        held = _CLAIMS.get(self)
        if held is not None and held[1] == _get_ident() and self._user is held and _alive(held):
            if self._state is _UNLOADING:  # a super().unload() inside our own unload
                return fn(self.owner_ref(), *args, **kwargs)
            raise TransitionInProgressError(self.name, self._state, "unload", None)
        stack = _running.stack
        top = self._top(stack) if stack else None
        if top is not None:
            holder = top[0]
        key = holder._key() if holder is not None and holder is not self else None
        claim = self._claim("unload")
        try:
            if key is not None and self._drop_hold(key):
                self._unload_if_unheld(claim)  # the parent's unload lets go of what its load took
                return None
            state = self._state
            if state is _LOADED:
                if self._holds and not force:
                    raise self._in_use("unload")
                if force:
                    self._evict()
                return self._unload_now(claim, "unload", fn, args, kwargs, drain)
            if state is _FAILED:
                if self._holds and not force:
                    raise self._in_use("unload")
                if force:
                    self._evict()
                return self._cleanup(claim, "unload", fn, args, kwargs, drain)[1]
            return None
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees
            if self._released is not None or _rel.DEFERRED.checks:  # outside the claim
                self._check_release()

    # ---------------------------------------------------------------- claims

    def _claim(self, operation: str) -> Claim:
        """Claim the lifecycle for the calling operation; wait while another holds it.

        The claim holds the caller's frame, so the caller ends with
        ``_end(claim)`` then ``del claim``: a claim left in its own frame's
        locals makes a cycle that only the garbage collector frees (the frame
        is copied out at exit, and 8 objects per load/unload cycle wait for GC).

        Raises:
            TransitionInProgressError: this thread's own running operation holds
                it (waiting would deadlock), or the wait exceeded ``timeout``.
        """
        claim = (_getframe(1), _get_ident())
        held = _CLAIMS.setdefault(self, claim)
        if held is claim:
            return claim
        return self._claim_slow(claim, held, operation)

    def _claim_slow(self, claim: Claim, held: Claim, operation: str) -> Claim:
        deadline: float | None = None
        waiter: Any = None
        link = _aio.bridging()  # a worker of an async operation: its task may be cancelled
        try:
            while True:
                if not _alive(held):
                    if self._take_over(held, claim):
                        self._recover(None)
                        return claim
                elif held[1] == claim[1]:
                    raise TransitionInProgressError(
                        self.name, self._state, operation, None, listener=self._user is not held
                    )
                elif self._in_task() is not None:  # this task runs the holder's user code
                    raise TransitionInProgressError(self.name, self._state, operation, None)
                elif self._draining and _drain.holds(self._token):  # the unload waits for us
                    raise TransitionInProgressError(
                        self.name, self._state, operation, None, draining=True
                    )
                else:
                    timeout = self.timeout
                    if deadline is None and timeout is not None and timeout != _INF:
                        deadline = _monotonic() + timeout
                    if waiter is None:  # listed once; the releaser pops and releases it
                        waiter = threading.Lock()
                        waiter.acquire()
                        self._waiters.append(waiter)
                    if _CLAIMS.get(self) is held:
                        pause = _SLICE
                        if deadline is not None:
                            pause = min(pause, deadline - _monotonic())
                            if pause <= 0:
                                raise TransitionInProgressError(
                                    self.name, self._state, operation, timeout
                                )
                        if waiter.acquire(True, pause):  # woken: listen for the next release
                            self._waiters.append(waiter)
                    if link is not None and link.cancelled and not self._top(_running.stack):
                        raise _aio.cancelled()  # its task gave up waiting: never start it
                held = _CLAIMS.setdefault(self, claim)
                if held is claim:
                    return claim
        finally:
            if waiter is not None:
                with contextlib.suppress(ValueError):  # already taken by a releaser
                    self._waiters.remove(waiter)

    def _take_over(self, dead: Claim, claim: Claim) -> bool:
        """Replace the abandoned claim ``dead`` with ``claim``; ``False`` if another thread did."""
        locked = _take_over_lock.acquire(timeout=1.0)  # held for good only after a 2nd interrupt
        try:
            if _CLAIMS.get(self) is not dead:
                return False
            _CLAIMS[self] = claim
            return True
        finally:
            if locked:
                _take_over_lock.release()

    def _end(self, claim: Claim) -> None:
        """End an operation: release its claim, wake waiters, tell listeners, free children."""
        if _CLAIMS.get(self) is claim:
            _CLAIMS.pop(self, None)
        waiters = self._waiters
        while waiters:
            try:
                waiters.pop().release()
            except IndexError:  # another thread woke the last one
                break
        if self._awaiters:
            awaiters, self._awaiters = self._awaiters, None
            _aio.wake(awaiters.copy())
        if self._outbox:
            self._deliver()
        if self._due:
            self._release_due()

    def _on_error(self, claim: Claim, error: BaseException) -> None:
        """An operation holding ``claim`` is being left by ``error``: settle what it left."""
        if _CLAIMS.get(self) is claim:
            self._recover(error)

    def _repair(self, dead: Claim | None) -> None:
        """Settle a transient state whose operation is gone (see :attr:`state`)."""
        claim = (_getframe(), _get_ident())
        if dead is None:
            if _CLAIMS.setdefault(self, claim) is not claim:
                return
        elif not self._take_over(dead, claim):
            return
        try:
            self._recover(None)
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees

    def _recover(self, error: BaseException | None) -> None:
        """With the claim held: settle what an operation cut short left. Idempotent.

        A transient state ends ``loaded``/``unloaded`` if the user's code
        returned, else ``failed`` with ``error`` (the interrupt; a stand-in if
        nobody saw it). Then the loaded flag and tables are made to agree.
        """
        self._user = None
        self._draining = False
        stack = _running.stack
        while stack and stack[-1][0] is self:
            stack.pop()
        state = self._state
        owner = self.owner_ref()
        if state is _LOADING:
            if owner is not None:
                _snapshot.finish(self.owner_ref, owner, self._cfg)
            if self._ret is not None:
                self._finish_load()
            else:
                self._fail(error if error is not None else interrupted(self.name, "load"))
        elif state is _UNLOADING:
            if self._ret is not None:
                self._finish_unload()
            else:
                self._fail(error if error is not None else interrupted(self.name, "unload"))
        self._ret = None
        self._reason = None
        self._keep_booking = False
        if self._state is _LOADED:
            if owner is not None:
                registry.mark_loaded(self, owner, self._config)
        else:
            registry.mark_unloaded(self, owner)
            if self._booked is not None:
                _budget.give_back(self)  # booked, but the load never began (or ended 'failed')

    # ----------------------------------------------------------- transitions

    def _ensure(self, claim: Claim) -> bool:
        """With the claim held: make the step ``loaded``; return whether a load ran."""
        state = self._state
        if state is _LOADED:
            return False
        if state is _FAILED:
            self._cleanup_before_load(claim)
        self._run_load(claim, self._user_fn(self._cfg.load), (), {})
        return True

    def _run_load(
        self, claim: Claim, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """With the claim held and the state ``unloaded``: run the load; return its value."""
        owner: Any = self.owner_ref()
        cfg = self._cfg
        cost = self._cost if self._cost is not None else cfg.cost
        if cost is not None:  # before anything changes: a refusal leaves the state alone
            _budget.book(self, cost, self.timeout)
        # registry.config_key's first test, inline: most classes compare by identity
        config = (
            registry.config_key(owner, cfg)
            if cfg.private or type(owner).__eq__ is not _object_eq
            else None
        )
        if config is not None:
            other = registry.find_duplicate(self, owner, config)
            if other is not None:  # before begin_load: an error filter leaves the state alone
                emit(DuplicateLoadWarning(self.name, other.name, other._since))
        self._config = config
        self._cuda = _rel.cuda_allocated() if "torch" in sys.modules else None
        self._hold_key = None  # a new key when this load first takes a hold (see _key)
        self._ret = None
        _snapshot.begin(self.owner_ref, owner, cfg)
        self._fire("begin_load")
        if self._outbox:
            self._deliver()
        error = self._call_user(claim, owner, "load", fn, args, kwargs)
        if _CLAIMS.get(self) is not claim:  # forked inside the load: this child starts over
            return self._abandoned(error)
        _snapshot.finish(self.owner_ref, owner, cfg)  # also after a failure: it may hold part
        _rel.measure(self.owner_ref.key)
        if error is None:
            self._finish_load()
            ret, self._ret = self._ret, None
            return ret[0] if ret is not None else None
        self._fail(error)
        if not isinstance(error, Exception) or raise_original(cfg):
            raise error
        raise LoadError(self.name, "load", error) from error

    def _unload_now(
        self,
        claim: Claim,
        operation: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        drain: bool = True,
    ) -> Any:
        """With the claim held and the state ``loaded``: run the unload; return its value.

        With ``drain``, guarded calls still running elsewhere return first; if
        they outlast ``drain_timeout`` the unload code does not run and the
        step is ``failed`` with the ``StepInUseError`` this raises.
        """
        owner = self.owner_ref()
        self._ret = None
        watched = self._watch()  # checked when the unload returns (_freed, _check_release)
        refused = self._begin_unload(operation, drain)
        if refused is not None:
            self._fail(refused)
            raise refused
        error = self._call_user(claim, owner, "unload", fn, args, kwargs)
        if _CLAIMS.get(self) is not claim:
            return self._abandoned(error)
        if error is None:
            self._finish_unload()
            if watched is not None and not self._freed(watched):
                self._released = (claim[1], watched)  # to check after the claim is let go
            ret, self._ret = self._ret, None
            return ret[0] if ret is not None else None
        self._fail(error)
        if not isinstance(error, Exception) or raise_original(self._cfg):
            raise error
        raise UnloadError(self.name, operation, error) from error

    def _begin_unload(self, operation: str, drain: bool) -> StepInUseError | None:
        """With the claim held: fire ``begin_unload``, then (``drain``) wait for running calls.

        Returns the ``StepInUseError`` of a drain that expired (the unload code
        must not run). A running call's nested call passes from before the flag
        goes (its listeners may take a while) until the wait ends.
        """
        self._draining = drain
        try:
            self._fire("begin_unload")
            if self._outbox:
                self._deliver()
            return self._drain_calls(operation) if drain else None
        finally:
            self._draining = False

    def _cleanup(
        self,
        claim: Claim,
        operation: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
        drain: bool = True,
    ) -> tuple[BaseException | None, Any]:
        """With the claim held and the state ``failed``: run the unload as a clean-up.

        Returns ``(error, value)``: the clean-up's exception (the step then
        stays ``failed`` with its first error) or what the unload returned.
        Guarded calls still running elsewhere (started while it was loaded)
        return first, as for an unload; a ``StepInUseError`` when they outlast
        ``drain_timeout`` is such an exception (the unload code did not run).
        """
        owner = self.owner_ref()
        self._ret = None
        watched = self._watch() if operation == "unload" else None
        error: BaseException | None = self._begin_unload(operation, drain)
        if error is None:
            error = self._call_user(claim, owner, "unload", fn, args, kwargs)
        if _CLAIMS.get(self) is not claim:
            return None, self._abandoned(error)
        if error is None:
            self._finish_unload()
            if watched is not None and not self._freed(watched):
                self._released = (claim[1], watched)  # to check after the claim is let go
            ret, self._ret = self._ret, None
            return None, ret[0] if ret is not None else None
        self._fail(error)
        if not isinstance(error, Exception):
            raise error
        if operation == "unload":
            with contextlib.suppress(CleanupWarning):  # filtered to an error: still logged,
                # but a clean-up unload never raises (docs/design.md, section 2);
                # distilabel's worker calls unload() after a failed load and hangs if it raises.
                emit(CleanupWarning(self.name, error))
        return error, None

    def _cleanup_before_load(self, claim: Claim) -> None:
        error = self._cleanup(claim, "load", self._user_fn(self._cfg.unload), (), {})[0]
        if error is not None:
            if raise_original(self._cfg):
                raise error
            raise LoadError.in_cleanup(self.name, error) from error

    def _call_user(
        self,
        claim: Claim,
        owner: Any,
        op: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Any,
    ) -> BaseException | None:
        """Run the user's load/unload (the claim stays held); return what it raised.

        ``self._ret`` is written on the line that calls it, so "the user's code
        returned" is recorded with no bytecode an interrupt could land between.
        """
        stack = _running.stack
        stack.append((self, op, claim))
        self._user = claim
        cfg = self._cfg
        try:
            if cfg.before_load is not None and op == "load":
                cfg.before_load(owner)
            if cfg.is_async:  # on the awaiting task's loop; this thread waits
                self._ret = (_aio.run_coroutine(fn(owner, *args, **kwargs), (self, op)),)
            else:
                self._ret = (fn(owner, *args, **kwargs),)
        except BaseException as raised:
            return raised
        finally:
            self._user = None
            if stack and stack[-1][2] is claim:
                stack.pop()
        return None

    def _watch(self) -> _rel.Watch | None:
        """With the claim held, before the unload code runs: what it should free."""
        record = _snapshot.record_of(self.owner_ref.key)
        if record is None and self._cuda is None:
            self._last_release = None  # the load set nothing to watch (the usual fast path)
            return None
        if resolve("on_leak", self._own, self._cfg) == "ignore":
            self._last_release = _rel.ReleaseReport(self.name, checked=False)
            return None
        watched = _rel.watch(record, self._cuda)
        if watched is None:
            self._last_release = None
        return watched

    def _check_release(self) -> None:
        """After an unload returned and let go of the claim: check what it should have freed.

        Inside another step's load or unload code on this thread (a parent's
        unload releasing its child), the check waits until that step's operation
        has ended, so that its code's frames no longer hold what was freed and
        the child's report cannot fail the parent's unload. The outermost
        operation runs the checks waiting on its thread.

        Raises:
            ResourceLeakError: something is still alive and ``on_leak`` is ``"raise"``.
        """
        released = self._released
        nested = bool(_running.stack)
        if released is not None and released[0] == _get_ident():  # else: its thread checks
            self._released = None
            if nested:
                _rel.DEFERRED.checks.append((self, released[1]))
                return
            self._report(released[1])
        if not nested:
            waiting = _rel.DEFERRED.checks
            while waiting:
                lifecycle, watched = waiting.pop(0)
                lifecycle._report(watched)

    def _freed(self, watched: _rel.Watch) -> bool:
        """Right after a successful unload: report it if it freed everything (the usual case)."""
        report = _rel.all_freed(self.name, watched)
        if report is None:
            return False  # something is still alive: _check_release looks closer
        self._last_release = report
        if _rel.COLLECTOR.entry is not None:
            _rel.collect(report, self.on_leak)  # unload_all() sums what its unloads freed
        return True

    def _report(self, watched: _rel.Watch) -> None:
        report = _rel.check(self.name, watched, self.owner_ref())
        self._last_release = report
        if not report.leaked and _rel.COLLECTOR.entry is None:
            return  # the usual case
        policy = self.on_leak
        if _rel.collect(report, policy) or not report.leaked:
            return  # unload_all() reports every leak at once
        if policy == "raise":
            raise ResourceLeakError(self.name, report.leaked, report.bytes_leaked)
        emit(LeakWarning(self.name, report.leaked, report.bytes_leaked))

    def _abandoned(self, error: BaseException | None) -> Any:
        """The user's code ran in a forked child, whose copy of this lifecycle was reset."""
        if error is not None:
            raise error
        ret, self._ret = self._ret, None
        return ret[0] if ret is not None else None

    def _finish_load(self) -> None:
        self._fire("finish_load")  # sets _load_s, and logs
        self._error = self._cleanup_error = None
        if self._booked is not None:
            _budget.loaded(self)
        if isinstance(self._token, registry.UsedToken) and self.idle_timeout is not None:
            _budget.watch_idle(self)

    def _finish_unload(self) -> None:
        self._fire("finish_unload")
        self._acquired_load = False
        self._config = None
        _snapshot.drop(self.owner_ref.key)
        self._error = self._cleanup_error = None
        if self._children:
            self._children_due()

    def _fail(self, error: BaseException) -> None:
        """End the running transition in ``failed`` because the user's code raised ``error``."""
        cleanup = self._from is _FAILED  # the clean-up of a step that had failed already
        self._fire("fail", error)
        if cleanup:
            self._cleanup_error = error  # the first error stays
        else:
            self._error = error
            if self._from is _UNLOADED:  # a failed load lets go of what it took
                self._children_due()
        log.warning(
            "%s of %s failed with %s; the step is now 'failed'",
            "clean-up" if cleanup else ("load" if self._from is _UNLOADED else "unload"),
            self.name,
            describe(error),
        )

    def _fire(self, trigger: Trigger, error: BaseException | None = None) -> None:
        """With the claim held: fire ``trigger`` on the engine and record it."""
        source = self._state
        if source is _LOADED:
            registry.mark_unloaded(self, self.owner_ref())  # guards stop passing first
        self._engine_state = source._value_  # firing, as _engine says; inline (hot path)
        try:
            _EVENTS[trigger].trigger(self)
        except _MachineError as machine_error:
            raise _engine.refused(self, source, trigger) from machine_error
        self._state = state = _ENGINE_STATES[self._engine_state]
        self._since = wall = _wall()
        if trigger[0] == "b":  # begin_load / begin_unload
            self._from = source
            self._began = wall
            record = _tuple_new(
                TransitionRecord,
                (trigger, source, state, wall, 0.0, _get_ident(), None, self._reason),
            )
        else:
            began = self._began
            took = wall - began
            record = _tuple_new(
                TransitionRecord,
                (
                    trigger,
                    source,
                    state,
                    began,
                    took if took > 0.0 else 0.0,
                    _get_ident(),
                    None if error is None else _detached(error),
                    self._reason,
                ),
            )
            if state is _LOADED:
                self._load_s = record.duration
                owner = self.owner_ref()
                if owner is not None:  # the guards' flag comes last
                    registry.mark_loaded(self, owner, self._config)
            elif self._booked is not None and not self._keep_booking:  # no longer counted
                _budget.give_back(self)
        history = self._history
        if history is None:
            history = self._history = _History(_settings.history_size())
        elif len(history) == history.limit:  # full: the oldest goes first (never N + 1)
            del history[0]
        history.append(record)
        if self._listeners or _settings.LISTENERS:
            if self._outbox is None:
                self._outbox = []
            self._outbox.append(record)
        if _log_enabled(_INFO):  # one test on the hot path: DEBUG is enabled only where INFO is
            self._log(record)

    def _log(self, record: TransitionRecord) -> None:
        """Log a transition: every one at DEBUG, the end of a load or an unload at INFO."""
        if _log_enabled(_DEBUG):
            log.debug(
                "%s: %s %s -> %s", self.name, record.trigger, record.source.value, record.dest.value
            )
        if record.trigger == "finish_load":
            log.info("loaded %s in %.3f s", self.name, record.duration)
        elif record.trigger == "finish_unload":
            log.info("unloaded %s in %.3f s", self.name, record.duration)

    def _deliver(self) -> None:
        """Give pending transition records to the listeners (each record once)."""
        outbox = self._outbox
        while outbox:
            try:
                record = outbox.pop(0)
            except IndexError:  # another thread delivered it
                return
            for fn in (*self._listeners, *_settings.LISTENERS):
                try:
                    fn(self, record)
                except Exception:
                    log.exception("stepfsm listener %r raised; ignored", fn)

    # --------------------------------------------------------------- holders

    def _acquire(self, holder: object, label: str, parent: Lifecycle | None = None) -> bool:
        if parent is not None:
            # Recorded before the hold exists: released when the parent's unload
            # completes or its load fails (a release of a hold never taken is ignored).
            if isinstance(holder, _ParentKey):
                holder.name = label
            children = parent._children
            if children is None:
                children = parent._children = []
            children.append((self, holder))
        claim = self._claim("acquire")
        try:
            ran = self._ensure(claim)
            if ran:
                self._acquired_load = True
            self._holds.append(_Hold(holder, label))
            return ran
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees

    def _drop_hold(self, holder: object) -> bool:
        """With the claim held: drop the newest hold by ``holder``; ``False`` if there is none."""
        holds = self._holds
        for index in range(len(holds) - 1, -1, -1):
            if holds[index].key is holder:
                del holds[index]
                return True
        return False

    def _unload_if_unheld(self, claim: Claim) -> None:
        """With the claim held, after a hold was dropped: unload if an acquire loaded it."""
        if not self._holds and self._acquired_load and self._state is _LOADED:
            self._unload_now(claim, "release", self._user_fn(self._cfg.unload), (), {})

    def _children_due(self) -> None:
        """This step's load ended for good: the holds it took go to :meth:`_release_due`."""
        children = self._children
        if children:
            self._due = [*(self._due or ()), *children]
            self._children = None

    def _release_due(self) -> None:
        """Without the claim: release the holds a finished load of this step took."""
        due = self._due
        interrupt: BaseException | None = None
        while due:
            try:
                entry = due[-1]
            except IndexError:
                break
            child, key = entry
            try:
                with _aio.detached():  # a cancelled task's worker: the child's unload still runs
                    child._release(key)
            except StepStateError:  # a forced unload of the child evicted us already
                pass
            except (ResourceLeakError, LeakWarning) as leak:  # the child unloaded: report it
                interrupt = interrupt or leak
            except Exception:
                log.exception("releasing %s held by %s failed", child.name, self.name)
            except BaseException as error:  # release the others, then re-raise it
                interrupt = interrupt or error
            with contextlib.suppress(ValueError):
                due.remove(entry)
        if interrupt is not None:
            raise interrupt

    def _parent(self, stack: list[tuple[Lifecycle, str, object]]) -> Lifecycle | None:
        """The lifecycle whose load this thread is running, if it is not this one."""
        top = self._top(stack)
        if top is not None and top[1] == "load" and top[0] is not self:
            return top[0]
        return None

    @staticmethod
    def _top(stack: list[tuple[Lifecycle, str, object]]) -> tuple[Lifecycle, str, object] | None:
        """The innermost transition this thread is running (entries left by interrupts dropped)."""
        while stack:
            top = stack[-1]
            if top[0]._user is top[2]:
                return top
            stack.pop()
        return None

    def _evict(self) -> None:
        if not self._holds:
            return
        if self._evicted is None:
            self._evicted = {}
        for hold in self._holds:
            self._evicted[id(hold.key)] = self._evicted.get(id(hold.key), 0) + 1
        self._holds.clear()

    def _restore_flag(self, operation: str) -> None:
        """Set the loaded flag again on a ``loaded`` step without it (a replaced ``__dict__``)."""
        claim = self._claim(operation)  # a loader sets it before it lets go of the claim
        try:
            self._flag_again()
        finally:
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees

    async def _arestore_flag(self, operation: str) -> None:
        """:meth:`_restore_flag` on an event loop: await the claim instead of blocking."""
        while True:
            await self._await_free(operation)
            claim = (_getframe(), _get_ident())
            if _CLAIMS.setdefault(self, claim) is claim:  # held by this frame, as in the sync one
                try:
                    self._flag_again()
                finally:
                    self._end(claim)
                    del claim  # else the claim and this frame form a cycle only the GC frees
                return

    def _flag_again(self) -> None:
        """With the claim held: set the loaded flag if the step is ``loaded`` without it."""
        owner = self.owner_ref()
        if self._state is _LOADED and owner is not None and registry.token_of(owner) is None:
            registry.mark_loaded(self, owner, self._config)

    def _passes(self, operation: str) -> bool:
        """Whether a guarded call may run now although the step is in a transition.

        Inside the step's own load/unload (this thread, or this task), or nested
        in a running call of the step while an unload waits for that call.
        """
        held = _CLAIMS.get(self)
        if held is not None and held[1] == _get_ident() and self._user is held:
            return True
        if held is not None and self._in_task() is not None:
            return True
        return self._draining and _drain.holds(self._token) > 0

    def _already_loaded(self) -> AlreadyLoadedError:
        """The error of a load refused because the step is loaded (``on_repeat="raise"``)."""
        return AlreadyLoadedError(self.name, self._since, self._load_s)

    def _in_use(self, operation: str) -> StepInUseError:
        return StepInUseError(self.name, self._state, operation, self.holders)

    def _drain_calls(self, operation: str) -> StepInUseError | None:
        """With the claim held, ``unloading``: wait for guarded calls running elsewhere.

        ``None`` once none runs; the ``StepInUseError`` naming them if they
        outlast ``drain_timeout`` (``docs/design.md`` §11, and ``_drain``).
        """
        token = self._token  # references: the lifecycle, ``token``, the argument below
        if token is None or _getrefcount(token) <= 3:
            return None  # the usual case: nothing else runs
        del token
        link = _aio.bridging()
        # an aunload() in a task: that task's own calls await this very unload
        own_task = link.origin if link is not None else None
        stale, counted = 0, _monotonic()  # holders not running (a heap scan: after 1 s), when

        def find(began: float) -> list[_drain.RunningCall]:
            nonlocal stale, counted
            token = self._token
            if token is None:
                return []
            count = _getrefcount(token) - 3  # the lifecycle, ``token``, the argument
            if count > 0:
                count -= _drain.holds(token)  # this thread's own calls (a task's running ones)
            if count > 0 and own_task is not None and link is not None and not link.cancelled:
                # (a cancelled aunload() goes on without its task: the task's calls run on)
                count -= _drain.held_in_task(own_task, token)
            if count > 0 and (count <= stale or _monotonic() - counted > 1.0):
                stale, counted = _drain.stale(token, self), _monotonic()  # fresh before "none"
            if count > 0:
                count -= stale
            return [_drain.RunningCall(None, None, began)] * max(count, 0)

        still, waited = _drain.wait(find, self.drain_timeout)
        if not still:
            return None
        named = [  # the async calls among them, by method and task (a heap scan or two)
            _drain.RunningCall(method, where, still[0].since)
            for method, where in _drain.coroutines(self._token, own_task)[: len(still)]
        ]
        still = named + still[len(named) :]
        return StepInUseError(self.name, self._state, operation, self.holders, still, waited)

    def _idle(self) -> bool:
        """Whether a budget may evict the step now (``docs/design.md`` §12)."""
        return (
            self.owner_ref() is not None
            and not _operating(self)
            and not self._cfg.is_async  # its unload must be awaited: a load thread cannot
            and self._idle_claimed()
        )

    def _busy(self) -> bool:
        """Whether a guarded call of the step runs now (its token held)."""
        token = self._token
        return token is not None and _getrefcount(token) > 4  # ours, the flag, this local
        # and the argument: 4 when no call holds the token

    def _why_kept(self) -> str:
        """Why a budget could not evict the step (``BudgetExceededError``)."""
        state = self._state
        if state is not _LOADED:
            return str(state.value)
        if self._holds:
            return "held by " + ", ".join(self.holders)
        if self._cfg.is_async:
            return "an async step"
        if self._busy():
            return "a guarded call running"
        return "in an operation" if _operating(self) else "idle"

    def _evict_for(self, reason: str) -> bool:
        """Unload the step for a budget if it is still idle; whether it did.

        Never waits for the step's claim (another operation has it: the step
        is not idle), never raises: an unload that fails leaves the step
        ``failed`` (no longer counted), which the budget's caller sees as room.
        """
        claim = (_getframe(), _get_ident())
        held = _CLAIMS.setdefault(self, claim)
        if held is not claim:  # another operation's, or one an interrupt abandoned
            if _alive(held) or not self._take_over(held, claim):
                return False
            self._recover(None)
        try:
            if not self._idle_claimed():
                return False
            self._reason = reason
            self._unload_now(claim, "evict", self._user_fn(self._cfg.unload), (), {})
            log.info("evicted %s: %s", self.name, reason)
            return True
        except Exception as error:  # the step is 'failed' now, so no longer counted
            self._on_error(claim, error)
            log.warning("evicting %s failed with %s", self.name, describe(error))
            return False
        except BaseException as error:
            self._on_error(claim, error)
            raise
        finally:
            self._reason = None
            self._end(claim)
            del claim  # else the claim and this frame form a cycle only the GC frees
            if self._released is not None or _rel.DEFERRED.checks:  # outside the claim
                try:
                    self._check_release()
                except ResourceLeakError as leak:  # the victim's, not the loader's, failure
                    log.warning("%s", leak)

    def _idle_claimed(self) -> bool:
        """:meth:`_idle`, with this thread holding the claim."""
        return self._state is _LOADED and not self._holds and not self._busy()

    @property
    def cost(self) -> _budget.CostSetting | None:
        """What a load of this step books in a budget: ``(pool, amount)``, a callable, or ``None``.

        The instance's own cost wins over the class's (``@stateful(cost=...)``);
        set ``None`` to go back to the class's. Costs are per process: a pickled
        step does not carry its instance cost (``docs/design.md`` §12).
        """
        return self._cost if self._cost is not None else self._cfg.cost

    @cost.setter
    def cost(self, value: _budget.CostSetting | None) -> None:
        self._cost = _budget.check_cost(value)

    def _unload_for_all(self) -> None:
        """``unload_all()``'s unload: evict the holders, but wait for running calls."""
        if self._cfg.is_async:
            self._sync_allowed("unload")
        self._call_unload(self._user_fn(self._cfg.unload), (), {}, True, None, True)

    def _label(self, holder: object) -> str:
        if holder is None:
            return f"acquire() in thread {threading.current_thread().name}"
        if isinstance(holder, Lifecycle):
            return holder.name
        if isinstance(holder, (_ContextHold, _ParentKey)):
            return repr(holder)
        if is_stateful(holder):
            return display_name(holder)
        text = repr(holder)
        return text if len(text) <= 60 else text[:57] + "..."

    def _user_fn(self, name: str) -> Callable[..., Any]:
        """The user's own (unwrapped) method ``name`` of the most-derived class."""
        fn = getattr(type(self.owner_ref()), name)
        return getattr(fn, "__stepfsm_original__", fn)  # type: ignore[no-any-return]

    def _reset_after_fork(self) -> None:
        """In a forked child: start over as ``unloaded`` (attributes are left alone)."""
        self._state = INITIAL
        self._engine_state = INITIAL.value
        self._waiters = []
        self._awaiters = self._awaiting = None  # the parent's event loops do not exist here
        self._user = None
        self._ret = None
        self._holds = []
        self._evicted = None
        self._acquired_load = False
        self._children = None
        self._due = None
        self._config = None
        self._outbox = None
        self._error = self._cleanup_error = None
        self._history = None
        self._since = None
        self._booked = None  # the budgets start over too (``_budget``'s fork hook)


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


def lifecycle(obj: object) -> Lifecycle:
    """Return the :class:`Lifecycle` of a stateful object, creating it on first use.

    Raises:
        TypeError: ``obj`` is not stateful (decorate its class with
            ``@stepfsm.stateful`` or inherit ``stepfsm.Stateful``).
    """
    lc = registry.find(obj)
    if lc is not None:
        return lc
    cfg = class_config(type(obj))
    if cfg is None:
        raise not_stateful(type(obj))
    return registry.register(obj, Lifecycle(obj, cfg))


def load_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapped load method of a class whose own load is ``fn`` (``wrap`` installs it)."""

    def load(self: Any, *args: Any, **kwargs: Any) -> Any:
        lc = _live_by_id(id(self))  # registry.find(self), inline: one frame fewer per load
        if lc is None or lc.owner_ref() is not self:
            lc = lifecycle(self)
        return lc._call_load(fn, args, kwargs)

    return load


def unload_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapped unload method of a class whose own unload is ``fn`` (``wrap`` installs it)."""

    def unload(self: Any, *args: Any, **kwargs: Any) -> Any:
        lc = _live_by_id(id(self))  # registry.find(self), inline
        if lc is None or lc.owner_ref() is not self:
            lc = lifecycle(self)
        return lc._call_unload(fn, args, kwargs)

    return unload


def require_loaded(obj: object, operation: str) -> registry.Token | None:
    """The slow path of a guard: ``obj``'s loaded flag was not set (``wrap`` uses it).

    Returns the token the call then holds (``_drain``): the load's, once the
    step is loaded; ``None`` when the call may run without it: inside the
    step's own transition, nested in a running call while an unload waits for
    that call, or on a step that is not loaded when ``on_unloaded_use`` lets
    it. Another thread's transition that begins meanwhile is waited for again.
    """
    lc = lifecycle(obj)
    while True:
        lc.require_loaded(operation)  # raises, waits, or returns: why, is read below
        token = _token_to_hold(lc, obj, operation)
        if token is _RESTORE:
            lc._restore_flag(operation)
        elif not isinstance(token, _Wait):  # not _AGAIN
            return token


class _Wait:
    """A sentinel of :func:`_token_to_hold`: the slow path must wait again."""

    __slots__ = ()


#: :func:`_token_to_hold`'s answers when the slow path must wait again: a transition
#: began after its wait; or the step is ``loaded`` without its flag (an unload taking
#: it away, or a replaced ``__dict__``), to be set again under the claim
_AGAIN: Final = _Wait()
_RESTORE: Final = _Wait()


def _token_to_hold(lc: Lifecycle, obj: object, operation: str) -> registry.Token | _Wait | None:
    """After a guard's slow path waited: the token its call holds, ``None``, or a sentinel.

    ``None`` when the call may run without the token: inside the step's own
    transition (this thread or task), nested in a running call while an
    unload waits for that call, or on a step that is not loaded when
    ``on_unloaded_use`` lets it. ``_AGAIN`` when another transition began
    after the wait: wait for it too. ``_RESTORE``: the step is ``loaded``
    without its flag; the caller sets it again under the claim (blocking, or
    awaiting on an event loop), then asks again.
    """
    token = registry.token_of(obj)
    if token is not None:
        return token
    state = lc._state
    if state is _LOADED:  # its flag is missing: the loader sets it under the claim
        return _RESTORE
    if state is _UNLOADED or state is _FAILED:
        if lc.on_unloaded_use != "raise":
            return None  # the policy lets the call run on a step that is not loaded
    elif lc._passes(operation):
        return None
    return _AGAIN


async def acall_load(
    obj: object, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
) -> Any:
    """A call of an async step's wrapped load method, whose own code is ``fn``."""
    return await lifecycle(obj)._acall_load(fn, args, kwargs)


async def acall_unload(
    obj: object, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
) -> Any:
    """A call of an async step's wrapped unload method, whose own code is ``fn``."""
    return await lifecycle(obj)._acall_unload(fn, args, kwargs)


async def arequire_token(obj: object, operation: str) -> registry.Token | None:
    """The slow path of an async guard: :func:`require_loaded`, awaiting instead of blocking.

    Returns the token the call then holds in its variable (``_drain``), or
    ``None`` when it may run without one, as :func:`require_loaded` does.
    """
    lc = lifecycle(obj)
    while True:
        if lc._draining and _drain.holds(lc._token):
            return None  # nested in a running call of this task: the unload waits for that one
        await lc.arequire_loaded(operation)  # raises, awaits, or returns: why, is read below
        token = _token_to_hold(lc, obj, operation)
        if token is _RESTORE:  # never a blocking claim on the loop: an unload may need it
            await lc._arestore_flag(operation)
        elif not isinstance(token, _Wait):  # not _AGAIN
            return token


class AsyncLoaded(_Generic[_Step]):
    """``async with lifecycle.aloaded():`` hold the step loaded for the block, yield it.

    Generic in the step's type: ``stepfsm.aloaded(step)`` yields ``step`` with its
    own type (``Lifecycle.aloaded()`` does not know it: ``Any``). It keeps the step
    alive, so ``async with stepfsm.aloaded(Step()) as step:`` works like its
    ``with`` twin.
    """

    __slots__ = ("_lifecycle", "_step", "_token")

    def __init__(self, lc: Lifecycle, step: _Step) -> None:
        self._lifecycle = lc
        self._step = step
        self._token = _ContextHold()

    async def __aenter__(self) -> _Step:
        lc = self._lifecycle
        lc._not_in_task("loaded")
        await lc._await_free("loaded")
        token = self._token
        handoff = _aio.Handoff()

        def acquire() -> None:
            lc._acquire(token, lc._label(token))
            if not handoff.give():  # the task was cancelled meanwhile: the block never runs
                with _aio.detached():
                    lc._release(token)

        try:
            await _aio.in_thread(acquire)
        except BaseException:
            if handoff.take_back():  # the hold is ours, but the block will not run
                await _aio.in_thread(lambda: lc._release(token))
            raise
        return self._step

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        lc = self._lifecycle
        token = self._token

        def release() -> None:  # waits for the step in the worker, even if the task is cancelled
            with _aio.detached(always=True):
                lc._release(token)

        await _aio.in_thread(release)

    if not TYPE_CHECKING:  # at run time, a plain ``with`` says to write ``async with``;
        # for a type checker, there is no ``__enter__``: it refuses the ``with`` itself

        def __enter__(self) -> Any:
            raise async_with_needed(self._lifecycle.name)

        def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ raises
            return None


def _reset_in_child() -> None:
    global _take_over_lock
    _CLAIMS.clear()
    _take_over_lock = threading.Lock()
    for lc in registry.live():
        lc._reset_after_fork()


registry.at_fork(_reset_in_child)
