"""The live lifecycles of this process: lookup, ``status()``, ``unload_all()``, fork.

A lifecycle is created lazily, the first time anything asks for it, and is
tracked weakly: the registry maps ``id(obj)`` to the lifecycle and a weak
reference to ``obj`` removes the entry when ``obj`` dies. Keying by ``id``
(not by the object) matters: pydantic models are unhashable and compare by
value, so a ``WeakKeyDictionary`` cannot hold them.

In a forked child every lifecycle is reset to ``unloaded`` with a fresh lock
and no holders; the step's attributes are left as they are (dropping them
would run the parent's finalizers in the child).
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

from .states import State

if TYPE_CHECKING:
    import datetime as _dt

    from .machine import Lifecycle

__all__ = ["Status", "StepStatus", "status", "unload_all"]

#: id(owner) -> Lifecycle, for every live object whose lifecycle exists.
LIVE: Final[dict[int, Lifecycle]] = {}
#: id(owner) -> Lifecycle, for those currently loaded (for duplicate detection).
LOADED: Final[dict[int, Lifecycle]] = {}
#: Serialises lifecycle creation so two threads never make two for one object.
CREATE_LOCK = threading.Lock()
#: Load order, so unload_all() can go in reverse.
LOAD_ORDER: Final = itertools.count(1)


class OwnerRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a step that removes its registry entries when the step dies."""

    __slots__ = ("key",)
    key: int


def forget(
    ref: OwnerRef, _live: dict[int, Lifecycle] = LIVE, _loaded: dict[int, Lifecycle] = LOADED
) -> None:
    """Weakref callback: drop the dead step's entries (unless the id was reused).

    The tables are bound as defaults: at interpreter exit the module's globals
    may already be gone when the last callbacks run.
    """
    entry = _live.get(ref.key)
    if entry is not None and entry._owner is ref:
        del _live[ref.key]
        _loaded.pop(ref.key, None)


class StepStatus(NamedTuple):
    """One row of :func:`status`."""

    name: str
    cls: str
    state: State
    since: _dt.datetime | None
    load_seconds: float | None
    holders: int


class Status(tuple[StepStatus, ...]):
    """The rows of :func:`status`; prints as a table and renders as HTML in Jupyter."""

    _HEAD: Final = ("step", "class", "state", "since", "last load", "holders")

    def _cells(self) -> Iterator[tuple[str, ...]]:
        for row in self:
            yield (
                row.name,
                row.cls,
                row.state.value,
                row.since.strftime("%H:%M:%S") if row.since else "-",
                f"{row.load_seconds:.3f} s" if row.load_seconds is not None else "-",
                str(row.holders),
            )

    def __str__(self) -> str:
        if not self:
            return "no stateful steps are alive in this process"
        rows = [self._HEAD, *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
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

        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._HEAD)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
            for cells in self._cells()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def status() -> Status:
    """Every live step whose lifecycle exists, oldest first, with its state.

    ``str(status())`` is a readable table; in Jupyter it renders as HTML.
    """
    rows = []
    for lc in list(LIVE.values()):
        owner = lc._owner()
        if owner is None:
            continue
        rows.append(
            StepStatus(
                name=lc.name,
                cls=type(owner).__qualname__,
                state=lc._state,
                since=lc.since,
                load_seconds=lc._load_s,
                holders=len(lc._holds),
            )
        )
    return Status(rows)


def unload_all() -> tuple[str, ...]:
    """Unload every loaded (or failed) step of this process, in reverse load order.

    Forces: holders are evicted (their later ``release()`` is a no-op). Every
    step is tried even if one fails.

    Returns:
        The display names of the steps that were unloaded or cleaned up.

    Raises:
        UnloadError: the first unload that raised, after all were tried.
    """
    targets = [lc for lc in list(LIVE.values()) if lc._state in (State.LOADED, State.FAILED)]
    targets.sort(key=lambda lc: lc._load_seq, reverse=True)
    done: list[str] = []
    first: BaseException | None = None
    for lc in targets:
        try:
            lc.unload(force=True)
        except Exception as error:  # keep going; report the first at the end
            first = first or error
        else:
            done.append(lc.name)
    if first is not None:
        raise first
    return tuple(done)


def _after_fork_in_child() -> None:
    global CREATE_LOCK
    CREATE_LOCK = threading.Lock()
    LOADED.clear()
    for lc in list(LIVE.values()):
        lc._reset_after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
