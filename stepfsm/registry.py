"""The live lifecycles of this process: what is loaded, ``status()``, ``unload_all()``, fork.

A lifecycle is created lazily, the first time anything asks for it, and is
tracked weakly: the registry maps ``id(obj)`` to the lifecycle and a weak
reference to ``obj`` removes the entry when ``obj`` dies. Keying by ``id``
(not by the object) matters: pydantic models are unhashable and compare by
value, so a ``WeakKeyDictionary`` cannot hold them.

What is loaded is kept three ways, all written only by :func:`mark_loaded`
and :func:`mark_unloaded` (which the lifecycle calls after entering and
before leaving ``loaded``, so a guard can never see "loaded" early or late):
the instance flag the guards read (``LOADED_FLAG``, for classes with a
``__dict__``), a table by ``id`` (for slotted classes), and an index by class
and configuration that finds a duplicate load without scanning the loaded
steps (``docs/design.md``, section 9).

This module also keeps, per thread, the stack of lifecycles whose own load or
unload code that thread is running (:func:`running`), and owns the fork
hooks: in a forked child every table is emptied, every lifecycle reset
(through :func:`at_fork`) and every loaded flag cleared; the step's other
attributes are left as they are (dropping them would run the parent's
finalizers in the child).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator

from . import _release, _snapshot
from ._settings import LOADED_FLAG, ClassConfig
from ._typing import TYPE_CHECKING, NamedTuple
from .errors import LeakWarning, ResourceLeakError, emit, format_amount, format_bytes
from .states import State

if TYPE_CHECKING:
    import datetime as _dt
    from typing import Any, Final

    from .machine import Lifecycle

__all__ = [
    "RUNNING",
    "ON_FORGET",
    "OwnerRef",
    "PoolStatus",
    "Status",
    "StepStatus",
    "Token",
    "UsedToken",
    "at_fork",
    "config_key",
    "find",
    "find_duplicate",
    "live",
    "live_by_id",
    "loaded_table",
    "mark_loaded",
    "mark_unloaded",
    "owner_ref",
    "register",
    "show_pools",
    "status",
    "status_row",
    "token_of",
    "tokens_table",
    "unload_all",
]

#: id(owner) -> Lifecycle, for every live object whose lifecycle exists.
_LIVE: Final[dict[int, Lifecycle]] = {}
#: id(owner) -> the weak reference to it, for those currently loaded (a guard of a
#: slotted class checks the reference too: an entry an interrupted weakref
#: callback left behind cannot vouch for a new object that reuses the id).
_LOADED: Final[dict[int, OwnerRef]] = {}
#: ``id(step)`` -> the Token of the loaded steps of slotted classes (their guards read it)
_TOKENS: Final[dict[int, Token]] = {}
#: id(owner) -> its place in the order of loads (for unload_all()).
_ORDER: Final[dict[int, int]] = {}
_SEQUENCE: Final = itertools.count(1)
#: (class, configuration key) -> the loaded lifecycles with that configuration.
_BY_CONFIG: Final[dict[tuple[type, Hashable], list[Lifecycle]]] = {}
#: id(owner) -> (its index bucket, its configuration) while loaded.
_CONFIG_OF: Final[dict[int, tuple[tuple[type, Hashable], object]]] = {}


class OwnerRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a step that removes its registry entries when the step dies."""

    __slots__ = ("key",)
    key: int


def _forget(
    ref: OwnerRef,
    _live: dict[int, Lifecycle] = _LIVE,
    _loaded: dict[int, OwnerRef] = _LOADED,
    _order: dict[int, int] = _ORDER,
    _finalizing: Callable[[], bool] = sys.is_finalizing,
) -> None:
    """Weakref callback: drop the dead step's entries (unless the id was reused).

    The tables are bound as defaults: at interpreter exit the module's globals
    may already be gone when the last callbacks run; then there is nothing
    worth tidying, and the helpers this calls may be gone too.
    """
    if _finalizing():
        return
    if _loaded.get(ref.key) is ref:
        del _loaded[ref.key]
    token = _TOKENS.get(ref.key)
    if token is not None and _ref_of(token) is ref:
        _TOKENS.pop(ref.key, None)
    entry = _live.get(ref.key)
    if entry is not None and entry.owner_ref is ref:
        _order.pop(ref.key, None)
        _unindex(ref.key, entry)
        _snapshot.drop(ref.key)
        _live.pop(ref.key, None)
        for hook in ON_FORGET:
            hook(entry)


def owner_ref(obj: object) -> OwnerRef:
    """A weak reference to ``obj`` that forgets its entries when ``obj`` dies."""
    ref = OwnerRef(obj, _forget)
    ref.key = id(obj)
    return ref


