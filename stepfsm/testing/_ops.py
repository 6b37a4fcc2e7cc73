"""The kit's vocabulary: the operations, and how the step's own code may end.

Shared by every other module of :mod:`stepfsm.testing`; imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, get_args

if TYPE_CHECKING:
    # The kit's one import from a private stepfsm module: the type of
    # ``Lifecycle.on_repeat`` (and of ``@stateful(on_repeat=...)``), which stepfsm
    # defines in ``_settings`` for the type checker only and does not export.
    from .._settings import OnRepeat as OnRepeat

__all__ = [
    "ASYNC_OPS",
    "BEHAVIOURS",
    "OPS",
    "OUTCOMES",
    "SYNC_TWIN",
    "AnyOp",
    "AsyncOp",
    "Behaviour",
    "Kind",
    "Op",
    "Outcome",
    "Ran",
    "model_op",
]

#: How one call of the step's own load or unload code ends.
Behaviour = Literal["ok", "error", "interrupt"]
BEHAVIOURS: Final[tuple[Behaviour, ...]] = get_args(Behaviour)

#: The lifecycle operations the model knows (``use`` is a guarded call or
#: ``require_loaded()``; ``copy`` is a copy or pickle, which changes nothing).
Op = Literal[
    "load",
    "ensure_loaded",
    "unload",
    "unload_force",
    "reload",
    "reload_force",
    "acquire",
    "release",
    "use",
    "copy",
]
OPS: Final[tuple[Op, ...]] = get_args(Op)

#: The awaited operations (docs/design.md §10). Each follows §2 exactly as its
#: synchronous twin (:data:`SYNC_TWIN`) does, so the model judges it as that
#: twin; only "wait" means awaiting instead of blocking. ``aenter``/``aexit``
#: enter and leave an ``async with aloaded(step):`` block (an ``acquire()`` and
#: a ``release()`` by the block); ``ause`` is an ``async def`` guarded call (or
#: ``await lifecycle.arequire_loaded()``).
AsyncOp = Literal[
    "aload",
    "aensure_loaded",
    "aunload",
    "aunload_force",
    "areload",
    "areload_force",
    "aenter",
    "aexit",
    "ause",
]
ASYNC_OPS: Final[tuple[AsyncOp, ...]] = get_args(AsyncOp)
#: Any operation, synchronous or awaited.
AnyOp = Op | AsyncOp
#: The model operation that judges each awaited one.
SYNC_TWIN: Final[Mapping[AsyncOp, Op]] = MappingProxyType(
    {
        "aload": "load",
        "aensure_loaded": "ensure_loaded",
        "aunload": "unload",
        "aunload_force": "unload_force",
        "areload": "reload",
        "areload_force": "reload_force",
        "aenter": "acquire",
        "aexit": "release",
        "ause": "use",
    }
)


def model_op(op: AnyOp) -> Op:
    """The model operation ``op`` is judged as: itself, or an awaited one's sync twin."""
    if op in SYNC_TWIN:
        return SYNC_TWIN[op]  # type: ignore[index]
    return op  # type: ignore[return-value]


#: Which of the step's own methods ran.
Kind = Literal["load", "unload"]
#: The step's own code that ran, in order, with how each call ended.
Ran = tuple[tuple[Kind, Behaviour], ...]


class Outcome(NamedTuple):
    """How the step's own code behaves during one operation.

    ``load`` is how its load ends; ``unload`` how its unload ends (also when
    the unload runs as the clean-up of a ``failed`` step).
    """

    load: Behaviour = "ok"
    unload: Behaviour = "ok"

    def __str__(self) -> str:
        parts = [
            f"{kind} {'raises' if how == 'error' else 'is interrupted'}"
            for kind, how in (("load", self.load), ("unload", self.unload))
            if how != "ok"
        ]
        return ", ".join(parts) or "no fault"


#: Every outcome, the successful one first.
OUTCOMES: Final[tuple[Outcome, ...]] = tuple(
    Outcome(load, unload) for load in BEHAVIOURS for unload in BEHAVIOURS
)
