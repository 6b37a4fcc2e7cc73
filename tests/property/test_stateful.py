"""Random sequences of lifecycle operations on real steps, checked against the reference model.

``FakeLifecycle`` is the public :class:`stepfsm.testing.LifecycleMachine` (the
one users get from ``check_lifecycle``) driving ``CountingStep`` objects, plus
what only a fake allows: every operation, synchronous or awaited, with its
load, unload or clean-up raising or interrupted by ``KeyboardInterrupt``, a
count of the step's own calls (compared with the model's, so a load that runs
twice is caught) and of the resources each step holds. After every step
hypothesis checks, for every instance and its copies: the state and holders
equal the model's, the raised error class equals the model's (at the call), a
refused call changes nothing, and the resource is held exactly when the state
is ``loaded`` (in ``failed``, exactly when the fake's own accounting says the
failed code left it held). The machine's own rules add the awaited
operations, one at a time and as tasks at once with threads
(docs/design.md §10); ``AsyncFakeLifecycle`` runs all of it on
``AsyncCountingStep``, an async step.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

import pytest
from fsm_driver import LIFECYCLE_OPS
from fsm_fakes import (
    AsyncCountingStep,
    CountingStep,
    calls_of,
    forget_calls,
    held,
    open_count,
    planned,
    reset,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

from stepfsm.states import State
from stepfsm.testing import (
    OUTCOMES,
    STEP,
    AnyOp,
    LifecycleMachine,
    Outcome,
    Ran,
    Result,
    Tracked,
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
#: ci: at least 2,000 stateful examples (the issue's acceptance 1); dev: quick.
STATEFUL = settings(
    max_examples=2000 if PROFILE == "ci" else 100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
#: The operations that can run the step's own load/unload code (awaited ones too).
FAULTY_OPS: tuple[AnyOp, ...] = (
    *(op for op in LIFECYCLE_OPS if op != "use"),
    "aload",
    "aensure_loaded",
    "aunload",
    "aunload_force",
    "areload",
    "areload_force",
)
FAULTS = OUTCOMES[1:]  # every outcome in which some code raises or is interrupted


class FakeLifecycle(LifecycleMachine):
    """The kit's machine on CountingStep, with faults and exact call/resource accounting."""

    default_outcome: ClassVar[Outcome | None] = Outcome()
    wait_timeout: ClassVar[float | None] = 5.0  # the fakes are instant: a wait means stuck
    thread_timeout: ClassVar[float] = 10.0

    def make(self) -> Any:
        return CountingStep("step")

    def is_held(self, obj: Any) -> bool:
        return held(obj)

    def use(self, obj: Any) -> object:
        return obj.use()

    async def ause(self, obj: Any) -> object:
        return await obj.ause()

    def before_call(self, tracked: Tracked, op: AnyOp, outcome: Outcome | None) -> None:
        forget_calls(tracked.obj)

    def observed_calls(self, tracked: Tracked, thread: int) -> Ran | None:
        return calls_of(tracked.obj, thread)

    def expected_held(self, tracked: Tracked) -> bool | None:
        if tracked.config.state is not State.FAILED:
            tracked.data["held"] = tracked.config.state is State.LOADED
        return bool(tracked.data.get("held", False))

    def perform(
        self, step: int, op: AnyOp, outcome: Outcome | None = None, note: str = ""
    ) -> Result:
        tracked = self._pick(step)
        result = super().perform(step, op, outcome, note)
        holds = bool(tracked.data.get("held", False))
        for kind, how in result.ran:
            if how == "ok":  # the fake fails before touching its resource
                holds = kind == "load"
        tracked.data["held"] = holds
        if op in ("use", "ause") and result.error is None and not held(tracked.obj):
            self._fail(f"{tracked.name}'s guarded call ran although its resource was not held")
        return result

    examples: ClassVar[int] = 0  # examples run to the end (for the report)
    steps: ClassVar[int] = 0

    def teardown(self) -> None:
        super().teardown()
        reset()
        FakeLifecycle.examples += 1
        FakeLifecycle.steps += len(self.log)

    @rule(step=STEP, op=st.sampled_from(FAULTY_OPS), outcome=st.sampled_from(FAULTS))
    def with_fault(self, step: int, op: AnyOp, outcome: Outcome) -> None:
        """Run ``op`` while the step's own load/unload fails as ``outcome`` says."""
        with planned(self.instance(step), outcome):
            self.perform(step, op, outcome, note=f" [{outcome}]")

    @invariant()
    def each_loaded_step_holds_exactly_one_resource(self) -> None:
        """Every instance has as many open resources as the model allows: one if held, else none."""
        for tracked in self.tracked:
            expected = int(bool(self.expected_held(tracked)))
            if open_count(tracked.obj) != expected:
                self._fail(
                    f"{tracked.name} ('{tracked.config.state.value}') has "
                    f"{open_count(tracked.obj)} open resources, expected {expected}"
                )


@pytest.mark.usefixtures("quiet_log")
def test_random_operation_sequences_match_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    """Random operations, faults, copies and threads keep every step as the model says."""
    FakeLifecycle.examples = FakeLifecycle.steps = 0
    started = time.perf_counter()
    run_state_machine_as_test(FakeLifecycle, settings=STATEFUL)
    with capsys.disabled():
        print(
            f"\n[stateful] {FakeLifecycle.examples:,} examples, {FakeLifecycle.steps:,} steps "
            f"(profile {PROFILE}, {time.perf_counter() - started:.1f} s)"
        )
    assert FakeLifecycle.examples >= STATEFUL.max_examples


class AsyncFakeLifecycle(FakeLifecycle):
    """The same machine on AsyncCountingStep: an async step, every operation awaited."""

    def make(self) -> Any:
        return AsyncCountingStep("astep")


#: ci: at least 300 examples on the async step; dev: quick.
ASYNC_STATEFUL = settings(STATEFUL, max_examples=300 if PROFILE == "ci" else 40)


@pytest.mark.usefixtures("quiet_log")
def test_random_operations_on_an_async_step_match_the_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same on an async step: its own code on the callers' loops, faults and copies too."""
    FakeLifecycle.examples = FakeLifecycle.steps = 0
    started = time.perf_counter()
    run_state_machine_as_test(AsyncFakeLifecycle, settings=ASYNC_STATEFUL)
    with capsys.disabled():
        print(
            f"\n[stateful, async step] {FakeLifecycle.examples:,} examples, "
            f"{FakeLifecycle.steps:,} steps (profile {PROFILE}, "
            f"{time.perf_counter() - started:.1f} s)"
        )
    assert FakeLifecycle.examples >= ASYNC_STATEFUL.max_examples
