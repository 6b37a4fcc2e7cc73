"""The reference model: the lifecycle as a pure function of a settled step.

:func:`model_step` is ``(state, holders, op, outcome) -> (state', holders',
result)``. Every state it moves to comes from :data:`stepfsm.states.TRANSITIONS`
(through :func:`stepfsm.states.next_state`); which transitions an operation
fires, and what it returns or raises, is docs/design.md §2. An awaited
operation (``aload``, ...) is judged as its synchronous twin
(:data:`~stepfsm.testing.SYNC_TWIN`): docs/design.md §10 adds no rule of its own.
:func:`candidates` lists what an operation may do when the outcome is not known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, NamedTuple

from ..errors import (
    AlreadyLoadedError,
    CleanupWarning,
    LoadError,
    NotLoadedError,
    RepeatedLoadWarning,
    StepFailedError,
    StepInUseError,
    StepStateError,
    UnloadError,
)
from ..states import INITIAL, State, next_state
from ._ops import OPS, OUTCOMES, AnyOp, Behaviour, Kind, Outcome, Ran, model_op

if TYPE_CHECKING:
    from ._ops import OnRepeat

__all__ = ["Config", "Holders", "ModelError", "Result", "candidates", "model_step"]

_NO_FAULT: Final = Outcome()


class Holders(NamedTuple):
    """The holder bookkeeping of one step (docs/design.md §2, "Holders").

    Attributes:
        holds: live holds (``acquire()`` / ``loaded()`` without a ``release()`` yet).
        by_acquire: the current load was done by an ``acquire()``, so the last
            ``release()`` unloads.
        owed: releases still owed by holders a forced unload evicted (no-ops).
    """

    holds: int = 0
    by_acquire: bool = False
    owed: int = 0


class Config(NamedTuple):
    """A settled step as the model sees it: its state and its holders."""

    state: State = INITIAL
    holders: Holders = Holders()


class Result(NamedTuple):
    """What an operation gives its caller, according to the model.

    Attributes:
        error: the exception class the call raises (``None``: it returns).
        returned: what ``ensure_loaded()`` returns (``None`` for the others).
        ran: the step's own code that runs, in order, with how each call ends.
        warning: the ``StepFSMWarning`` subclass the call emits, if any.
    """

    error: type[BaseException] | None = None
    returned: bool | None = None
    ran: Ran = ()
    warning: type[Warning] | None = None


class ModelError(AssertionError):
    """The model asked for a transition that the table in ``stepfsm.states`` does not have."""


class _Run:
    """One operation being applied by the model: the state moves only through the table."""

    def __init__(self, state: State, holders: Holders, outcome: Outcome) -> None:
        self.state = state
        self.holders = holders
        self.outcome = outcome
        self.ran: list[tuple[Kind, Behaviour]] = []

    def fire(self, trigger: str) -> None:
        dest = next_state(self.state, trigger)
        if dest is None:
            raise ModelError(f"the table has no {trigger!r} from {self.state.value!r}")
        self.state = dest

    def call(self, kind: Kind) -> Behaviour:
        """Run the step's own ``kind`` code: ``begin_*``, then ``finish_*`` or ``fail``."""
        how = self.outcome.load if kind == "load" else self.outcome.unload
        self.fire(f"begin_{kind}")
        self.ran.append((kind, how))
        self.fire(f"finish_{kind}" if how == "ok" else "fail")
        if how == "ok" and kind == "unload":
            self.holders = self.holders._replace(by_acquire=False)
        return how

    def evict(self) -> None:
        held = self.holders
        self.holders = held._replace(holds=0, owed=held.owed + held.holds)

    def ensure(self) -> tuple[type[BaseException] | None, bool]:
        """Make the step ``loaded`` (cleaning up a ``failed`` one first); (error, load ran)."""
        if self.state is State.LOADED:
            return None, False
        if self.state is State.FAILED:
            cleanup = self.call("unload")
            if cleanup != "ok":
                return _raised(cleanup, LoadError), False
        return _raised(self.call("load"), LoadError), True


def _raised(how: Behaviour, error: type[BaseException]) -> type[BaseException] | None:
    if how == "ok":
        return None
    return error if how == "error" else KeyboardInterrupt