def find(obj: object) -> Lifecycle | None:
    """The lifecycle of ``obj``, if it has one already."""
    lc = _LIVE.get(id(obj))
    if lc is not None and lc.owner_ref() is obj:
        return lc
    return None


#: ``live_by_id(id(obj))``: the first test of :func:`find` (check ``owner_ref() is obj``),
#: for the wrapped load/unload, which run it on every call.
live_by_id: Final = _LIVE.get


def register(obj: object, lc: Lifecycle) -> Lifecycle:
    """Record ``lc`` as ``obj``'s lifecycle; return the one recorded (another thread may win)."""
    key = id(obj)
    while True:
        current = _LIVE.setdefault(key, lc)  # atomic: two threads never both win
        if current is lc or current.owner_ref() is obj:
            return current
        # An entry for a dead object whose callback has not run: replace it.
        if _LIVE.get(key) is current:
            _LIVE[key] = lc
            return lc


def live() -> list[Lifecycle]:
    """Every lifecycle whose step is alive, oldest first."""
    # dict.copy() allocates nothing per entry: no collection (and no weakref callback
    # removing an entry) can run in the middle of it, as one can in list(d.items())
    return [lc for lc in _LIVE.copy().values() if lc.owner_ref() is not None]


def forget_where(predicate: Callable[[object], bool]) -> None:
    """Forget the lifecycles of the live steps for which ``predicate(step)`` is true."""
    for key, lc in _LIVE.copy().items():  # a copy: see live()
        owner = lc.owner_ref()
        if owner is not None and predicate(owner):
            mark_unloaded(lc, owner)
            _ORDER.pop(key, None)
            _snapshot.drop(key)
            if _LIVE.get(key) is lc:
                del _LIVE[key]


# --------------------------------------------------------------- what is loaded


def loaded_table() -> dict[int, OwnerRef]:
    """``id(step) -> weak reference`` of the loaded steps (read-only)."""
    return _LOADED


class Token:
    """What a guarded call holds while it runs: one per load of a step (``docs/design.md`` §11).

    The guards read it as the step's loaded flag (the instance attribute
    ``LOADED_FLAG``, or :func:`tokens_table` for slotted classes) and keep it
    in a local variable until they return, so its reference count says how
    many guarded calls of that load are running: an unload takes the flag
    away first, then waits until the count is back to its own references.
    """

    __slots__ = ("owner",)

    def __init__(self, owner: OwnerRef) -> None:
        self.owner = owner


_monotonic: Final = time.monotonic


class UsedToken(Token):
    """The token of a step with a budget cost: each guarded call notes when it ran (``_budget``).

    Dict classes' guards test its truth, slotted classes' guards call its
    ``owner()``: both note the time and answer as a plain token does.
    """

    __slots__ = ("ref", "used")

    def __init__(self, owner: OwnerRef) -> None:
        self.ref = owner
        self.used = _monotonic()

    def __bool__(self) -> bool:
        self.used = _monotonic()
        return True

    def owner(self) -> object:  # type: ignore[override]
        self.used = _monotonic()
        return self.ref()


def _ref_of(token: Token) -> OwnerRef:
    """The weak reference to the step a token stands for (without noting a use)."""
    return token.ref if isinstance(token, UsedToken) else token.owner


#: called with the lifecycle of each step that died (``_budget`` gives its booking back)
ON_FORGET: Final[list[Callable[[Lifecycle], None]]] = []


def _token_class(lc: Lifecycle) -> type[Token]:
    """What a load's token is: one that notes each use for a budget or an idle timeout."""
    return Token if lc._booked is None and lc.idle_timeout is None else UsedToken


def tokens_table() -> dict[int, Token]:
    """``id(step) -> Token`` of the loaded steps (read-only; slotted classes' guards)."""
    return _TOKENS


def token_of(obj: object) -> Token | None:
    """``obj``'s token if it is loaded (a new reference: the caller now holds it), else ``None``."""
    attrs = getattr(obj, "__dict__", None)
    token = attrs.get(LOADED_FLAG) if isinstance(attrs, dict) else _TOKENS.get(id(obj))
    return token if isinstance(token, Token) and token.owner() is obj else None


