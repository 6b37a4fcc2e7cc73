"""The reference model (stepfsm.testing.model_step) against the table it is derived from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import stepfsm.testing as kit
from stepfsm.errors import StepStateError
from stepfsm.states import TRANSIENT, TRANSITIONS, State
from stepfsm.testing import OPS, OUTCOMES, Config, Outcome, candidates, model_step

POLICIES = ("raise", "warn", "ignore")


def reachable(depth: int = 4) -> set[Config]:
    """Every configuration the model reaches from the initial one in ``depth`` operations."""
    seen = {Config()}
    layer = [Config()]
    for _ in range(depth):
        following = []
        for config in layer:
            for op in OPS:
                for _, after, _ in candidates(config, op):
                    if after not in seen:
                        seen.add(after)
                        following.append(after)
        layer = following
    return seen


CONFIGS = sorted(reachable(), key=repr)


def every_step() -> Iterator[tuple[Config, str, Outcome, str]]:
    for config in CONFIGS:
        for op in OPS:
            for outcome in OUTCOMES:
                for policy in POLICIES:
                    yield config, op, outcome, policy


def test_the_model_only_settles_in_settled_states() -> None:
    """From any reachable configuration, any operation and outcome end in a settled state."""
    for config, op, outcome, policy in every_step():
        state, holders, _ = model_step(config.state, config.holders, op, outcome, on_repeat=policy)  # type: ignore[arg-type]
        assert state not in TRANSIENT
        assert holders.holds >= 0
        assert holders.owed >= 0


def test_every_row_of_the_table_is_used_by_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each (source, trigger) pair of stepfsm.states.TRANSITIONS is fired by some operation."""
    fired: set[tuple[State, str]] = set()
    real = kit.model.next_state

    def spy(state: State, trigger: str) -> State | None:
        fired.add((state, trigger))
        return real(state, trigger)

    monkeypatch.setattr(kit.model, "next_state", spy)
    for config, op, outcome, policy in every_step():
        model_step(config.state, config.holders, op, outcome, on_repeat=policy)  # type: ignore[arg-type]
    rows = {(source, row.trigger) for row in TRANSITIONS for source in row.sources}
    assert fired == rows


def test_the_model_follows_the_table_not_its_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing a row from the table breaks the model (it has no rules of its own)."""
    real = kit.model.next_state
    monkeypatch.setattr(
        kit.model, "next_state", lambda s, t: None if t == "finish_load" else real(s, t)
    )
    with pytest.raises(kit.ModelError, match="finish_load"):
        model_step(State.UNLOADED, kit.Holders(), "load")


def test_refusals_change_nothing_in_the_model() -> None:
    """Whenever the model refuses an operation (a StepStateError), nothing runs or changes."""
    for config, op, outcome, policy in every_step():
        state, holders, result = model_step(
            config.state,
            config.holders,
            op,
            outcome,
            on_repeat=policy,  # type: ignore[arg-type]
        )
        if result.error is not None and issubclass(result.error, StepStateError):
            assert (state, holders, result.ran) == (config.state, config.holders, ())


def test_model_idempotency_laws() -> None:
    """In the model: ensure_loaded and unload are idempotent, release∘acquire and reload behave."""
    ok = Outcome()
    for config in CONFIGS:

        def apply(c: Config, op: str) -> Config:
            state, holders, _ = model_step(c.state, c.holders, op, ok)  # type: ignore[arg-type]
            return Config(state, holders)

        once = apply(config, "ensure_loaded")
        assert apply(once, "ensure_loaded") == once
        once = apply(config, "unload")
        assert apply(once, "unload") == once
        if config.state is not State.FAILED:
            back = apply(apply(config, "acquire"), "release")
            assert (back.state, back.holders.holds) == (config.state, config.holders.holds)
        if config.state is State.LOADED:
            op = "reload_force" if config.holders.holds else "reload"
            state, _, result = model_step(config.state, config.holders, op, ok)  # type: ignore[arg-type]
            assert state is State.LOADED
            assert result.ran == (("unload", "ok"), ("load", "ok"))
