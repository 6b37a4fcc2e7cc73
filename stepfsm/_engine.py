"""The engine: one shared ``transitions`` machine, built from the table, and firing it.

One :class:`transitions.Machine` is built from :data:`stepfsm.states.TRANSITIONS`
and shared by every lifecycle. A lifecycle is the machine's model (never the
user's object, which may be a pydantic model); its events are fired with
``Event.trigger(model)``, so models are never registered in
``Machine.models`` (a list of strong references) and carry no per-model
trigger attributes.

The engine works on plain string states (the ``State`` values; transitions'
enum support costs ~7% per trigger) held in the model's :data:`ATTRIBUTE`.
The lifecycle's own ``State`` is the truth: firing first writes the source
state into the model's attribute, so a trigger interrupted halfway
(``KeyboardInterrupt`` inside ``transitions``) can never leave the engine and
the lifecycle disagreeing about where the next trigger starts. How to fire:

    model._engine_state = source._value_
    try:
        EVENTS[trigger].trigger(model)
    except MachineError as error:
        raise refused(model, source, trigger) from error
    dest = STATES[model._engine_state]

(``Lifecycle._fire`` does exactly this, inline: four times per load/unload
cycle, a function call is a measurable part of its cost.)
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

from transitions import Machine, MachineError

from .errors import StepStateError
from .states import INITIAL, TRANSITIONS, State, Trigger

__all__ = ["ATTRIBUTE", "EVENTS", "MACHINE", "STATES", "MachineError", "Model", "refused"]

#: The model attribute the engine keeps its string state in.
ATTRIBUTE: Final = "_engine_state"


class Model(Protocol):
    """What the engine needs of a model: its attribute, and a name for errors."""

    _engine_state: str

    @property
    def name(self) -> str: ...


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

MACHINE: Final = Machine(
    model=None,
    states=[s.value for s in State],
    transitions=[
        {"trigger": t.trigger, "source": [s.value for s in t.sources], "dest": t.dest.value}
        for t in TRANSITIONS
    ],
    initial=INITIAL.value,
    auto_transitions=False,
    model_attribute=ATTRIBUTE,
    name="stepfsm",
)
#: engine state (a ``State`` value) -> ``State``
STATES: Final[dict[str, State]] = {s.value: s for s in State}
#: trigger -> the machine's ``Event``: ``EVENTS[trigger].trigger(model)`` fires it
EVENTS: Final[dict[str, Any]] = {t.trigger: MACHINE.events[t.trigger] for t in TRANSITIONS}


def refused(model: Model, source: State, trigger: Trigger) -> StepStateError:
    """The error for a trigger the table does not allow from ``source``: a bug in stepfsm
    (raise it ``from`` the engine's ``MachineError``)."""
    return StepStateError.internal(model.name, source, trigger)
