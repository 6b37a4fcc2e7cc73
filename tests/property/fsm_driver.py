"""Drive one real CountingStep through actions and check each against the reference model.

An *action* is ``(name, outcome)``: a model operation (``stepfsm.testing.OPS``)
or a copy (``copy.copy``, ``copy.deepcopy``, ``pickle``), and how the step's
own code ends during it. :func:`alphabet` lists the actions worth trying from a
configuration: one per distinct behaviour the model predicts, so a fault is
only varied where the model says code runs. :func:`act` runs one action and
checks everything the issue lists; :func:`fingerprint` freezes the complete
internal state of the real object (every ``Lifecycle`` slot except clocks,
history and wiring) so the exhaustive search can merge identical situations.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import traceback
import warnings
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fsm_fakes import (
    AsyncCountingStep,
    Boom,
    CountingStep,
    calls_of,
    drop_resources,
    forget_calls,
    held,
    open_count,
    planned,
)

import stepfsm
from stepfsm.machine import Lifecycle
from stepfsm.states import State
from stepfsm.testing import (
    ASYNC_OPS,
    OPS,
    Config,
    Observed,
    Op,
    Outcome,
    Result,
    aperform,
    candidates,
    mismatches,
    perform,
)
from stepfsm.testing.observer import LoopThread

COPIES = ("copy.copy", "copy.deepcopy", "pickle")
WAIT_TIMEOUT = 5.0
NO_FAULT = Outcome()
Action = tuple[str, Outcome]
#: The model's operations on the step itself (a copy is an action of its own here).
LIFECYCLE_OPS: tuple[Op, ...] = tuple(op for op in OPS if op != "copy")

#: Lifecycle slots that do not decide future behaviour (clocks, records, wiring).
_NOT_STATE = frozenset(
    {
        "__weakref__",
        "owner_ref",
        "_cfg",
        "_since",
        "_began",
        "_load_s",
        "_history",
        "_listeners",
        "_outbox",
        "_waiters",
        "_token",  # a fresh object per load (what running guarded calls hold)
    }
)


def describe(action: Action) -> str:
    """``"load"``, ``"unload(force=True)"``, ``"reload [unload raises]"``…"""
    name, outcome = action
    text = {"unload_force": "unload(force=True)", "reload_force": "reload(force=True)"}.get(
        name, name
    )
    return text if outcome == NO_FAULT else f"{text} [{outcome}]"


def forget_frames(error: BaseException | None) -> None:
    """Clear the locals of an observed exception's frames (and its causes').

    A failed step keeps its exception as ``lifecycle.error``; its frames hold
    the step, and the registry holds the lifecycle, so without this every
    step left failed would stay alive (see bug B2 in MUTANTS.md's notes).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def alphabet(config: Config, on_repeat: stepfsm._settings.OnRepeat = "raise") -> list[Action]:
    """Every distinct action from ``config``: faults vary only where the model runs code."""
    actions: list[Action] = []
    for op in LIFECYCLE_OPS:
        for outcome, _, _ in candidates(config, op, on_repeat=on_repeat):
            actions.append((op, outcome))
    actions.extend((how, NO_FAULT) for how in COPIES)
    return actions


def _freeze(value: Any, depth: int = 0) -> Hashable:
    if value is None or isinstance(value, (bool, int, str, State)):
        return value
    if isinstance(value, BaseException):
        return ("exception", type(value).__name__)
    if isinstance(value, Lifecycle) or depth > 4:
        return type(value).__name__
    if isinstance(value, (list, tuple, deque)):
        return tuple(_freeze(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((repr(_freeze(k)), _freeze(v, depth + 1)) for k, v in value.items()))
    slots = getattr(type(value), "__slots__", None)
    if slots and not isinstance(value, (CountingStep, AsyncCountingStep)):
        return (type(value).__name__, *(_freeze(getattr(value, s, None), depth + 1) for s in slots))
    return type(value).__name__


def fingerprint(step: CountingStep | AsyncCountingStep) -> Hashable:
    """The real object's full situation: lifecycle slots (not clocks) and what it holds."""
    lc = stepfsm.lifecycle(step)
    slots = tuple(
        (name, _freeze(getattr(lc, name, None)))
        for name in sorted(Lifecycle.__slots__)
        if name not in _NOT_STATE
    )
    return (slots, held(step), open_count(step))


@dataclass
class Subject:
    """One real step and what the model says about it."""

    step: CountingStep | AsyncCountingStep
    on_repeat: stepfsm._settings.OnRepeat = "raise"
    config: Config = field(default_factory=Config)
    holds_resource: bool = False
    log: list[str] = field(default_factory=list)
    #: runs awaited actions (``aload``...): needed for those, and for an async step
    loop: LoopThread | None = None
    #: the ``async with aloaded()`` blocks ``aenter`` actions left open
    blocks: list[Any] = field(default_factory=list)

    @classmethod
    def fresh(
        cls,
        on_repeat: stepfsm._settings.OnRepeat = "raise",
        *,
        kind: type[CountingStep | AsyncCountingStep] = CountingStep,
        loop: LoopThread | None = None,
    ) -> Subject:
        step = kind("subject")
        drop_resources(step)  # left by an earlier, failed, example whose step had this id
        lc = stepfsm.lifecycle(step)
        lc.timeout = WAIT_TIMEOUT  # the fake is instant: a wait means a stuck state
        if on_repeat != "raise":
            lc.on_repeat = on_repeat
        return cls(step, on_repeat, loop=loop)

    def perform(self, op: Op | str) -> Observed:
        """Run ``op`` on the real step (an awaited one on :attr:`loop`)."""
        if op in ASYNC_OPS:
            assert self.loop is not None, f"{op} needs Subject.loop"
            observed: Observed = self.loop.run(
                aperform(self.step, op, ause=ause_step, use=use_step, blocks=self.blocks),  # type: ignore[arg-type]
                WAIT_TIMEOUT * 2,
            )
            return observed
        return perform(self.step, op, use=use_step)  # type: ignore[arg-type]

    def fail(self, message: str) -> None:
        raise AssertionError(f"after [{', '.join(self.log)}]: {message}")


def act(subject: Subject, action: Action) -> Result:
    """Run ``action`` on the subject's real step and check it against the model."""
    name, outcome = action
    subject.log.append(describe(action))
    if name in COPIES:
        _check_copy(subject, name)
        return Result()
    op: Op = name  # type: ignore[assignment]
    step = subject.step
    lc = stepfsm.lifecycle(step)
    before = fingerprint(step)
    history_before = lc.history
    forget_calls(step)
    with planned(step, outcome):
        observed = subject.perform(op)
    forget_frames(observed.error)
    ran = calls_of(step)
    observed = Observed(observed.error, observed.returned, observed.warnings, ran)
    ((_, after, result),) = candidates(
        subject.config, op, on_repeat=subject.on_repeat, outcome=outcome
    )
    problems = mismatches(result, op, observed)
    if lc.state is not after.state:
        problems.append(f"the step is '{lc.state.value}', expected '{after.state.value}'")
    if len(lc.holders) != after.holders.holds:
        problems.append(f"it has {len(lc.holders)} holders, expected {after.holders.holds}")
    for kind, how in result.ran:
        if how == "ok":
            subject.holds_resource = kind == "load"
    expect_held = subject.holds_resource
    if after.state is State.LOADED and not expect_held:
        problems.append("the model says loaded but the fake's accounting says not held")
    if held(step) is not expect_held or open_count(step) != int(expect_held):
        problems.append(
            f"the resource is {'held' if held(step) else 'not held'} "
            f"({open_count(step)} open), expected {'held' if expect_held else 'not held'}"
        )
    error = observed.error
    if op in ("use", "ause") and error is None and observed.returned is not True:
        problems.append("the guarded call ran although the resource was not held")
    if isinstance(error, stepfsm.StepStateError):
        if fingerprint(step) != before or lc.history != history_before:
            problems.append(f"the refused call ({type(error).__name__}) changed the step")
        if error.state is not subject.config.state:
            problems.append(f"{type(error).__name__}.state is {error.state!r}")
    if isinstance(error, stepfsm.TransitionError) and (
        not isinstance(error.__cause__, Boom) or "Boom" not in str(error)
    ):
        problems.append(f"{type(error).__name__} is not chained to the Boom: {error!r}")
    if lc.state is State.FAILED and not isinstance(lc.error, (Boom, KeyboardInterrupt)):
        problems.append(f"'failed' but lifecycle.error is {lc.error!r}")
    if problems:
        where = f"{describe(action)} from '{subject.config.state.value}'"
        subject.fail(f"{where}: " + "; ".join(problems))
    subject.config = after
    return result


def _check_copy(subject: Subject, how: str) -> None:
    step = subject.step
    before = fingerprint(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if how == "copy.copy":
            twin = copy.copy(step)
        elif how == "copy.deepcopy":
            twin = copy.deepcopy(step)
        else:
            twin = pickle.loads(pickle.dumps(step))
    lc = stepfsm.lifecycle(twin)
    if lc.state is not State.UNLOADED or lc.holders or held(twin):
        subject.fail(f"the {how} is '{lc.state.value}', holders {lc.holders}, held={held(twin)}")
    if twin.resource is not None and twin.resource is step.resource:
        subject.fail(f"the {how} shares the original's resource object")
    twin.load()
    if not held(twin) or twin.resource is step.resource:
        subject.fail(f"the {how} did not load its own resource")
    twin.unload()
    if held(twin) or fingerprint(step) != before:
        subject.fail(f"loading and unloading the {how} changed the original")
    forget_calls(twin)


def run(actions: Sequence[Action], on_repeat: stepfsm._settings.OnRepeat = "raise") -> Subject:
    """Run ``actions`` on a fresh subject, checking each; return the subject."""
    subject = Subject.fresh(on_repeat)
    for action in actions:
        act(subject, action)
    return subject


def replay(
    actions: Sequence[Action],
    on_repeat: stepfsm._settings.OnRepeat,
    config: Config,
    holds_resource: bool,
) -> Subject:
    """Run already-checked ``actions`` on a fresh subject without checking them again.

    The caller passes what the checked run ended in; copies are skipped (they
    leave the original as it was) and the log still names every action.
    """
    subject = Subject.fresh(on_repeat)
    step = subject.step
    for name, outcome in actions:
        subject.log.append(describe((name, outcome)))
        if name in COPIES:
            continue
        with planned(step, outcome):
            forget_frames(perform(step, name, use=use_step).error)  # type: ignore[arg-type]
    forget_calls(step)
    subject.config = config
    subject.holds_resource = holds_resource
    return subject


def use_step(step: Any) -> object:
    """The guarded use of a CountingStep (its ``use()``)."""
    return step.use()


async def ause_step(step: Any) -> object:
    """The awaited guarded use of a CountingStep (its ``async def ause()``)."""
    return await step.ause()


def dispose(subject: Subject) -> None:
    """Unload the subject's step (forced, its code succeeding) and forget what it recorded."""
    step = subject.step
    lc = stepfsm.lifecycle(step)
    with planned(step, NO_FAULT), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.suppress(stepfsm.TransitionInProgressError):
            if isinstance(step, AsyncCountingStep):
                assert subject.loop is not None
                subject.loop.run(lc.aunload(force=True), WAIT_TIMEOUT * 2)
            else:
                lc.unload(force=True)
    subject.blocks.clear()
    forget_calls(step)
    drop_resources(step)


def observed_state(step: CountingStep | AsyncCountingStep) -> tuple[State, int, bool, int]:
    """(state, holders, held, open resources) of a real step."""
    lc = stepfsm.lifecycle(step)
    return lc.state, len(lc.holders), held(step), open_count(step)
