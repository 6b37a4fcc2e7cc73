"""The engine: one shared ``transitions`` machine, built from the table, and firing it.

One :class:`transitions.Machine` is built from :data:`stepfsm.states.TRANSITIONS`
and shared by every lifecycle. A lifecycle is the machine's model (never the
user's object, which may be a pydantic model); its events are fired with
``Event.trigger(model)``, so models are never registered in
``Machine.models`` (a list of strong references) and carry no per-model
trigger attributes.

The machine has no callbacks, conditions or queue: stepfsm's own code runs
around a trigger, not inside it. So its events and states are lean subclasses
(:class:`_Event`, :class:`_State`) that leave out transitions' callback
passes and its per-state log lines: a trigger is transitions' own validity
check (``MachineError`` for a pair the table lacks) and its own state change
(``Transition._change_state``), about half the work of a stock trigger.
``tests/unit/test_states.py`` checks, for every state and trigger, that a lean
trigger ends where a stock one does and refuses what it refuses.

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

from transitions import Machine, MachineError
from transitions import core as _core

from ._typing import TYPE_CHECKING
from .errors import StepStateError
from .states import INITIAL, TRANSITIONS, State

if TYPE_CHECKING:
    from typing import Any, Final, Protocol

    from .states import Trigger

    class Model(Protocol):
        """What the engine needs of a model: its attribute, and a name for errors."""

        _engine_state: str

        @property
        def name(self) -> str: ...


__all__ = ["ATTRIBUTE", "EVENTS", "MACHINE", "STATES", "MachineError", "build", "refused"]

#: The model attribute the engine keeps its string state in.
ATTRIBUTE: Final = "_engine_state"


class _State(_core.State):
    """A state of stepfsm's machine: entering and leaving it does nothing.

    It has no enter/exit callbacks, and stepfsm logs its transitions itself
    (logger ``stepfsm``); transitions' own lines (two per state change, at
    DEBUG and INFO) would only repeat them, and distilabel turns INFO on.
    """

    def enter(self, event_data: _core.EventData) -> None:
        pass

    def exit(self, event_data: _core.EventData) -> None:
        pass


class _Event(_core.Event):
    """An event of stepfsm's machine: transitions' trigger without its callback passes.

    What a stock ``Event.trigger`` adds here runs callback lists that are empty
    on this machine (prepare, conditions, before, after, finalize, on_exception)
    and a queue it does not have.
    """

    def trigger(self, model: object, *args: Any, **kwargs: Any) -> bool:
        machine = self.machine
        state = machine.get_model_state(model)
        self._is_valid_source(state)  # MachineError unless the table has (state, trigger)
        data = _core.EventData(state, self, machine, model, args, kwargs)
        data.transition = transition = self.transitions[state.name][0]
        transition._change_state(data)
        data.result = True
        return True


class _Machine(Machine):
    state_cls = _State
    event_cls = _Event


def build(machine_cls: type[Machine] = _Machine) -> Machine:
    """A machine of ``machine_cls`` built from the table: the engine's is lean; a test
    builds a stock ``transitions.Machine`` to compare it with."""
    return machine_cls(
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


MACHINE: Final = build()
#: engine state (a ``State`` value) -> ``State``
STATES: Final[dict[str, State]] = {s.value: s for s in State}
#: trigger -> the machine's ``Event``: ``EVENTS[trigger].trigger(model)`` fires it
EVENTS: Final[dict[str, Any]] = {t.trigger: MACHINE.events[t.trigger] for t in TRANSITIONS}


def refused(model: Model, source: State, trigger: Trigger) -> StepStateError:
    """The error for a trigger the table does not allow from ``source``: a bug in stepfsm
    (raise it ``from`` the engine's ``MachineError``)."""
    return StepStateError.internal(model.name, source, trigger)
