"""A fake resource that counts what it holds, and steps whose own code can be told how to end.

``CountingStep.load()`` opens a fake :class:`~tests.fakes.Resource` (counted in
``OPEN`` while open) and ``unload()`` closes it, so a test can count held resources without
trusting stepfsm's own state. ``AsyncCountingStep`` is the same as an async step
(``async def load``/``unload``, docs/design.md §10). How each call of their load/unload ends
(``ok``, ``error`` = raises :class:`Boom` before touching the resource, ``interrupt`` =
raises ``KeyboardInterrupt`` likewise) comes from, in order: the active
:class:`Gate` (the test decides while the call is blocked), the caller's plan
(:func:`thread_plan`: the calling thread's, or task's), the object's plan
(:func:`planned`), or ``ok``. Every call is recorded in ``RECORD`` with its
object, the call it served (:func:`stepfsm.testing.caller`: the calling
thread, or the awaited call, whichever thread or task runs the code) and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator

import stepfsm
from stepfsm.testing import Behaviour, Outcome, Ran, caller
from tests.fakes import Boom, Resource, Resources

#: Every open resource of a CountingStep (its owner is the step's id).
OPEN = Resources()
#: (id(step), caller, "load"/"unload", behaviour) for every call of the step's own code.
RECORD: list[tuple[int, int, str, Behaviour]] = []
_LOCK = threading.Lock()
_PLAN: dict[int, Outcome] = {}
#: The caller's plan: a context variable, so that it follows an awaited call into
#: the worker thread stepfsm runs it in, and into an async step's own code.
_CALLER_PLAN: contextvars.ContextVar[Outcome | None] = contextvars.ContextVar(
    "fsm_fakes_plan", default=None
)
GATE: Gate | None = None


def _planned(step: object, kind: str) -> Behaviour:
    outcome = _CALLER_PLAN.get() or _PLAN.get(id(step))
    if outcome is None:
        return "ok"
    return outcome.load if kind == "load" else outcome.unload


def _behaviour(step: object, kind: str) -> Behaviour:
    gate = GATE
    if gate is not None and gate.step is step:
        return gate.enter(kind)
    return _planned(step, kind)


async def _abehaviour(step: object, kind: str) -> Behaviour:
    gate = GATE
    if gate is not None and gate.step is step:
        return await gate.aenter(kind)
    return _planned(step, kind)


def _end(step: object, kind: str, how: Behaviour) -> None:
    with _LOCK:
        RECORD.append((id(step), caller(), kind, how))
    if how == "error":
        raise Boom(f"{kind} of {step} failed on purpose")
    if how == "interrupt":
        raise KeyboardInterrupt(f"{kind} interrupted")


@stepfsm.stateful(guard=("use", "ause"))
class CountingStep:
    """A step holding one Resource while loaded; its code ends as planned."""

    def __init__(self, name: str = "step") -> None:
        self.name = name
        self.resource: Resource | None = None

    def load(self) -> None:
        _end(self, "load", _behaviour(self, "load"))
        self.resource = OPEN.open(id(self))

    def unload(self) -> None:
        _end(self, "unload", _behaviour(self, "unload"))
        if self.resource is not None:
            self.resource.close()
        self.resource = None

    def use(self) -> bool:
        """Whether the resource was there when the (guarded) call ran.

        Not an assertion: with threads, another thread may unload the step
        while a guarded call that passed its check still runs (a guard checks
        at the call; ``with loaded(step):`` is what keeps a step loaded).
        """
        return held(self)

    async def ause(self) -> bool:
        """The same, as an ``async def`` guarded method (awaits a transition in progress)."""
        return held(self)

    def __repr__(self) -> str:
        return f"CountingStep({self.name!r})"


@stepfsm.stateful(guard=("use", "ause"))
class AsyncCountingStep:
    """CountingStep as an async step: its load and unload are ``async def``."""

    def __init__(self, name: str = "astep") -> None:
        self.name = name
        self.resource: Resource | None = None

    async def load(self) -> None:
        _end(self, "load", await _abehaviour(self, "load"))
        await asyncio.sleep(0)  # give the loop to other tasks, as real async code does
        self.resource = OPEN.open(id(self))

    async def unload(self) -> None:
        _end(self, "unload", await _abehaviour(self, "unload"))
        await asyncio.sleep(0)
        if self.resource is not None:
            self.resource.close()
        self.resource = None

    def use(self) -> bool:
        """Whether the resource was there when the (guarded) call ran."""
        return held(self)

    async def ause(self) -> bool:
        """The same, as an ``async def`` guarded method."""
        return held(self)

    def __repr__(self) -> str:
        return f"AsyncCountingStep({self.name!r})"


def held(step: CountingStep | AsyncCountingStep) -> bool:
    """Whether ``step`` holds an open resource."""
    resource = step.resource
    return resource is not None and not resource.closed


def open_count(step: object) -> int:
    """How many open resources ``step``'s own loads created."""
    return len(OPEN.held(id(step)))


