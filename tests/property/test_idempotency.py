"""Idempotency laws of the lifecycle, on real steps reached by random (checked) histories.

Stated as laws, each from any configuration a random sequence of operations
(faults included) can reach:

* ``ensure_loaded ∘ ensure_loaded = ensure_loaded``
* ``unload ∘ unload = unload``
* ``release ∘ acquire`` restores the holder count and the state (from
  ``unloaded`` and ``loaded``; from ``failed`` the acquire cleans up and
  loads, so the pair ends ``unloaded``, or ``loaded`` if other holders remain)
* ``reload`` from ``loaded`` ends ``loaded`` with exactly one (new) resource
* under ``on_repeat="warn"``/``"ignore"`` a repeated ``load()`` leaves the
  resource untouched

Every call is also checked against the reference model as it runs (fsm_driver.act).
"""

from __future__ import annotations

import weakref

import pytest
from fsm_driver import NO_FAULT, Action, Subject, act, alphabet, dispose, observed_state, run
from fsm_fakes import held, open_count
from hypothesis import given
from hypothesis import strategies as st

import stepfsm
from stepfsm.states import State
from stepfsm.testing import Config, candidates

pytestmark = pytest.mark.usefixtures("quiet_log")


@st.composite
def histories(draw: st.DrawFn, max_size: int = 6) -> tuple[Action, ...]:
    """A random sequence of operations (faults included), each legal to try from where it is."""
    actions: list[Action] = []
    config = Config()
    for _ in range(draw(st.integers(min_value=0, max_value=max_size))):
        choices = [a for a in alphabet(config) if a[0] not in ("copy.copy", "copy.deepcopy")]
        action = draw(st.sampled_from(choices))
        actions.append(action)
        if action[0] != "pickle":
            ((_, config, _),) = candidates(config, action[0], outcome=action[1])  # type: ignore[arg-type]
    return tuple(actions)


def twice_equals_once(history: tuple[Action, ...], op: str) -> None:
    """Doing ``op`` twice leaves a fresh replay of ``history`` as doing it once does."""
    once = run(history)
    act(once, (op, NO_FAULT))
    twice = run(history)
    act(twice, (op, NO_FAULT))
    second = act(twice, (op, NO_FAULT))
    assert observed_state(twice.step) == observed_state(once.step), twice.log
    assert second.ran == (), f"the second {op} ran the step's code: {twice.log}"
    dispose(once)
    dispose(twice)


@given(histories())
def test_ensure_loaded_is_idempotent(history: tuple[Action, ...]) -> None:
    """ensure_loaded ∘ ensure_loaded = ensure_loaded, and the second call returns False."""
    twice_equals_once(history, "ensure_loaded")
    subject = run(history)
    act(subject, ("ensure_loaded", NO_FAULT))
    assert act(subject, ("ensure_loaded", NO_FAULT)).returned is False
    dispose(subject)


@given(histories())
def test_unload_is_idempotent(history: tuple[Action, ...]) -> None:
    """unload ∘ unload = unload (also when holders make both refuse)."""
    twice_equals_once(history, "unload")


@given(histories())
def test_release_after_acquire_restores_holders_and_state(history: tuple[Action, ...]) -> None:
    """release ∘ acquire restores the holder count and the state (a failed step is cleaned up)."""
    subject = run(history)
    state, holders, was_held, _ = observed_state(subject.step)
    act(subject, ("acquire", NO_FAULT))
    act(subject, ("release", NO_FAULT))
    after = observed_state(subject.step)
    if state is State.FAILED:  # the acquire cleaned up and loaded; the release lets it go
        if holders:
            assert after == (State.LOADED, holders, True, 1), subject.log
        else:
            assert after == (State.UNLOADED, 0, False, 0), subject.log
    else:
        assert after == (state, holders, was_held, int(was_held)), subject.log
    dispose(subject)


@given(histories())
def test_reload_from_loaded_ends_loaded_with_exactly_one_resource(
    history: tuple[Action, ...],
) -> None:
    """reload() from loaded (forced if held) ends loaded holding exactly one, new, resource."""
    subject = run(history)
    if subject.config.state is not State.LOADED:
        act(subject, ("ensure_loaded", NO_FAULT))
    # weakly: a strong reference would make the unload's release check see the old
    # resource survive, and search the heap for its referrers (a full collection)
    old = weakref.ref(subject.step.resource)
    op = "reload_force" if subject.config.holders.holds else "reload"
    result = act(subject, (op, NO_FAULT))
    assert result.ran == (("unload", "ok"), ("load", "ok"))
    assert stepfsm.state(subject.step) is State.LOADED
    assert held(subject.step)
    assert open_count(subject.step) == 1
    assert subject.step.resource is not old()
    dispose(subject)


@pytest.mark.parametrize("policy", ["warn", "ignore"])
@given(history=histories())
def test_repeated_load_is_a_no_op_on_the_resource(
    policy: stepfsm._settings.OnRepeat, history: tuple[Action, ...]
) -> None:
    """Under on_repeat='warn'/'ignore', load() on a loaded step keeps the very same resource."""
    subject = Subject.fresh(policy)
    for action in history:
        act(subject, action)
    if subject.config.state is not State.LOADED:
        act(subject, ("ensure_loaded", NO_FAULT))
    resource = subject.step.resource
    for _ in range(2):
        result = act(subject, ("load", NO_FAULT))
        assert result.ran == ()
        assert result.warning is (stepfsm.RepeatedLoadWarning if policy == "warn" else None)
        assert subject.step.resource is resource
        assert open_count(subject.step) == 1
    del resource  # else the unload's release check sees it survive (a heap search)
    dispose(subject)
