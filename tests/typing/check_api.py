"""Static checks of the module-level API's types (mypy only; never run, never collected).

Run from the repository root: ``.venv/bin/mypy --strict tests/typing``. Each
``assert_type`` fails the check when a type drifts; each
``# type: ignore[code]`` marks a line that must NOT type-check, and
``warn-unused-ignores`` fails the check once that line is accepted.
"""

# mypy: warn-unused-ignores, enable-error-code="ignore-without-code"

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from typing_extensions import assert_type

import stepfsm
from stepfsm import LifecycleStatistics


@stepfsm.stateful(guard=("generate",))
class LLM:
    def load(self) -> str:
        return "weights"

    def unload(self) -> None:
        pass

    def generate(self, prompt: str) -> str:
        return prompt


def check_loaded(step: LLM) -> None:
    with stepfsm.loaded(step) as held:
        assert_type(held, LLM)
        assert_type(held.generate("hi"), str)
        _ = held.nope  # type: ignore[attr-defined]  # the step's own type, not Any


async def check_async(step: LLM) -> None:
    async with stepfsm.aloaded(step) as held:
        assert_type(held, LLM)
        assert_type(held.generate("hi"), str)
        _ = held.nope  # type: ignore[attr-defined]  # the step's own type, not Any
    assert_type(stepfsm.aloaded(step), stepfsm.AsyncLoaded[LLM])
    assert_type(await stepfsm.aensure_loaded(step), bool)
    assert_type(await stepfsm.aload(step), Any)
    assert_type(await stepfsm.aunload(step), Any)
    assert_type(await stepfsm.aunload(step, force=True), Any)
    assert_type(await stepfsm.areload(step), Any)
    lc = stepfsm.lifecycle(step)
    assert_type(await lc.aensure_loaded(), bool)
    assert_type(await lc.aload(), Any)
    assert_type(await lc.aunload(), Any)
    assert_type(await lc.areload(force=True), Any)
    assert_type(await lc.arequire_loaded(), None)
    async with lc.aloaded() as any_held:  # typed Any, as lc.loaded()
        assert_type(any_held, Any)
    with stepfsm.aloaded(step):  # type: ignore[attr-defined]  # needs async with
        pass
    group = stepfsm.group(step)
    assert_type(await group.aload(), None)
    assert_type(await group.aensure_loaded(), tuple[str, ...])
    assert_type(await group.aunload(), tuple[str, ...])
    async with group as same:
        assert_type(same, stepfsm.Group)


def check_queries(step: LLM) -> None:
    assert_type(stepfsm.lifecycle(step), stepfsm.Lifecycle)
    assert_type(stepfsm.state(step), stepfsm.State)
    assert_type(stepfsm.is_loaded(step), bool)
    assert_type(stepfsm.ensure_loaded(step), bool)
    assert_type(stepfsm.is_stateful(step), bool)
    assert_type(stepfsm.is_stateful(LLM), bool)
    assert_type(stepfsm.unload_all(), stepfsm.Unloaded)
    names: tuple[str, ...] = stepfsm.unload_all()  # still a tuple of names
    assert_type(names, tuple[str, ...])
    assert_type(stepfsm.unload_all().bytes_freed, int)
    # reload() returns what the step's load returned, but is typed Any (the
    # step's type is not carried by the module-level function).
    assert_type(stepfsm.reload(step), Any)
    assert_type(stepfsm.reload(step, force=True), Any)


def check_lifecycle(step: LLM) -> None:
    lc = stepfsm.lifecycle(step)
    assert_type(lc.state, stepfsm.State)
    assert_type(lc.step, object)
    assert_type(lc.name, str)
    assert_type(lc.since, datetime.datetime | None)
    assert_type(lc.error, BaseException | None)
    assert_type(lc.cleanup_error, BaseException | None)
    assert_type(lc.holders, tuple[str, ...])
    assert_type(lc.history, tuple[stepfsm.TransitionRecord, ...])
    assert_type(lc.last_load_seconds, float | None)
    assert_type(lc.timeout, float | None)
    assert_type(lc.ensure_loaded(), bool)
    assert_type(lc.acquire("me"), None)
    assert_type(lc.release("me"), None)
    assert_type(lc.require_loaded(), None)
    # What the step's own load/unload returned comes back as Any: the Lifecycle
    # is not generic in its step (step.load() itself keeps its type: check_classes).
    assert_type(lc.load(), Any)
    assert_type(lc.unload(), Any)
    assert_type(lc.unload(force=True), Any)
    assert_type(lc.reload(), Any)
    with lc.loaded() as held:  # yields the step, typed Any (stepfsm.loaded() keeps the type)
        assert_type(held, Any)
    lc.on_repeat = "warn"
    lc.on_repeat = None
    lc.on_unloaded_use = "ignore"
    lc.timeout = 2.5
    lc.timeout = None
    lc.on_repeat = "loud"  # type: ignore[assignment]
    lc.on_unloaded_use = "sometimes"  # type: ignore[assignment]