def calls_of(step: object, thread: int | None = None) -> Ran:
    """Take (and forget) the recorded calls of ``step``'s code (for the caller ``thread``).

    ``thread`` is a :func:`stepfsm.testing.caller`: a thread's ident, or an
    awaited call's id (:attr:`stepfsm.testing.Observed.caller`).
    """
    with _LOCK:
        mine = [e for e in RECORD if e[0] == id(step) and (thread is None or e[1] == thread)]
        for entry in mine:
            RECORD.remove(entry)
    return tuple((kind, how) for _, _, kind, how in mine)  # type: ignore[misc]


def drop_resources(step: object) -> None:
    """Forget the open resources ``step`` created, without closing them (a dropped fake)."""
    OPEN.drop(id(step))


def forget_calls(step: object) -> None:
    """Drop the recorded calls of ``step``."""
    calls_of(step)


@contextlib.contextmanager
def planned(step: object, outcome: Outcome) -> Iterator[None]:
    """Make ``step``'s own code end as ``outcome`` says inside the block."""
    _PLAN[id(step)] = outcome
    try:
        yield
    finally:
        _PLAN.pop(id(step), None)


@contextlib.contextmanager
def thread_plan(outcome: Outcome | None) -> Iterator[None]:
    """Make every step's code called from this thread (or task) end as ``outcome`` says."""
    token = _CALLER_PLAN.set(outcome)
    try:
        yield
    finally:
        _CALLER_PLAN.reset(token)


def reset() -> None:
    """Forget plans, records and open resources (between examples)."""
    OPEN.drop()
    with _LOCK:
        RECORD.clear()
    _PLAN.clear()


class Gate:
    """Blocks each call of one step's own code until the test says how it ends.

    Install with :func:`gated`. ``waiting()`` names the caller blocked in a
    call (at most one per step, since a step runs one transition at a time):
    :func:`stepfsm.testing.caller`, the calling thread or the awaited call;
    ``finish(caller, how)`` lets it go on and end as ``how``. An async step's
    code awaits the gate (:meth:`aenter`) instead of blocking its loop.
    """

    def __init__(self, step: object, timeout: float = 10.0) -> None:
        self.step = step
        self.timeout = timeout
        self._cond = threading.Condition()
        self._waiting: dict[int, str] = {}
        self._decided: dict[int, Behaviour] = {}
        self.auto: Behaviour | None = None  # when set, calls no longer block

    async def aenter(self, kind: str) -> Behaviour:
        """:meth:`enter` for async code: the loop runs on while the call waits."""
        me = caller()
        with self._cond:
            if self.auto is not None:
                return self.auto
            self._waiting[me] = kind
            self._cond.notify_all()
        deadline = time.monotonic() + self.timeout
        while True:
            with self._cond:
                if me in self._decided or self.auto is not None:
                    self._waiting.pop(me, None)
                    return self._decided.pop(me, None) or self.auto or "ok"
                if time.monotonic() > deadline:
                    self._waiting.pop(me, None)
                    raise AssertionError(f"gated {kind} was never released by the test")
            await asyncio.sleep(0.0005)

    def enter(self, kind: str) -> Behaviour:
        me = caller()
        with self._cond:
            if self.auto is not None:
                return self.auto
            self._waiting[me] = kind
            self._cond.notify_all()
            deadline = time.monotonic() + self.timeout
            while me not in self._decided and self.auto is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._waiting.pop(me, None)
                    raise AssertionError(f"gated {kind} was never released by the test")
                self._cond.wait(left)
            self._waiting.pop(me, None)
            return self._decided.pop(me, None) or self.auto or "ok"

    def waiting(self) -> dict[int, str]:
        with self._cond:
            return dict(self._waiting)

    def finish(self, thread: int, how: Behaviour) -> None:
        with self._cond:
            self._decided[thread] = how
            self._waiting.pop(thread, None)
            self._cond.notify_all()

    def open_all(self, how: Behaviour = "ok") -> None:
        """Stop blocking: every waiting and later call ends as ``how``."""
        with self._cond:
            self.auto = how
            self._cond.notify_all()


@contextlib.contextmanager
def gated(gate: Gate) -> Iterator[Gate]:
    """Install ``gate`` for every CountingStep inside the block."""
    global GATE
    GATE = gate
    try:
        yield gate
    finally:
        gate.open_all()
        GATE = None
