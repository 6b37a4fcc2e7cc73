"""Every sequence of lifecycle operations up to depth 6, compared with the reference model.

The actions are every operation (``load``, ``ensure_loaded``, ``unload``,
``unload(force=True)``, ``reload``, ``reload(force=True)``, ``acquire``,
``release``, a guarded call, ``copy``, ``deepcopy``, ``pickle``) with every
distinct fault of the step's own code (load/unload/clean-up raising or
interrupted) wherever the model says that code runs.

Depth 6 is checked by explicit-state search: a situation is the model's
configuration together with the real object's complete internal state
(:func:`fsm_driver.fingerprint`). Every (situation, action) pair is executed
on a real object (replaying a recorded prefix) and checked, and sequences that
reach the same situation share the check of their continuations; the number of
sequences is counted exactly along the way. Each pair is executed from two
different prefixes where two exist, and must give the same result, so hidden
state outside the fingerprint would show up. A second test replays every
sequence up to a smaller depth from scratch, with no merging at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fsm_driver import Action, Subject, act, alphabet, describe, dispose, fingerprint, replay, run

import stepfsm
from stepfsm.testing import Config

if TYPE_CHECKING:
    from stepfsm._settings import OnRepeat

CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci"
DEPTH = 6
TESTING_DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
BRUTE_DEPTH = 3 if CI else 2
#: Prefixes each (situation, action) pair is executed from (2 checks determinism).
PREFIXES = 2 if CI else 1

Situation = Hashable


@pytest.fixture(autouse=True)
def _lean(quiet_log: None) -> Iterator[None]:
    """Planned failures: keep their log records out of the capture and their exceptions unkept.

    ``history=1`` keeps only each lifecycle's last record, which after the
    forced unload that ends every run holds no exception (bug B2 in
    MUTANTS.md: a kept exception keeps its step alive, which slows gc).
    """
    with stepfsm.configure(history=1):
        yield


def situation(subject: Subject) -> Situation:
    """The model's configuration and the real object's complete internal state."""
    return (subject.config, subject.holds_resource, fingerprint(subject.step))


def explore(depth: int, on_repeat: OnRepeat, prefixes_per: int = PREFIXES) -> tuple[int, int, int]:
    """Check every sequence of length 1..depth; return (sequences, situations, checked calls)."""
    first = run((), on_repeat)
    root = situation(first)
    dispose(first)
    prefixes: dict[Situation, list[tuple[Action, ...]]] = {root: [()]}
    edges: dict[Situation, list[Situation]] = {}
    layer = [root]
    checked = 0
    for _ in range(depth):
        following: list[Situation] = []
        for here in dict.fromkeys(layer):
            if here in edges:
                continue
            config, holds, _ = here  # type: ignore[misc]
            targets: list[Situation] = []
            for action in alphabet(config, on_repeat):
                reached: set[Situation] = set()
                for prefix in prefixes[here][:prefixes_per]:
                    subject = replay(prefix, on_repeat, config, holds)
                    assert situation(subject) == here, (
                        f"replaying {subject.log} did not reach the same situation again"
                    )
                    act(subject, action)
                    checked += 1
                    there = situation(subject)
                    dispose(subject)
                    reached.add(there)
                    known = prefixes.setdefault(there, [])
                    if len(known) < 2:
                        known.append((*prefix, action))
                assert len(reached) == 1, (
                    f"{describe(action)} from one situation reached {len(reached)} different "
                    f"ones (prefixes {prefixes[here][:prefixes_per]}): the real object has "
                    "state that the model and the fingerprint do not see"
                )
                targets.append(reached.pop())
            edges[here] = targets
            following.extend(targets)
        layer = following
    memo: dict[tuple[Situation, int], int] = {}

    def count(here: Situation, left: int) -> int:
        """Sequences of length 1..left starting at ``here``."""
        if left == 0:
            return 0
        key = (here, left)
        if key not in memo:
            memo[key] = sum(1 + count(there, left - 1) for there in edges[here])
        return memo[key]

    return count(root, depth), len(prefixes), checked


def brute_force(depth: int, on_repeat: OnRepeat) -> int:
    """Check every sequence of length 1..depth one by one (no merging); return how many."""
    checked = 0

    def extend(prefix: tuple[Action, ...], config: Config, holds: bool) -> None:
        nonlocal checked
        for action in alphabet(config, on_repeat):
            subject = replay(prefix, on_repeat, config, holds)
            act(subject, action)
            checked += 1
            after, held_after = subject.config, subject.holds_resource
            dispose(subject)
            if len(prefix) + 1 < depth:
                extend((*prefix, action), after, held_after)

    extend((), Config(), False)
    return checked


@pytest.mark.parametrize("on_repeat", ["raise", "warn", "ignore"])
def test_every_sequence_to_depth_6_matches_the_model(
    on_repeat: OnRepeat, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every sequence of up to six operations (faults included) behaves as the model says."""
    started = time.perf_counter()
    depth = DEPTH if CI or on_repeat == "raise" else 4
    sequences, situations, checked = explore(depth, on_repeat)
    took = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n[exhaustive on_repeat={on_repeat}] {sequences:,} sequences of length 1..{depth} "
            f"checked ({situations} distinct situations, {checked:,} checked calls, "
            f"{took:.1f} s)"
        )
    assert sequences > (1_000_000 if depth == DEPTH else 10_000)
    if depth == DEPTH and on_repeat == "raise":  # the figure docs/testing.md quotes
        quoted = f"{sequences:,} sequences of length 1..{DEPTH}"
        assert quoted in " ".join(TESTING_DOC.read_text(encoding="utf-8").split()), (
            f"docs/testing.md must quote the count this test checks: {sequences:,}"
        )


def test_every_short_sequence_replayed_from_scratch(capsys: pytest.CaptureFixture[str]) -> None:
    """Every short sequence replayed one by one agrees with the model and the merged count."""
    started = time.perf_counter()
    checked = brute_force(BRUTE_DEPTH, "raise")
    with capsys.disabled():
        print(
            f"\n[exhaustive, no merging] {checked:,} sequences of length 1..{BRUTE_DEPTH} "
            f"replayed one by one ({time.perf_counter() - started:.1f} s)"
        )
    merged, _, _ = explore(BRUTE_DEPTH, "raise")
    assert checked == merged
