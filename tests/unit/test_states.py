"""The transition table: its content, its validation, and the engine built from it."""

from __future__ import annotations

import pytest

import stepfsm
from stepfsm import State, StepStateError
from stepfsm._engine import MACHINE
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