def mark_loaded(lc: Lifecycle, owner: object, config: tuple[Hashable, object] | None) -> None:
    """``owner`` has just become ``loaded``, with its pre-load ``config`` (from :func:`config_key`).

    The flag the guards read comes last, so a guard never passes early.
    """
    key = id(owner)
    token = lc._token
    if _LOADED.get(key) is not lc.owner_ref:  # not again for a step marked already
        # a new load: earlier loads' calls are not its; a booked step's notes each use
        token = lc._token = _token_class(lc)(lc.owner_ref)
        _ORDER[key] = next(_SEQUENCE)  # (a refused operation's recovery marks it again)
        if config is not None:
            bucket = (type(owner), config[0])
            _CONFIG_OF[key] = (bucket, config[1])
            entries = _BY_CONFIG.setdefault(bucket, [])
            if lc not in entries:
                entries.append(lc)
        _LOADED[key] = lc.owner_ref
    if token is None:
        token = lc._token = _token_class(lc)(lc.owner_ref)
    attrs = getattr(owner, "__dict__", None)
    if isinstance(attrs, dict):
        attrs[LOADED_FLAG] = token
    else:
        _TOKENS[key] = token


def mark_unloaded(lc: Lifecycle, owner: object | None) -> None:
    """``owner`` is about to leave ``loaded`` (or never entered it): guards stop passing first."""
    if owner is not None:
        attrs = getattr(owner, "__dict__", None)
        if isinstance(attrs, dict):
            attrs.pop(LOADED_FLAG, None)
    key = lc.owner_ref.key
    token = _TOKENS.get(key)
    if token is not None and _ref_of(token) is lc.owner_ref:
        del _TOKENS[key]
    if _LOADED.get(key) is lc.owner_ref:
        del _LOADED[key]
    if key in _CONFIG_OF:
        _unindex(key, lc)


def _unindex(key: int, lc: Lifecycle) -> None:
    entry = _CONFIG_OF.pop(key, None)
    if entry is None:
        return
    bucket = _BY_CONFIG.get(entry[0])
    if bucket is not None:
        with contextlib.suppress(ValueError):  # already gone (a racing unindex)
            bucket.remove(lc)
        if not bucket:
            _BY_CONFIG.pop(entry[0], None)


class _UnfreezableError(Exception):
    pass


_GENERIC: Final = object()  # the bucket of classes with a custom __eq__ and no better key


