"""The linearizability checker: is a concurrent history some sequential order of the model?

A :class:`Call` is one completed call of a concurrent history, with what it
observed; :func:`linearize` searches for an order of the calls that respects
real time and in which the model gives every call the result it observed.
Awaited calls (``aload``...) take part like any other: the model judges each
as its synchronous twin, whether a thread or a task made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._ops import AnyOp, Outcome
from .model import Config, candidates
from .observer import Observed, mismatches

if TYPE_CHECKING:
    from ._ops import OnRepeat

__all__ = ["Call", "linearize"]


@dataclass(frozen=True)
class Call:
    """One completed call in a concurrent history.

    ``invoked`` and ``responded`` come from one shared counter, so a call
    that responded before another was invoked must come first in any order.
    """

    op: AnyOp
    invoked: int
    responded: int
    observed: Observed
    outcome: Outcome | None = None
    label: str = ""

    def successors(self, config: Config, on_repeat: OnRepeat) -> list[Config]:
        """The configurations this call can leave ``config`` in, given what it observed."""
        observed = self.observed._replace(warnings=())
        return [
            after
            for _, after, result in candidates(
                config, self.op, on_repeat=on_repeat, outcome=self.outcome
            )
            if not mismatches(result._replace(warning=None), self.op, observed)
        ]


def linearize(
    start: Config,
    calls: Sequence[Call],
    *,
    on_repeat: OnRepeat = "raise",
    accept: Callable[[Config], bool] | None = None,
) -> list[tuple[Call, Config]] | None:
    """Find a sequential order of ``calls`` that the model agrees with.

    The order must respect real time (a call that responded before another
    was invoked comes first), give every call the result it observed, and
    end in a configuration ``accept`` agrees with. Warnings are not compared
    (threads share the warning machinery).

    Returns:
        The calls in that order, each with the configuration after it, or
        ``None`` when no such order exists (the history is not linearizable).
    """
    count = len(calls)
    full = (1 << count) - 1
    dead: set[tuple[int, Config]] = set()
    path: list[tuple[Call, Config]] = []

    def search(done: int, config: Config) -> bool:
        if done == full:
            return accept is None or accept(config)
        if (done, config) in dead:
            return False
        pending = [i for i in range(count) if not done >> i & 1]
        first_response = min(calls[i].responded for i in pending)
        for i in pending:
            call = calls[i]
            if call.invoked > first_response:
                continue  # a pending call had already returned before this one began
            for after in call.successors(config, on_repeat):
                path.append((call, after))
                if search(done | 1 << i, after):
                    return True
                path.pop()
        dead.add((done, config))
        return False

    return path if search(0, start) else None
