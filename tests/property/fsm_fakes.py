"""A fake resource that counts what it holds, and a step whose own code can be told how to end.

``CountingStep.load()`` opens a fake :class:`~tests.fakes.Resource` (counted in
``OPEN`` while open) and ``unload()`` closes it, so a test can count held resources without
trusting stepfsm's own state. How each call of its load/unload ends (``ok``,
``error`` = raises :class:`Boom` before touching the resource, ``interrupt`` =
raises ``KeyboardInterrupt`` likewise) comes from, in order: the active
:class:`Gate` (the test decides while the call is blocked), the calling
thread's plan (:func:`thread_plan`), the object's plan (:func:`planned`), or
``ok``. Every call is recorded in ``RECORD`` with its object, thread and end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import stepfsm
from stepfsm.testing import Behaviour, Outcome, Ran
from tests.fakes import Boom, Resource, Resources

#: Every open resource of a CountingStep (its owner is the step's id).
OPEN = Resources()
#: (id(step), thread ident, "load"/"unload", behaviour) for every call of the step's own code.
RECORD: list[tuple[int, int, str, Behaviour]] = []
_LOCK = threading.Lock()
_PLAN: dict[int, Outcome] = {}
_LOCAL = threading.local()
GATE: Gate | None = None


def _behaviour(step: object, kind: str) -> Behaviour:
    gate = GATE
    if gate is not None and gate.step is step:
        return gate.enter(kind)
    outcome: Outcome | None = getattr(_LOCAL, "outcome", None) or _PLAN.get(id(step))
    if outcome is None:
        return "ok"
    return outcome.load if kind == "load" else outcome.unload


def _end(step: object, kind: str, how: Behaviour) -> None:
    with _LOCK:
        RECORD.append((id(step), threading.get_ident(), kind, how))
    if how == "error":
        raise Boom(f"{kind} of {step} failed on purpose")
    if how == "interrupt":
        raise KeyboardInterrupt(f"{kind} interrupted")


@stepfsm.stateful(guard=("use",))
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

    def __repr__(self) -> str:
        return f"CountingStep({self.name!r})"


def held(step: CountingStep) -> bool:
    """Whether ``step`` holds an open resource."""
    resource = step.resource
    return resource is not None and not resource.closed


def open_count(step: object) -> int:
    """How many open resources ``step``'s own loads created."""
    return len(OPEN.held(id(step)))


def calls_of(step: object, thread: int | None = None) -> Ran:
    """Take (and forget) the recorded calls of ``step``'s code (on ``thread`` if given)."""
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
    """Make every step's code called from this thread end as ``outcome`` says."""
    _LOCAL.outcome = outcome
    try:
        yield
    finally:
        _LOCAL.outcome = None


def reset() -> None:
    """Forget plans, records and open resources (between examples)."""
    OPEN.drop()
    with _LOCK:
        RECORD.clear()
    _PLAN.clear()


class Gate:
    """Blocks each call of one step's own code until the test says how it ends.

    Install with :func:`gated`. ``waiting()`` names the thread blocked in a
    call (at most one per step, since a step runs one transition at a time);
    ``finish(how)`` lets it go on and end as ``how``.
    """

    def __init__(self, step: object, timeout: float = 10.0) -> None:
        self.step = step
        self.timeout = timeout
        self._cond = threading.Condition()
        self._waiting: dict[int, str] = {}
        self._decided: dict[int, Behaviour] = {}
        self.auto: Behaviour | None = None  # when set, calls no longer block

    def enter(self, kind: str) -> Behaviour:
        me = threading.get_ident()
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