def model_step(
    state: State,
    holders: Holders,
    op: AnyOp,
    outcome: Outcome = _NO_FAULT,
    *,
    on_repeat: OnRepeat = "raise",
) -> tuple[State, Holders, Result]:
    """Apply ``op`` to a settled step: the reference model of docs/design.md §2.

    Args:
        state: the step's settled state (never ``loading``/``unloading``).
        holders: its holder bookkeeping.
        op: the operation (``unload_force`` is ``unload(force=True)``); an
            awaited one (``aload``...) is judged as its synchronous twin.
        outcome: how the step's own load/unload code ends if it runs.
        on_repeat: the step's ``on_repeat`` policy.

    Returns:
        ``(state', holders', result)``.

    Raises:
        ModelError: the table has no transition the operation needs (a model bug).
    """
    op = model_op(op)
    run = _Run(state, holders, outcome)
    error: type[BaseException] | None = None
    returned: bool | None = None
    warning: type[Warning] | None = None
    loaded = state is State.LOADED
    if op == "load":
        if not loaded:
            error, _ = run.ensure()
        elif on_repeat == "raise":
            error = AlreadyLoadedError
        elif on_repeat == "warn":
            warning = RepeatedLoadWarning
    elif op == "ensure_loaded":
        error, ran = run.ensure()
        returned = ran if error is None else None
    elif op in ("unload", "unload_force"):
        force = op == "unload_force"
        if state is not State.UNLOADED and holders.holds and not force:
            error = StepInUseError  # also from 'failed': a forced reload that failed keeps holds
        elif state is not State.UNLOADED:
            if force:
                run.evict()
            how = run.call("unload")
            if loaded:
                error = _raised(how, UnloadError)
            elif how == "error":  # a failed clean-up keeps the first error and warns
                warning = CleanupWarning
            elif how == "interrupt":
                error = KeyboardInterrupt
    elif op in ("reload", "reload_force"):
        if state is not State.UNLOADED and holders.holds and op == "reload":
            error = StepInUseError
        else:
            acquired = holders.by_acquire  # holders keep their hold across a forced reload
            if loaded:
                error = _raised(run.call("unload"), UnloadError)
            if error is None:
                error, _ = run.ensure()
            if error is None:  # ... and the last release still unloads what they loaded
                run.holders = run.holders._replace(by_acquire=acquired and holders.holds > 0)
    elif op == "acquire":
        error, ran = run.ensure()
        if error is None:
            held = run.holders
            run.holders = held._replace(holds=held.holds + 1, by_acquire=held.by_acquire or ran)
    elif op == "release":
        held = run.holders
        if held.holds:
            run.holders = held = held._replace(holds=held.holds - 1)
            if not held.holds and held.by_acquire and loaded:
                error = _raised(run.call("unload"), UnloadError)
        elif held.owed:
            run.holders = held._replace(owed=held.owed - 1)
        else:
            error = StepStateError
    elif op == "use":
        if state is State.UNLOADED:
            error = NotLoadedError
        elif state is State.FAILED:
            error = StepFailedError
    elif op != "copy":
        raise ValueError(f"unknown operation {op!r}; expected one of {', '.join(OPS)}")
    return run.state, run.holders, Result(error, returned, tuple(run.ran), warning)


def candidates(
    config: Config, op: AnyOp, *, on_repeat: OnRepeat = "raise", outcome: Outcome | None = None
) -> list[tuple[Outcome, Config, Result]]:
    """Every distinct ``(outcome, config', result)`` of ``op`` from ``config``.

    With ``outcome`` given, only that one; otherwise one entry per distinct
    behaviour (outcomes whose code never runs collapse into one).
    """
    seen: set[tuple[Config, Result]] = set()
    found: list[tuple[Outcome, Config, Result]] = []
    for each in OUTCOMES if outcome is None else (outcome,):
        state, holders, result = model_step(
            config.state, config.holders, op, each, on_repeat=on_repeat
        )
        after = Config(state, holders)
        if (after, result) not in seen:
            seen.add((after, result))
            found.append((each, after, result))
    return found
