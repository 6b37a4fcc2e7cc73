"""The kit's vocabulary: the operations, and how the step's own code may end.

Shared by every other module of :mod:`stepfsm.testing`; imports none of them.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple, get_args

# The kit's one import from a private stepfsm module: the type of
# ``Lifecycle.on_repeat`` (and of ``@stateful(on_repeat=...)``), which stepfsm
# defines in ``_settings`` and does not export.
from .._settings import OnRepeat

__all__ = [
    "BEHAVIOURS",
    "OPS",
    "OUTCOMES",
    "Behaviour",
    "Kind",
    "OnRepeat",
    "Op",
    "Outcome",
    "Ran",
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