def check_statistics(step: LLM) -> None:
    stats = stepfsm.lifecycle(step).statistics()
    assert_type(stats, LifecycleStatistics)
    assert_type(stats.state, stepfsm.State)
    assert_type(stats.holders, tuple[str, ...])
    assert_type(stats.waiting, int)
    assert_type(stats.owner, int | None)
    assert_type(stats.running_user_code, bool)
    assert_type(stats.since, float | None)  # time.time(), unlike Lifecycle.since
    stats.waiting = 0  # type: ignore[misc]  # a frozen snapshot


def check_history(step: LLM) -> None:
    for record in stepfsm.lifecycle(step).history:
        assert_type(record.trigger, str)
        assert_type(record.source, stepfsm.State)
        assert_type(record.dest, stepfsm.State)
        assert_type(record.started, float)
        assert_type(record.duration, float)
        assert_type(record.thread, int)
        assert_type(record.error, BaseException | None)


def on_transition(lc: stepfsm.Lifecycle, record: stepfsm.TransitionRecord) -> None:
    pass


def no_arguments() -> None:
    pass


def check_subscribe(step: LLM) -> None:
    unsubscribe = stepfsm.subscribe(on_transition)
    assert_type(unsubscribe, Callable[[], None])
    assert_type(unsubscribe(), None)
    assert_type(stepfsm.lifecycle(step).subscribe(on_transition), Callable[[], None])
    stepfsm.subscribe(lambda lc, record: None)
    stepfsm.subscribe(no_arguments)  # type: ignore[arg-type]
    stepfsm.lifecycle(step).subscribe(no_arguments)  # type: ignore[arg-type]


def check_status() -> None:
    table = stepfsm.status()
    assert_type(table, stepfsm.Status)
    assert_type(str(table), str)
    assert_type(table[0], stepfsm.StepStatus)
    for row in table:
        assert_type(row, stepfsm.StepStatus)
        assert_type(row.name, str)
        assert_type(row.cls, str)
        assert_type(row.state, stepfsm.State)
        assert_type(row.since, datetime.datetime | None)
        assert_type(row.load_seconds, float | None)
        assert_type(row.holders, int)
        row.holders = 0  # type: ignore[misc]  # a row is read-only


def check_configure() -> None:
    handle = stepfsm.configure(on_repeat="warn", on_unloaded_use="ignore", timeout=1.0)
    assert_type(handle, stepfsm.Configured)
    assert_type(handle.restore(), None)
    with stepfsm.configure(history=8) as scoped:
        assert_type(scoped, stepfsm.Configured)
    stepfsm.configure(on_repeat="loud")  # type: ignore[arg-type]
    stepfsm.configure(history="8")  # type: ignore[arg-type]
    stepfsm.configure("warn")  # type: ignore[call-arg]  # keyword-only


def check_state_enum(step: LLM) -> None:
    assert_type(stepfsm.State("loaded"), stepfsm.State)
    assert_type(stepfsm.state(step).value, str)
    assert_type(stepfsm.state(step) is stepfsm.State.LOADED, bool)


def check_diagram(step: LLM) -> None:
    assert_type(stepfsm.diagram(), str)
    assert_type(stepfsm.diagram(step, format="dot"), str)
    assert_type(stepfsm.diagram(LLM, format="svg"), str)
    assert_type(stepfsm.diagram(stepfsm.status(), format="png"), bytes)


def check_drain(step: LLM) -> None:
    lc = stepfsm.lifecycle(step)
    assert_type(lc.drain_timeout, float | None)
    lc.drain_timeout = 2.5
    lc.drain_timeout = "soon"  # type: ignore[assignment]
    stepfsm.configure(drain_timeout=None)
    try:
        lc.unload()
    except stepfsm.StepInUseError as error:
        assert_type(error.calls, tuple[stepfsm.RunningCall, ...])
        assert_type(error.waited, float | None)
        for call in error.calls:
            assert_type(call.method, str | None)
            assert_type(call.since, float)
