"""The lifecycle as plain data: the states and the transition table.

This module is the single source of truth for the machine. The running engine
(:mod:`stepfsm.machine`), the diagrams (:mod:`stepfsm.diagrams`) and the
reference model used by the tests are all derived from :data:`TRANSITIONS`.
Nothing here imports :mod:`transitions`; the table is validated once, at
import time, and is immutable afterwards.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from ._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Final, Literal

    Trigger = Literal["begin_load", "finish_load", "begin_unload", "finish_unload", "fail"]
else:
    Trigger = str  # at run time (typing is not imported): what get_type_hints() resolves

__all__ = [
    "INITIAL",
    "TRANSIENT",
    "TRANSITIONS",
    "State",
    "Transition",
    "Trigger",
    "next_state",
]


class State(str, enum.Enum):
    """The five states of a step's lifecycle; values are the lower-case names."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Transition(NamedTuple):
    """One row of the table: ``trigger`` moves any of ``sources`` to ``dest``."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State


INITIAL: Final = State.UNLOADED

#: States that last exactly as long as the user's own load/unload code runs.
TRANSIENT: Final = frozenset({State.LOADING, State.UNLOADING})

TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition("begin_load", (State.UNLOADED,), State.LOADING),
    Transition("finish_load", (State.LOADING,), State.LOADED),
    Transition("begin_unload", (State.LOADED, State.FAILED), State.UNLOADING),
    Transition("finish_unload", (State.UNLOADING,), State.UNLOADED),
    Transition("fail", (State.LOADING, State.UNLOADING), State.FAILED),
)


def _build_index(table: tuple[Transition, ...]) -> Mapping[tuple[State, str], State]:
    """Index the table by ``(source, trigger)`` after checking that it can work.

    Raises:
        ValueError: a (source, trigger) pair is listed twice, a state cannot be
            reached from the initial state, or a state has no way out.
    """
    index: dict[tuple[State, str], State] = {}
    for row in table:
        for source in row.sources:
            if (source, row.trigger) in index:
                raise ValueError(f"trigger {row.trigger!r} is listed twice from {source.value!r}")
            index[source, row.trigger] = row.dest
    reached = {INITIAL}
    frontier = [INITIAL]
    while frontier:
        here = frontier.pop()
        for (source, _), dest in index.items():
            if source is here and dest not in reached:
                reached.add(dest)
                frontier.append(dest)
    unreachable = [s.value for s in State if s not in reached]
    if unreachable:
        raise ValueError(f"states unreachable from {INITIAL.value!r}: {', '.join(unreachable)}")
    stuck = [s.value for s in State if not any(src is s for src, _ in index)]
    if stuck:
        raise ValueError(f"states with no way out: {', '.join(stuck)}")
    return MappingProxyType(index)


_INDEX: Final = _build_index(TRANSITIONS)


def next_state(state: State, trigger: str) -> State | None:
    """Return where ``trigger`` takes ``state``, or ``None`` if the table has no such row."""
    return _INDEX.get((state, trigger))