def _freeze(value: object, depth: int = 0) -> Hashable:
    """A hashable stand-in that is equal exactly when ``value`` is (for plain data)."""
    if depth > 32:
        raise _UnfreezableError
    if isinstance(value, dict):
        return ("dict", frozenset((k, _freeze(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v, depth + 1) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_freeze(v, depth + 1) for v in value))
    try:
        hash(value)
    except TypeError:
        raise _UnfreezableError from None
    return value  # hashable: checked above


def config_key(owner: Any, cfg: ClassConfig) -> tuple[Hashable, object] | None:
    """``(index key, configuration)`` of a step about to load, or ``None`` (never a duplicate).

    Same configuration (``docs/design.md``, section 5): equal ``model_dump()``
    for pydantic models, equal compared fields for dataclasses, ``==`` for
    other classes; identity-only equality never matches. The key is computed
    from the step as it is before its load, and kept while it is loaded, so a
    later load compares pre-load with pre-load.
    """
    cls: Any = type(owner)
    try:
        if cfg.private:
            data: object = owner.model_dump()
        elif cls.__eq__ is object.__eq__:  # first: the common case, and a dataclass's eq=True
            return None  # always defines __eq__
        elif getattr(getattr(cls, "__dataclass_params__", None), "eq", False):
            import dataclasses  # lazily (imported already: cls is a dataclass)

            data = tuple(getattr(owner, f.name) for f in dataclasses.fields(cls) if f.compare)
        else:
            return (_GENERIC, None)
    except Exception:  # a configuration that cannot be read cannot be compared
        return None
    try:
        return (_freeze(data), data)
    except _UnfreezableError:
        return (_GENERIC, data)


def find_duplicate(lc: Lifecycle, owner: Any, config: tuple[Hashable, object]) -> Lifecycle | None:
    """A loaded lifecycle of another step of ``owner``'s class with the same configuration."""
    cls = type(owner)
    for other in list(_BY_CONFIG.get((cls, config[0]), ())):
        if other is lc:
            continue
        first = other.owner_ref()
        if first is None or other.state is not State.LOADED:
            continue
        if config[0] is not _GENERIC:
            return other
        try:
            if config[1] is None:  # a custom __eq__: compare with the other's pre-load view
                same = bool(owner == _snapshot.preload_view(first))
            else:
                entry = _CONFIG_OF.get(id(first))
                same = entry is not None and bool(entry[1] == config[1])
        except Exception:
            same = False
        if same:
            return other
    return None


# --------------------------------------------------- running transitions


class _Running(threading.local):
    """Per thread: the lifecycles whose own load/unload code this thread is running."""

    def __init__(self) -> None:
        self.stack: list[tuple[Lifecycle, str, object]] = []


#: ``RUNNING.stack``: this thread's stack of ``(lifecycle, "load" or "unload", claim)``,
#: innermost last (an attribute read, not a call: the lifecycle reads it on every operation).
RUNNING: Final = _Running()


# ------------------------------------------------------------------- status


class StepStatus(NamedTuple):
    """One row of :func:`status`.

    ``node``, ``pid`` and ``actor`` say where the step lives; ``status()``
    leaves them ``None`` (this process), ``cluster_status()`` of the Ray
    integration fills them in (``docs/design.md``, section 13).
    """

    name: str
    cls: str
    state: State
    since: _dt.datetime | None
    load_seconds: float | None
    holders: int
    node: str | None = None
    pid: int | None = None
    actor: str | None = None
    #: estimated bytes held in what the step's load set (``None``: not loaded, or nothing)
    nbytes: int | None = None


class Status(tuple[StepStatus, ...]):
    """The rows of :func:`status`; prints as a table and renders as HTML in Jupyter.

    Rows that say where they live (``cluster_status()``) add the columns
    node, pid and actor.
    """

    _HEAD: Final = ("step", "class", "state", "since", "last load", "holders", "holds")
    _WHERE: Final = ("node", "pid", "actor")

    def _head(self) -> tuple[str, ...]:
        return self._HEAD + self._WHERE if self._located() else self._HEAD

    def _located(self) -> bool:
        return any(row.pid is not None for row in self)

    def _cells(self) -> Iterator[tuple[str, ...]]:
        located = self._located()
        for row in self:
            cells: tuple[str, ...] = (
                row.name,
                row.cls,
                row.state.value,
                row.since.strftime("%H:%M:%S") if row.since else "-",
                f"{row.load_seconds:.3f} s" if row.load_seconds is not None else "-",
                str(row.holders),
                f"~{format_bytes(row.nbytes)}" if row.nbytes is not None else "-",
            )
            if located:
                pid = str(row.pid) if row.pid is not None else "-"
                cells += (row.node or "-", pid, row.actor or "-")
            yield cells

    #: the budgets of this process (``docs/design.md`` §12), as :func:`status` found them
    pools: tuple[PoolStatus, ...] = ()

    def __str__(self) -> str:
        if not self:
            lines = ["no stateful steps are alive in this process"]
        else:
            head = self._head()
            rows = [head, *self._cells()]
            widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
            lines = [
                "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
            ]
            lines.insert(1, "  ".join("-" * w for w in widths))
        if self.pools:
            lines += ["", *map(str, self.pools)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        """Jupyter: the table, plus the lifecycle diagram with the occupied states marked.

        The diagram is inlined as SVG when Graphviz is available; without it
        the table comes alone (markdown cannot sit inside HTML).
        """
        from .diagrams import mimebundle

        page = self._repr_html_()
        svg = mimebundle(self).get("image/svg+xml") if self else None
        if svg:
            page += "\n" + svg[svg.find("<svg") :]
        return {"text/html": page, "text/plain": str(self)}

    def _repr_html_(self) -> str:
        import html

        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._head())
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
            for cells in self._cells()
        )
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return table + "".join(pool._repr_html_() for pool in self.pools)


class PoolStatus(NamedTuple):
    """One budget in :func:`status`: its name, capacity, what is used, and by how many steps."""

    name: str
    capacity: float
    used: float
    steps: int

    @property
    def share(self) -> float:
        """The used part of the capacity, 0.0 to 1.0."""
        if self.capacity == float("inf") or self.capacity <= 0:
            return 0.0 if self.used <= 0 or self.capacity == float("inf") else 1.0
        return min(self.used / self.capacity, 1.0)

    def __str__(self) -> str:
        return (
            f"budget {self.name!r}: {format_amount(self.used)} of "
            f"{format_amount(self.capacity)} used ({self.share:.0%}), "
            f"{self.steps} step{'s' * (self.steps != 1)}"
        )

    def _repr_html_(self) -> str:
        import html

        width = round(self.share * 100)
        bar = (
            '<div style="display:inline-block;width:12em;height:0.8em;background:#e5e5e5;'
            'vertical-align:middle;margin-right:0.5em"><div style="height:100%;'
            f'width:{width}%;background:{"#d9534f" if width >= 100 else "#4a90d9"}"></div></div>'
        )
        return f"<div>{bar}{html.escape(str(self))}</div>"


