"""The transition table: its content, its validation, and the engine built from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transitions import Machine, MachineError

import stepfsm
from stepfsm import State, StepStateError
from stepfsm._engine import ATTRIBUTE, MACHINE, build
from stepfsm.states import INITIAL, TRANSIENT, TRANSITIONS, Transition, _build_index, next_state
from tests.conftest import FakeStep


def test_table_is_the_design_table() -> None:
    """The table has exactly the five rows of docs/design.md §1."""
    rows = {(t.trigger, tuple(s.value for s in t.sources), t.dest.value) for t in TRANSITIONS}
    assert rows == {
        ("begin_load", ("unloaded",), "loading"),
        ("finish_load", ("loading",), "loaded"),
        ("begin_unload", ("loaded", "failed"), "unloading"),
        ("finish_unload", ("unloading",), "unloaded"),
        ("fail", ("loading", "unloading"), "failed"),
    }
    assert INITIAL is State.UNLOADED
    assert {State.LOADING, State.UNLOADING} == TRANSIENT
    assert str(State.LOADED) == "loaded"


def test_next_state_follows_the_table_and_nothing_else() -> None:
    """next_state() answers every listed pair and None for every other one."""
    listed = {(s, t.trigger): t.dest for t in TRANSITIONS for s in t.sources}
    for state in State:
        for trigger in ("begin_load", "finish_load", "begin_unload", "finish_unload", "fail"):
            assert next_state(state, trigger) is listed.get((state, trigger))


def test_engine_is_built_from_the_table() -> None:
    """The shared transitions machine has exactly the table's events and edges."""
    edges = {
        (name, source, t.dest)
        for name, event in MACHINE.events.items()
        for source, ts in event.transitions.items()
        for t in ts
    }
    expected = {(t.trigger, s.value, t.dest.value) for t in TRANSITIONS for s in t.sources}
    assert edges == expected
    assert MACHINE.models == []  # lifecycles are never registered (strong references)


def test_the_engine_has_nothing_its_lean_trigger_leaves_out() -> None:
    """No callbacks, conditions or queue: what a stock trigger would run on top is empty."""
    assert not MACHINE.has_queue
    assert not MACHINE.on_exception
    for hook in ("prepare_event", "before_state_change", "after_state_change", "finalize_event"):
        assert getattr(MACHINE, hook) == [], hook
    assert MACHINE.on_final == []
    for state in MACHINE.states.values():
        assert (state.on_enter, state.on_exit, state.final) == ([], [], False), state.name
    for event in MACHINE.events.values():
        for ts in event.transitions.values():
            assert len(ts) == 1  # the lean trigger runs the first transition only
            (t,) = ts
            assert (t.prepare, t.conditions, t.before, t.after) == ([], [], [], []), event.name


@pytest.mark.parametrize("trigger", [t.trigger for t in TRANSITIONS])
@pytest.mark.parametrize("source", list(State))
def test_a_lean_trigger_does_what_a_stock_one_does(source: State, trigger: str) -> None:
    """For every state and trigger, stepfsm's engine ends in the state a stock
    ``transitions`` machine built from the same table ends in, or refuses with its
    ``MachineError`` message."""
    stock = build(Machine)
    outcomes = []
    for machine in (MACHINE, stock):
        model = SimpleNamespace(**{ATTRIBUTE: source.value})
        try:
            result: object = machine.events[trigger].trigger(model)
        except MachineError as error:
            result = str(error)
        outcomes.append((result, getattr(model, ATTRIBUTE)))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0][1] != source.value) == (next_state(source, trigger) is not None)
    assert type(MACHINE.events[trigger]) is not type(stock.events[trigger])  # the lean one ran


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (
            (*TRANSITIONS, Transition("fail", (State.LOADING,), State.UNLOADED)),
            "trigger 'fail' is listed twice from 'loading'",
        ),
        (
            tuple(t for t in TRANSITIONS if t.trigger != "fail"),
            "states unreachable from 'unloaded': failed",
        ),
        (
            (
                *(t for t in TRANSITIONS if t.trigger != "begin_unload"),
                Transition("begin_unload", (State.LOADED,), State.UNLOADING),
            ),
            "states with no way out: failed",
        ),
    ],
)
def test_broken_tables_are_refused(table: tuple[Transition, ...], match: str) -> None:
    """A table with a duplicate row, an unreachable state or a dead end is refused."""
    with pytest.raises(ValueError, match=match):
        _build_index(table)


def test_machine_error_is_translated(step: FakeStep) -> None:
    """An invalid trigger never leaks transitions.MachineError: it is a StepStateError."""
    from transitions import MachineError

    lc = stepfsm.lifecycle(step)
    with pytest.raises(StepStateError, match="cannot finish_load from state 'unloaded'") as info:
        lc._fire("finish_load")  # the engine refuses it: the table has no such row
    assert isinstance(info.value.__cause__, MachineError)
    assert info.value.operation == "finish_load"
    assert lc.state is State.UNLOADED
