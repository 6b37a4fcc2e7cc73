"""The engine: one shared ``transitions`` machine, built from the table, and firing it.

One :class:`transitions.Machine` is built from :data:`stepfsm.states.TRANSITIONS`
and shared by every lifecycle. A lifecycle is the machine's model (never the
user's object, which may be a pydantic model); its events are fired with
``Event.trigger(model)``, so models are never registered in
``Machine.models`` (a list of strong references) and carry no per-model
trigger attributes.

The engine works on plain string states (the ``State`` values; transitions'
enum support costs ~7% per trigger) held in the model's :data:`ATTRIBUTE`.
The lifecycle's own ``State`` is the truth: :func:`fire` first writes the
source state into the model's attribute, so a trigger interrupted halfway
(``KeyboardInterrupt`` inside ``transitions``) can never leave the engine and
the lifecycle disagreeing about where the next trigger starts.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

from transitions import Machine, MachineError

from .errors import StepStateError
from .states import INITIAL, TRANSITIONS, State, Trigger

__all__ = ["ATTRIBUTE", "MACHINE", "Model", "fire"]

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
_STATES: Final[dict[str, State]] = {s.value: s for s in State}
_EVENTS: Final[dict[str, Any]] = {t.trigger: MACHINE.events[t.trigger] for t in TRANSITIONS}


def fire(model: Model, trigger: Trigger, source: State) -> State:
    """Fire ``trigger`` on ``model``, which is in ``source``; return the new state.

    Raises:
        StepStateError: the table has no such transition (a bug in stepfsm;
            ``transitions``' ``MachineError`` is its ``__cause__``).
    """
    model._engine_state = source._value_  # the member's own attribute: no descriptor call
    try:
        _EVENTS[trigger].trigger(model)
    except MachineError as err:
        raise StepStateError.internal(model.name, source, trigger) from err
    return _STATES[model._engine_state]