#: what :func:`status` asks for the budgets (``_budget`` sets it: it sits above this module)
_POOLS_VIEW: list[Callable[[], tuple[PoolStatus, ...]]] = []


def show_pools(view: Callable[[], tuple[PoolStatus, ...]]) -> None:
    """Let :func:`status` list the budgets ``view`` describes."""
    _POOLS_VIEW[:] = [view]


def status() -> Status:
    """Every live step whose lifecycle exists, oldest first, with its state.

    ``str(status())`` is a readable table; in Jupyter it renders as HTML.
    """
    table = Status([row for row in map(status_row, live()) if row is not None])
    for view in _POOLS_VIEW:
        table.pools = view()
    return table


def status_row(
    lc: Lifecycle, node: str | None = None, pid: int | None = None, actor: str | None = None
) -> StepStatus | None:
    """``lc``'s row of a status table (``None`` once its step is gone)."""
    owner = lc.step
    if owner is None:
        return None
    return StepStatus(
        name=lc.name,
        cls=type(owner).__qualname__,
        state=lc.state,
        since=lc.since,
        load_seconds=lc.last_load_seconds,
        holders=len(lc.holders),
        node=node,
        pid=pid,
        actor=actor,
        nbytes=_release.held_bytes(lc.owner_ref.key) if lc.state is State.LOADED else None,
    )


class Unloaded(tuple[str, ...]):
    """What :func:`unload_all` returns: the names of the steps it unloaded, plus what it freed.

    Attributes:
        bytes_freed: estimated bytes the unloads freed, summed.
        releases: each checked unload's ``ReleaseReport`` (``lifecycle.last_release``).
    """

    bytes_freed: int
    releases: tuple[_release.ReleaseReport, ...]

    def __new__(
        cls, names: Iterable[str], releases: Iterable[_release.ReleaseReport] = ()
    ) -> Unloaded:
        self = super().__new__(cls, names)
        self.releases = tuple(releases)
        self.bytes_freed = sum(report.bytes_freed for report in self.releases)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Unloaded, (tuple(self), self.releases))


def unload_all() -> Unloaded:
    """Unload every loaded (or failed) step of this process, in reverse load order.

    Forces: holders are evicted (their later ``release()`` is a no-op). Every
    step is tried even if one fails. A ``failed`` step whose clean-up raises
    stays ``failed`` (with a ``CleanupWarning``) and is not reported. What the
    unloads left alive is reported once, for all of them (``LeakWarning``, or
    ``ResourceLeakError`` if a leaking step's ``on_leak`` is ``"raise"``).

    Returns:
        The display names of the steps that are now ``unloaded`` (a tuple),
        with ``bytes_freed`` and ``releases``.

    Raises:
        UnloadError: the first unload that raised, after all were tried.
        ResourceLeakError: see above (after every step was tried).
    """
    targets = [lc for lc in live() if lc.state in (State.LOADED, State.FAILED)]
    targets.sort(key=lambda lc: _ORDER.get(lc.owner_ref.key, 0), reverse=True)
    done: list[str] = []
    first: BaseException | None = None
    with _release.collecting() as reports:
        for lc in targets:
            try:
                lc._unload_for_all()
            except Exception as error:  # keep going; report the first at the end
                first = first or error
            else:
                if lc.state is State.UNLOADED:
                    done.append(lc.name)
    if first is not None:
        raise first
    leaked = [
        item._replace(attribute=f"{report.step}.{item.attribute}")
        for report, _policy in reports
        for item in report.leaked
    ]
    if leaked:
        size = sum(item.size for item in leaked)
        if any(policy == "raise" for report, policy in reports if report.leaked):
            raise ResourceLeakError("unload_all()", leaked, size)
        emit(LeakWarning("unload_all()", leaked, size))
    return Unloaded(done, (report for report, _policy in reports))


# --------------------------------------------------------------------- fork

_fork_callbacks: list[Callable[[], None]] = []


def at_fork(fn: Callable[[], None]) -> None:
    """Run ``fn()`` in every forked child, after the registry's own tables are reset."""
    _fork_callbacks.append(fn)


def _after_fork_in_child() -> None:
    for lc in _LIVE.copy().values():
        owner = lc.owner_ref()
        attrs = getattr(owner, "__dict__", None) if owner is not None else None
        if isinstance(attrs, dict):
            attrs.pop(LOADED_FLAG, None)
    _LOADED.clear()
    _TOKENS.clear()
    _BY_CONFIG.clear()
    _CONFIG_OF.clear()
    RUNNING.stack = []
    _snapshot.clear()
    for fn in _fork_callbacks:
        fn()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
