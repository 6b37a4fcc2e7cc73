"""The hypothesis state machine that drives real objects against the model, and its test factory.

:class:`LifecycleMachine` drives several instances of a class, their copies
and pickles, and a few threads and asyncio tasks through random operations,
synchronous and awaited, checking every call with
:mod:`stepfsm.testing.observer` (and the concurrent rules with
:mod:`stepfsm.testing.linearizer`) and every object after each rule.
:func:`check_lifecycle` builds one for a factory and runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy as _copy
import itertools
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, NoReturn, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..errors import (
    CleanupWarning,
    DuplicateLoadWarning,
    LeakWarning,
    RepeatedLoadWarning,
    StepStateError,
    TransitionError,
)
from ..machine import TransitionRecord, lifecycle
from ..states import State
from ..wrap import is_stateful
from ._ops import ASYNC_OPS, OPS, AnyOp, AsyncOp, Op, Outcome, Ran
from .linearizer import Call, linearize
from .model import Config, Result, candidates
from .observer import (
    Observed,
    aperform,
    caller,
    default_ause,
    default_use,
    is_async_step,
    mismatches,
    perform,
    ran_from,
    records_after,
)

if TYPE_CHECKING:
    from ._ops import OnRepeat

__all__ = ["STEP", "LifecycleMachine", "Tracked", "check_lifecycle"]

R = TypeVar("R")

#: Rule argument that picks one of the machine's live objects (taken modulo their number).
STEP: Final = st.integers(min_value=0, max_value=7)

_COPIES: Final = ("copy.copy", "copy.deepcopy", "pickle")
_CONCURRENT_OPS: Final[tuple[Op, ...]] = (
    "load",
    "ensure_loaded",
    "unload",
    "reload",
    "acquire",
    "release",
    "use",
)
#: The awaited operations of the ``awaited`` rule (blocks have a rule of their own).
_AWAITED_OPS: Final[tuple[AsyncOp, ...]] = tuple(
    op for op in ASYNC_OPS if op not in ("aenter", "aexit")
)
#: The awaited operations of the concurrent rules; ``aloaded`` is a whole
#: ``async with aloaded(step): await use`` block (three calls: aenter, ause, aexit;
#: as in ``async with``, a failed entry ends it: neither the use nor the exit runs).
_CONCURRENT_AOPS: Final[tuple[str, ...]] = (
    "aload",
    "aensure_loaded",
    "aunload",
    "areload",
    "ause",
    "aloaded",
)
_LOADS: Final = frozenset(
    {"load", "ensure_loaded", "reload", "reload_force", "acquire"}
    | {"aload", "aensure_loaded", "areload", "areload_force", "aenter"}
)
_UNLOADS: Final = frozenset(
    {"unload", "unload_force", "reload", "reload_force", "release"}
    | {"aunload", "aunload_force", "areload", "areload_force", "aexit"}
)
#: An async step's synchronous operations are refused (docs/design.md §10); the machine runs
#: their awaited twins instead, and checks the refusal in a rule of its own.
_AWAITED: Final[dict[str, AsyncOp]] = {
    "load": "aload",
    "ensure_loaded": "aensure_loaded",
    "unload": "aunload",
    "unload_force": "aunload_force",
    "reload": "areload",
    "reload_force": "areload_force",
    "acquire": "aenter",  # an async with aloaded() block that stays open across rules
    "release": "aexit",  # ... and its end (the newest block first)
}
#: The awaited call a concurrent rule makes in place of a synchronous one.
_AWAITED_CALL: Final[dict[str, str]] = {
    "load": "aload",
    "ensure_loaded": "aensure_loaded",
    "unload": "aunload",
    "reload": "areload",
    "acquire": "aloaded",
    "release": "ause",
    "use": "ause",
}
#: Who makes a call in a concurrent rule: a thread (a synchronous call, or an
#: awaited one on an event loop of the thread's own), or a task on the
#: machine's event loop.
Where = Literal["thread", "task"]


@dataclass
class Tracked:
    """One object the machine drives, with what the model expects of it."""

    obj: Any
    name: str
    config: Config = field(default_factory=Config)
    on_repeat: OnRepeat = "raise"
    origin: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class LifecycleMachine(RuleBasedStateMachine):
    """A hypothesis state machine that checks a stateful class against the model.

    Subclass it, define :meth:`make` and :meth:`is_held`, add rules of your
    own if you like, and make it a test with ``TestMine = Mine.TestCase``::

        class MyLLMLifecycle(LifecycleMachine):
            def make(self):
                return MyLLM(model="tiny")

            def is_held(self, obj):
                return obj.model is not None

            @rule(step=STEP)
            def generate(self, step):
                llm = self.instance(step)
                if stepfsm.is_loaded(llm):
                    assert llm.generate("hi")

        TestMyLLMLifecycle = MyLLMLifecycle.TestCase

    After every rule it checks each object: its state and holders are the
    model's, and its resource is held when it is ``loaded`` and not when it
    is ``unloaded`` (a ``failed`` step may still hold part of it). Each call's
    error class, return value, warnings and the load/unload code it ran are
    compared with the model as it happens, and a refused call must change
    nothing.

    Awaited operations (``aload()``, ``aunload()``, ``aensure_loaded()``,
    ``areload()``, ``async with aloaded()``, an awaited guarded call) run on
    an event loop the machine owns, in a thread of its own; the concurrent
    rules mix them, as tasks, with threads. For an async step (``async def
    load``/``unload``) the plain rules run the awaited twins, and a rule of
    its own checks that the synchronous operations are refused.
    """

    #: How many objects :meth:`make` creates at most (copies come on top).
    max_instances: ClassVar[int] = 3
    #: Threads in the concurrent rule (fewer than 2 turns the rule off).
    threads: ClassVar[int] = 2
    #: Callers (asyncio tasks on the machine's loop, and threads) in the
    #: concurrent rule that mixes awaited and synchronous calls (0 turns it off).
    tasks: ClassVar[int] = 2
    #: How the step's own code behaves in the plain rules (``None``: not known,
    #: any behaviour the model allows is accepted and then tracked).
    default_outcome: ClassVar[Outcome | None] = None
    #: A lifecycle ``timeout`` for every object the machine drives (``None``:
    #: leave theirs). With fast fakes, a few seconds turns a step stuck in
    #: ``loading`` into a failure instead of a hang.
    wait_timeout: ClassVar[float | None] = None
    #: Seconds the concurrent rule waits for its threads before reporting a deadlock.
    thread_timeout: ClassVar[float] = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.tracked: list[Tracked] = []
        self.log: list[str] = []
        self._names = itertools.count()
        self._picklable: bool | None = None
        self._last: tuple[Tracked | None, str] = (None, "")
        self._held_at_load: list[tuple[Tracked, State | None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: while a concurrent rule runs: id(record) -> (record, the call it served)
        self._served: dict[int, tuple[TransitionRecord, int]] | None = None

    # ------------------------------------------------------------ to override

    def make(self) -> Any:
        """Return a fresh, unloaded stateful object."""
        raise NotImplementedError("subclass LifecycleMachine and define make(self)")

    def is_held(self, obj: Any) -> bool:
        """Whether ``obj``'s resource is held right now."""
        raise NotImplementedError("subclass LifecycleMachine and define is_held(self, obj)")

    def use(self, obj: Any) -> object:
        """A use of the loaded step (default: ``lifecycle(obj).require_loaded()``)."""
        return default_use(obj)

    async def ause(self, obj: Any) -> object:
        """An awaited use (default: ``await lifecycle(obj).arequire_loaded()``).

        Override it with a call of one of your ``async def`` guarded methods.
        """
        return await default_ause(obj)

    def observed_calls(self, tracked: Tracked, thread: int) -> Ran | None:
        """The step's own code that ran for the call ``thread`` made (``None``: use history).

        ``thread`` is :attr:`Observed.caller`: the calling thread's ident, or,
        for an awaited call, the call's own id, which
        :func:`stepfsm.testing.caller` returns in every thread and task that
        serves it (record it in your step's code).
        """
        return None

    def expected_held(self, tracked: Tracked) -> bool | None:
        """Whether the resource must be held now (``None``: either is fine)."""
        state = tracked.config.state
        if state is State.FAILED:
            return None
        return state is State.LOADED

    def before_call(self, tracked: Tracked, op: AnyOp, outcome: Outcome | None) -> None:
        """Called just before each call (a hook for fault injection)."""

    # ------------------------------------------------------------- helpers

    def instance(self, step: int) -> Any:
        """The object a rule's ``step`` argument picks."""
        return self._pick(step).obj

    @property
    def instances(self) -> tuple[Any, ...]:
        """Every live object the machine drives, oldest first."""
        return tuple(t.obj for t in self.tracked)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The machine's event loop; it runs in the machine's thread, in :meth:`run_async`."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def run_async(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` as a task on the machine's loop until it is done; return its result.

        A ``KeyboardInterrupt`` that another task lets out of the loop (an
        async step's own code, interrupted as planned) stops the loop, as in
        ``asyncio.run``; the loop is run on until ``coro`` is done.

        Raises:
            AssertionError: ``coro`` was still running after ``thread_timeout``.
        """
        loop = self.loop
        task = loop.create_task(asyncio.wait_for(coro, self.thread_timeout))
        while True:
            try:
                return loop.run_until_complete(task)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"an awaited call was still running after {self.thread_timeout:g} s: a "
                    "deadlock in the lifecycle, or a wake-up that never came?"
                ) from None
            except (KeyboardInterrupt, SystemExit):
                if task.done():
                    raise

    def _pick(self, step: int) -> Tracked:
        return self.tracked[step % len(self.tracked)]

    def _add(self, obj: Any, origin: str | None) -> Tracked:
        if not is_stateful(obj):
            raise TypeError(
                f"make()/factory() returned {type(obj).__qualname__}, which is not stateful: "
                "decorate its class with @stepfsm.stateful or inherit stepfsm.Stateful."
            )
        # A leak is not an outcome of the docs/design.md §2 table, and the kit's own records
        # refer to what it drives: no release check (each survivor would cost a gc and a search).
        lifecycle(obj).on_leak = "ignore"
        tracked = Tracked(obj, f"s{next(self._names)}", origin=origin)
        self._watch(tracked)
        self.tracked.append(tracked)
        return tracked

    def _watch(self, tracked: Tracked) -> None:
        """Check ``is_held`` when each load begins: the step is unloaded right then.

        A listener sees ``begin_load`` before the load's own code runs, also in
        the middle of a ``reload()`` or of a ``load()`` that first cleans up a
        failed step, where no rule could look. What it finds is reported after
        the call (a listener's own exceptions are only logged by stepfsm).
        """
        lc = lifecycle(tracked.obj)
        if self.wait_timeout is not None:
            lc.timeout = self.wait_timeout
        obj = tracked.obj

        def listener(_: object, record: TransitionRecord) -> None:
            served = self._served
            if served is not None and record.thread == threading.get_ident():
                served[id(record)] = (record, caller())
            if record.trigger == "begin_unload":
                tracked.data["unloaded_from"] = record.source
            elif record.trigger == "begin_load" and self.is_held(obj):
                self._held_at_load.append((tracked, tracked.data.get("unloaded_from")))

        # The listener refers to the object and to this machine, and the process-wide
        # registry keeps the lifecycle (and so its listeners) as long as the object
        # lives: teardown must unsubscribe, or every example's objects live forever.
        self._unsubscribe.append(lc.subscribe(listener))

    def _check_held_at_load(self, call: str) -> None:
        if not self._held_at_load:
            return
        tracked, unloaded_from = self._held_at_load[0]
        self._held_at_load.clear()
        if unloaded_from is State.FAILED:
            why = "the clean-up (unload) of a failed load does not release what that load acquired"
        elif unloaded_from is State.LOADED:
            why = "unload() does not release it (or not all of it)"
        else:
            why = "it was held before its first load: factory() must return an unloaded object"
        self._fail(
            f"{tracked.name} was 'unloaded' when a load began (in {call}) but its resource "
            f"was still held: {why}."
        )

    def _fail(self, message: str) -> NoReturn:
        # Leave out objects that were made but never touched again: they only add noise.
        text = " ".join(self.log[1:]) + " " + message

        def mentioned(entry: str) -> bool:
            name = entry.split(" ", 1)[0]
            return f"{name}." in text or f"({name})" in text or f"{name} " in message

        shown = [
            entry
            for index, entry in enumerate(self.log)
            if not (index and entry.endswith(" = factory()")) or mentioned(entry)
        ]
        raise AssertionError(f"after [{', '.join(shown)}] {message}")

    def perform(
        self, step: int, op: AnyOp, outcome: Outcome | None = None, note: str = ""
    ) -> Result:
        """Run ``op`` on the object ``step`` picks and check it against the model.

        An awaited operation (``aload``...) runs on the machine's loop. On an
        async step, a synchronous load, unload, ensure_loaded or reload runs
        as its awaited twin (the synchronous one is refused, docs/design.md §10).

        Returns the model's result for the call.
        """
        tracked = self._pick(step)
        obj = tracked.obj
        if op in _AWAITED and is_async_step(obj):
            op = _AWAITED[op]
        lc = lifecycle(obj)
        before = tracked.config
        history = lc.history
        mark = history[-1] if history else None
        self.before_call(tracked, op, outcome)
        if op in ASYNC_OPS:
            blocks: list[Any] = tracked.data.setdefault("blocks", [])
            observed = self.run_async(
                aperform(obj, op, ause=self.ause, use=self.use, blocks=blocks)
            )
        else:
            observed = perform(obj, op, use=self.use)  # type: ignore[arg-type]
        if isinstance(observed.error, KeyboardInterrupt) and (
            outcome is None or "interrupt" not in outcome
        ):
            raise observed.error  # a real Ctrl-C, not a planned one: stop the test run
        ran = self.observed_calls(tracked, observed.caller or threading.get_ident())
        if ran is None:
            ran = ran_from(records_after(lc.history, mark))
        observed = observed._replace(ran=ran)
        tracked.data["was_failed"] = before.state is State.FAILED
        call = _format_call(tracked.name, op)
        got = type(observed.error).__name__ if observed.error is not None else None
        shown = f" -> {got}" if got else f" -> {observed.returned}" if op == "ensure_loaded" else ""
        self.log.append(f"{call}{note}{shown}")
        self._last = (tracked, op)
        self._check_held_at_load(call)
        options = candidates(before, op, on_repeat=tracked.on_repeat, outcome=outcome)
        problems: list[str] = []
        for _, after, result in options:
            mismatch = mismatches(result, op, observed)
            if lc.state is not after.state:
                mismatch.append(f"the step is '{lc.state.value}', expected '{after.state.value}'")
            if len(lc.holders) != after.holders.holds:
                mismatch.append(f"it has {len(lc.holders)} holders, expected {after.holders.holds}")
            if not mismatch:
                tracked.config = after
                self._check_call(tracked, before, op, observed, result, history, mark)
                return result
            problems.append("; ".join(mismatch))
        _, _, nearest = options[0]
        self._fail(
            f"{call} broke the lifecycle contract (docs/design.md §2) from state "
            f"'{before.state.value}' with {before.holders.holds} holders: {problems[0]}."
            + ("" if nearest.error is None else f" Expected {nearest.error.__name__}.")
        )

    def _check_call(
        self,
        tracked: Tracked,
        before: Config,
        op: AnyOp,
        observed: Observed,
        result: Result,
        history: Sequence[TransitionRecord],
        mark: object,
    ) -> None:
        error = observed.error
        call = _format_call(tracked.name, op)
        lc = lifecycle(tracked.obj)
        if isinstance(error, StepStateError):
            if error.state is not before.state:
                self._fail(
                    f"{call} raised {type(error).__name__} with .state '{error.state}', "
                    f"but the step was '{before.state.value}'."
                )
            if records_after(lc.history, mark):
                self._fail(f"{call} was refused ({type(error).__name__}) but changed the state.")
        if isinstance(error, TransitionError):
            cause = error.__cause__
            if cause is None or type(cause).__name__ not in str(error):
                self._fail(
                    f"{call} raised {type(error).__name__} that does not name its cause "
                    f"(__cause__={cause!r}): it must be chained (raise ... from) to the "
                    "step's own exception and include its type in the message."
                )
            if lc.state is State.FAILED and lc.error is None:
                self._fail(f"{call} left the step 'failed' without lifecycle.error.")

    # --------------------------------------------------------------- rules

    @initialize()
    def first_instance(self) -> None:
        """Start with one fresh object."""
        self._add(self.make(), None)
        self.log.append(f"{self.tracked[-1].name} = factory()")
        self._last = (self.tracked[-1], "make")

    @precondition(lambda self: len(self.tracked) < self.max_instances)
    @rule()
    def another_instance(self) -> None:
        """Make one more fresh object of the same class."""
        self._add(self.make(), None)
        self.log.append(f"{self.tracked[-1].name} = factory()")
        self._last = (self.tracked[-1], "make")

    @rule(step=STEP)
    def load(self, step: int) -> None:
        """``obj.load()``."""
        self.perform(step, "load", self.default_outcome)

    @rule(step=STEP)
    def ensure_loaded(self, step: int) -> None:
        """``lifecycle(obj).ensure_loaded()``."""
        self.perform(step, "ensure_loaded", self.default_outcome)

    @rule(step=STEP, force=st.booleans())
    def unload(self, step: int, force: bool) -> None:
        """``obj.unload()`` or ``lifecycle(obj).unload(force=True)``."""
        self.perform(step, "unload_force" if force else "unload", self.default_outcome)

    @rule(step=STEP, force=st.booleans())
    def reload(self, step: int, force: bool) -> None:
        """``lifecycle(obj).reload(force=...)``."""
        self.perform(step, "reload_force" if force else "reload", self.default_outcome)

    @rule(step=STEP)
    def acquire(self, step: int) -> None:
        """``lifecycle(obj).acquire()`` (an async step: enter an ``aloaded()`` block)."""
        self.perform(step, "acquire", self.default_outcome)

    @rule(step=STEP)
    def release(self, step: int) -> None:
        """``lifecycle(obj).release()`` (an async step: leave the last ``aloaded()`` block)."""
        self.perform(step, "release", self.default_outcome)

    @rule(step=STEP)
    def use_step(self, step: int) -> None:
        """A guarded use of the step (:meth:`use`)."""
        self.perform(step, "use", self.default_outcome)

    @rule(step=STEP, op=st.sampled_from((*_AWAITED_OPS, "aloaded")))
    def awaited(self, step: int, op: str) -> None:
        """An awaited operation on the machine's loop.

        ``await lifecycle(obj).aload()`` (an async step: ``await obj.load()``),
        ``aensure_loaded()``, ``aunload(force=...)``, ``areload(force=...)``, an
        awaited guarded use (:meth:`ause`), or ``aloaded``: ``async with
        lifecycle(obj).aloaded(): await use``, its entry, use and exit each
        checked. (On an async step ``acquire``/``release`` are blocks that stay
        open across rules; on a sync step a block must close within the rule,
        since ``release()`` cannot end a block's hold.)
        """
        if op != "aloaded":
            self.perform(step, op, self.default_outcome)  # type: ignore[arg-type]
        elif self.perform(step, "aenter", self.default_outcome).error is None:
            self.perform(step, "ause", self.default_outcome)
            self.perform(step, "aexit", self.default_outcome)

    @rule(step=STEP, policy=st.sampled_from(("raise", "warn", "ignore")))
    def set_on_repeat(self, step: int, policy: OnRepeat) -> None:
        """Set the instance's ``on_repeat`` policy."""
        tracked = self._pick(step)
        lifecycle(tracked.obj).on_repeat = policy
        tracked.on_repeat = policy
        self.log.append(f"{tracked.name}.on_repeat = {policy!r}")
        self._last = (tracked, "policy")

    @precondition(lambda self: len(self.tracked) < self.max_instances + 2)
    @rule(step=STEP, how=st.sampled_from(_COPIES))
    def copy_instance(self, step: int, how: str) -> None:
        """Copy, deep-copy or pickle an object; the copy starts unloaded and holds nothing."""
        source = self._pick(step)
        if how == "pickle" and not self._can_pickle(source.obj):
            return
        before = source.config
        text = "pickle.loads(pickle.dumps({}))" if how == "pickle" else how + "({})"
        new_name = f"s{next(self._names)}"
        self.log.append(f"{new_name} = {text.format(source.name)}")
        try:
            if how == "copy.copy":
                obj = _copy.copy(source.obj)
            elif how == "copy.deepcopy":
                obj = _copy.deepcopy(source.obj)
            else:
                obj = pickle.loads(pickle.dumps(source.obj))
        except Exception as error:
            self._fail(
                f"{text.format(source.name)} raised {type(error).__name__}: {error} while "
                f"{source.name} was '{before.state.value}' (a fresh object copies fine): "
                "copies and pickles must work in every state (docs/design.md §5)."
            )
        copied = Tracked(obj, new_name, origin=f"{text.format(source.name)}")
        self._watch(copied)
        self.tracked.append(copied)
        self._last = (copied, "copy")
        lc = lifecycle(obj)
        # The copy's own policy: instance settings travel with copies and pickles
        # (docs/design.md §13), and the machine sets no class or global ones.
        copied.on_repeat = lc.on_repeat
        if lc.state is not State.UNLOADED or lc.holders:
            self._fail(
                f"the copy {new_name} is '{lc.state.value}' with holders {lc.holders}: copies "
                "and pickles start 'unloaded' with no holders (docs/design.md §5)."
            )

    def _can_pickle(self, obj: Any) -> bool:
        if self._picklable is None:
            try:
                pickle.dumps(self.make())
            except Exception:
                self._picklable = False
            else:
                self._picklable = True
        return self._picklable

    @precondition(lambda self: self.threads >= 2)
    @rule(step=STEP, ops=st.lists(st.sampled_from(_CONCURRENT_OPS), min_size=2, max_size=4))
    def concurrently(self, step: int, ops: list[Op]) -> None:
        """Run one operation per thread on the same object at once; the history must linearize.

        On an async step each thread awaits the operation's twin on an event
        loop of its own (``acquire`` is an ``async with aloaded()`` block).
        """
        tracked = self._pick(step)
        callers: list[tuple[Where, list[AnyOp]]] = [
            ("thread", self._plan(tracked, op)) for op in ops[: self.threads]
        ]
        self._run_concurrently(tracked, callers)

    @precondition(lambda self: self.tasks >= 1 and self.tasks + self.threads >= 2)
    @rule(
        step=STEP,
        calls=st.lists(
            st.tuples(st.sampled_from((*_CONCURRENT_AOPS, *_CONCURRENT_OPS)), st.booleans()),
            min_size=2,
            max_size=4,
        ),
    )
    def concurrently_with_tasks(self, step: int, calls: list[tuple[str, bool]]) -> None:
        """Awaited calls in tasks on the machine's loop, at once with threads; must linearize.

        Each entry is an operation and, for an awaited one, whether it runs as
        a task on the machine's loop (``True``) or in a thread on an event loop
        of its own. Synchronous operations run in threads (on an async step:
        their awaited twins, each thread on a loop of its own). At least one
        call is awaited: if none was drawn, the first becomes its awaited twin.
        """
        tracked = self._pick(step)
        if not any(op in _CONCURRENT_AOPS for op, _ in calls):
            op, on_loop = calls[0]
            calls = [(_AWAITED_CALL[op], on_loop), *calls[1:]]
        awaited = [c for c in calls if c[0] in _CONCURRENT_AOPS][: self.tasks]
        plain = [c for c in calls if c[0] not in _CONCURRENT_AOPS][: self.threads]
        if len(awaited) + len(plain) < 2:
            return
        callers: list[tuple[Where, list[AnyOp]]] = [
            ("task" if on_loop else "thread", self._plan(tracked, op)) for op, on_loop in awaited
        ]
        callers += [("thread", self._plan(tracked, op)) for op, _ in plain]
        self._run_concurrently(tracked, callers)

    def _plan(self, tracked: Tracked, op: str) -> list[AnyOp]:
        """The calls one concurrent caller makes for ``op`` (``aloaded``: a whole block)."""
        if is_async_step(tracked.obj):
            op = {**_AWAITED, "acquire": "aloaded", "release": "ause"}.get(op, op)
        if op == "aloaded":
            return ["aenter", "ause", "aexit"]
        return [op]  # type: ignore[list-item]

    async def _run_plan(
        self, obj: Any, ops: Sequence[AnyOp], clock: Iterator[int], made: list[Call]
    ) -> None:
        """One caller's awaited calls, in order, each appended to ``made`` as it ends.

        As in ``async with``, an ``aenter`` that raised ends an ``aloaded``
        block: the block was never entered, so neither its use nor its exit runs.
        """
        blocks: list[Any] = []
        for op in ops:
            invoked = next(clock)
            observed = await aperform(
                obj, op, ause=self.ause, use=self.use, record_warnings=False, blocks=blocks
            )
            responded = next(clock)
            made.append(Call(op, invoked, responded, observed, self.default_outcome))
            if op == "aenter" and observed.error is not None:
                return

    def _run_concurrently(self, tracked: Tracked, callers: list[tuple[Where, list[AnyOp]]]) -> None:
        """Run every caller's calls at once on ``tracked``; the history must linearize.

        A ``thread`` caller runs in a thread of its own (awaited calls on an
        event loop of that thread's own), a ``task`` caller in a task on the
        machine's loop. The model does not know which holder a hold belongs
        to, and ``release()`` drops only an anonymous hold, so while an
        ``async with aloaded()`` block takes part, ``release()`` becomes a
        guarded use.
        """
        if any("aenter" in ops for _, ops in callers) and not is_async_step(tracked.obj):
            callers = [
                (where, ["use" if op == "release" else op for op in ops]) for where, ops in callers
            ]
        obj = tracked.obj
        lc = lifecycle(obj)
        start = tracked.config
        mark = lc.history[-1] if lc.history else None
        clock = itertools.count()
        in_threads = [i for i, (where, _) in enumerate(callers) if where == "thread"]
        in_tasks = [i for i, (where, _) in enumerate(callers) if where == "task"]
        # Every caller starts at once, and no thread ends before all calls have: a record
        # is told apart by the ident of the thread that made it, and a finished thread's
        # ident may be reused by the worker thread of a later awaited call.
        barrier = threading.Barrier(len(in_threads) + (1 if in_tasks else 0))
        finish = threading.Barrier(barrier.parties)
        made: list[list[Call]] = [[] for _ in callers]
        sync_idents: set[int] = set()
        for _, ops in callers:
            for op in ops:
                self.before_call(tracked, op, self.default_outcome)

        async def run_plan(index: int) -> None:
            await self._run_plan(obj, callers[index][1], clock, made[index])

        def in_thread(number: int) -> None:
            index = in_threads[number]
            ops = callers[index][1]
            barrier.wait(self.thread_timeout)
            if len(ops) == 1 and ops[0] in OPS:
                sync_idents.add(threading.get_ident())
                invoked = next(clock)
                observed = perform(obj, ops[0], use=self.use, record_warnings=False)
                responded = next(clock)
                made[index].append(Call(ops[0], invoked, responded, observed, self.default_outcome))
            else:
                asyncio.run(run_plan(index))
            finish.wait(self.thread_timeout)

        async def launch() -> None:
            if in_threads:  # blocks this loop only until every thread is ready
                barrier.wait(self.thread_timeout)
            await asyncio.gather(*(run_plan(index) for index in in_tasks))
            if in_threads:
                finish.wait(self.thread_timeout)

        texts = ", ".join(
            f"{'task' if where == 'task' else 'thread'} {_format_calls(tracked.name, ops)}"
            for where, ops in callers
        )
        self.log.append(f"at once: [{texts}]")
        self._last = (tracked, "threads" if not in_tasks else "tasks")
        self._served = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DuplicateLoadWarning)
                warnings.simplefilter("ignore", RepeatedLoadWarning)
                warnings.simplefilter("ignore", CleanupWarning)
                warnings.simplefilter("ignore", LeakWarning)
                _run_threads(
                    len(in_threads),
                    in_thread,
                    self.thread_timeout,
                    (lambda: self.run_async(launch())) if in_tasks else None,
                )
            served = self._served
        finally:
            self._served = None
        self._check_held_at_load(f"[{texts}]")
        records = records_after(lc.history, mark)

        def served_by(record: TransitionRecord) -> int | None:
            hit = served.get(id(record))
            if hit is not None:
                return hit[1]
            return record.thread if record.thread in sync_idents else None

        owners = [served_by(r) for r in records]
        done: list[Call] = []
        for call in (c for calls in made for c in calls):
            who = call.observed.caller
            assert who is not None
            ran = self.observed_calls(tracked, who)
            if ran is None and (who in sync_idents or None not in owners):
                ran = ran_from(
                    [r for r, owner in zip(records, owners, strict=True) if owner == who]
                )
            done.append(
                Call(
                    call.op,
                    call.invoked,
                    call.responded,
                    call.observed._replace(ran=ran),
                    call.outcome,
                    _format_call(tracked.name, call.op),
                )
            )
            error = call.observed.error
            if isinstance(error, KeyboardInterrupt) and self.default_outcome is None:
                raise error
        holders = len(lc.holders)
        order = linearize(
            start,
            done,
            on_repeat=tracked.on_repeat,
            accept=lambda c: c.state is lc.state and c.holders.holds == holders,
        )
        if order is None:
            results = ", ".join(
                f"{c.label} -> {type(c.observed.error).__name__ if c.observed.error else 'ok'}"
                for c in sorted(done, key=lambda c: c.invoked)
            )
            self._fail(
                f"the concurrent calls' results [{results}] (ending '{lc.state.value}' with "
                f"{holders} holders) match no sequential order of those calls: the lifecycle "
                "is not linearizable (docs/design.md §2, 'wait')."
            )
        tracked.config = order[-1][1]

    @precondition(lambda self: any(is_async_step(t.obj) for t in self.tracked))
    @rule(step=STEP)
    def sync_operation_on_async_step(self, step: int) -> None:
        """On an async step, each synchronous lifecycle operation is refused and changes nothing.

        (docs/design.md §10: a ``StepStateError`` pointing to the awaited one.)
        On a sync step this rule does nothing.
        """
        tracked = self._pick(step)
        obj = tracked.obj
        if not is_async_step(obj):
            return
        lc = lifecycle(obj)
        for name, call in (
            ("load()", lc.load),
            ("ensure_loaded()", lc.ensure_loaded),
            ("unload()", lc.unload),
            ("reload()", lc.reload),
            ("acquire()", lc.acquire),
            ("release()", lc.release),
        ):
            history = lc.history
            state, holders = lc.state, lc.holders
            try:
                call()
            except StepStateError as error:
                if error.state is not state or lc.history != history or lc.holders != holders:
                    self._fail(
                        f"{tracked.name}.{name} on an async step was refused but changed the "
                        f"step, or named the state '{error.state}' instead of '{state.value}'."
                    )
            except BaseException as error:
                self._fail(
                    f"{tracked.name}.{name} on an async step raised {type(error).__name__} "
                    f"({error}), expected StepStateError (docs/design.md §10)."
                )
            else:
                self._fail(
                    f"{tracked.name}.{name} on an async step ran, expected StepStateError "
                    "(docs/design.md §10: its operations must be awaited)."
                )
        self.log.append(f"{tracked.name}: every sync operation refused")
        self._last = (tracked, "refusals")

    # ----------------------------------------------------------- invariants

    @invariant()
    def every_instance_matches_the_model(self) -> None:
        """Each object's state and holders are the model's, and it holds what its state says."""
        for tracked in self.tracked:
            lc = lifecycle(tracked.obj)
            if lc.state is not tracked.config.state:
                self._fail(
                    f"{tracked.name} is '{lc.state.value}', expected "
                    f"'{tracked.config.state.value}'{self._because(tracked)}."
                )
            if len(lc.holders) != tracked.config.holders.holds:
                self._fail(
                    f"{tracked.name} has {len(lc.holders)} holders, expected "
                    f"{tracked.config.holders.holds}{self._because(tracked)}."
                )
            expected = self.expected_held(tracked)
            held = bool(self.is_held(tracked.obj))
            if expected is not None and held is not expected:
                self._fail(self._held_message(tracked, held))

    def _because(self, tracked: Tracked) -> str:
        last, op = self._last
        if last is None or last is tracked:
            return ""
        return f": {_describe_last(last.name, op)} changed it"

    def _held_message(self, tracked: Tracked, held: bool) -> str:
        state = tracked.config.state.value
        last, op = self._last
        if held:
            head = f"{tracked.name} is '{state}' but its resource is still held: "
            if last is tracked and op == "copy":
                why = (
                    f"the copy ({tracked.origin}) carries the original's live resource; "
                    "copies and pickles must start unloaded and hold nothing "
                    "(docs/design.md §5)"
                )
            elif last is tracked and op == "make":
                why = "a fresh object already holds it; factory() must return an unloaded object"
            elif last is tracked and op in _UNLOADS:
                if tracked.data.get("was_failed"):
                    why = (
                        "the clean-up (unload) of a failed load does not release what that "
                        "load acquired"
                    )
                else:
                    why = "unload() does not release it (or not all of it)"
            elif last is not None and last is not tracked:
                why = (
                    f"{_describe_last(last.name, op)} acquired it: the instances share one "
                    "resource instead of each holding its own"
                )
            else:
                why = f"{op} left it held"
            return head + why + "."
        head = f"{tracked.name} is '{state}' but its resource is not held: "
        if last is tracked and op in _LOADS:
            why = "load() does not acquire it"
        elif last is not None and last is not tracked:
            why = (
                f"{_describe_last(last.name, op)} released it: the instances share one "
                "resource, so one's unload frees another's"
            )
        elif last is tracked and op == "copy":
            why = "copying it released the original's resource"
        else:
            why = f"{op} released it"
        return head + why + "."

    def teardown(self) -> None:
        """Unload everything (forced) so no resource outlives the example.

        Best effort: every thread has finished by now, so a step still
        ``loading``/``unloading`` is stuck (the failure being reported) and is
        left alone rather than waited for. Then the machine's listeners go, so
        the objects can be garbage-collected, and its event loop is closed.
        """
        try:
            for tracked in self.tracked:
                self.before_call(tracked, "unload_force", Outcome())
                lc = lifecycle(tracked.obj)
                tracked.data.pop("blocks", None)
                if lc.state in (State.LOADING, State.UNLOADING):
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with contextlib.suppress(Exception):
                        if is_async_step(tracked.obj):
                            self.run_async(lc.aunload(force=True))
                        else:
                            lc.unload(force=True)
        finally:
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._unsubscribe.clear()
            if self._loop is not None:
                self._loop.close()
                self._loop = None


# ---------------------------------------------------------------- helpers


def _format_call(name: str, op: AnyOp) -> str:
    """``s0.unload(force=True)``, ``await s0.aload()``, ``async with aloaded(s0)``..."""
    if op == "aenter":
        return f"async with aloaded({name})"
    if op == "aexit":
        return f"end of async with aloaded({name})"
    if op in ASYNC_OPS:
        return "await " + _format_call(name, op[1:]).replace(f"{name}.", f"{name}.a", 1)  # type: ignore[arg-type]
    if op == "unload_force":
        return f"{name}.unload(force=True)"
    if op == "reload_force":
        return f"{name}.reload(force=True)"
    return f"{name}.{op}()"


def _format_calls(name: str, ops: Sequence[AnyOp]) -> str:
    if list(ops) == ["aenter", "ause", "aexit"]:
        return f"async with aloaded({name}): await {name}.ause()"
    return "; ".join(_format_call(name, op) for op in ops)


def _describe_last(name: str, op: str) -> str:
    """``"s0.unload()"`` for an operation, ``"s0's threads"`` for anything else."""
    return _format_call(name, op) if op in OPS or op in ASYNC_OPS else f"{name}'s {op}"


def _run_threads(
    count: int,
    body: Callable[[int], None],
    timeout: float = 60.0,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Run ``body(i)`` in ``count`` threads; run ``meanwhile()`` in this one; wait for all."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            body(index)
        except BaseException as error:  # reported below, in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings, less idle time
    try:
        for thread in threads:
            thread.start()
        if meanwhile is not None:
            meanwhile()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(interval)
    if any(thread.is_alive() for thread in threads):
        raise AssertionError(
            f"threads were still running after {timeout:g} s: a deadlock in the lifecycle?"
        )
    if errors:
        raise errors[0]


def check_lifecycle(
    factory: Callable[[], Any],
    *,
    is_held: Callable[[Any], bool],
    max_examples: int = 200,
    threads: int = 2,
    tasks: int | None = None,
) -> None:
    """Check that a stateful class keeps the stepfsm lifecycle contract.

    Runs :class:`LifecycleMachine` against objects made by ``factory``
    (several instances, their copies and pickles, ``threads`` threads at
    once on one object, and awaited operations: one at a time and as tasks
    at once with threads). ``factory`` may make a sync step or an async one
    (``async def load``/``unload``). It finds, among others: an unload that does not
    release the resource (fully or partly), a load that does not acquire it,
    instances sharing a resource so that one's unload frees another's, copies
    or pickles that share the original's live resource, and a failed load
    whose clean-up does not release what it acquired. A class whose load
    fails cleanly passes.

    Example::

        def test_my_llm_lifecycle():
            check_lifecycle(MyLLM, is_held=lambda llm: llm.model is not None)

    Args:
        factory: makes a fresh, unloaded stateful object (a class decorated
            with ``@stepfsm.stateful``, a distilabel LLM after ``install()``, ...).
        is_held: says whether that object's resource is held right now.
        max_examples: how many random sequences to try.
        threads: threads in the concurrent rule (below 2: no threads).
        tasks: awaited callers in the concurrent rule that mixes tasks with
            threads (0: no such rule; default: as many as ``threads``).

    Raises:
        AssertionError: the shortest failing sequence hypothesis found, and
            which rule it broke.
        TypeError: ``factory()`` does not return a stateful object.
    """
    if not callable(factory) or not callable(is_held):
        raise TypeError("check_lifecycle(factory, is_held=...) needs two callables")

    class CheckLifecycle(LifecycleMachine):
        def make(self) -> Any:
            return factory()

        def is_held(self, obj: Any) -> bool:
            return is_held(obj)

    CheckLifecycle.threads = threads
    CheckLifecycle.tasks = threads if tasks is None else tasks
    CheckLifecycle.__qualname__ = CheckLifecycle.__name__ = (
        f"CheckLifecycle[{getattr(factory, '__qualname__', repr(factory))}]"
    )
    try:
        run_state_machine_as_test(
            CheckLifecycle,
            settings=settings(
                max_examples=max_examples,
                deadline=None,
                report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    except Flaky as flaky:
        found = _first_assertion(flaky)
        if found is None:
            raise
        raise AssertionError(
            f"{found} (This failure depends on thread timing: it did not happen again on "
            "every replay, so the sequence may not be minimal.)"
        ) from flaky


def _first_assertion(error: BaseException) -> AssertionError | None:
    """The first AssertionError inside ``error`` (an exception group, or its causes)."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        here = stack.pop(0)
        if id(here) in seen:
            continue
        seen.add(id(here))
        if isinstance(here, AssertionError) and str(here).startswith("after ["):
            return here
        stack.extend(getattr(here, "exceptions", ()))
        stack.extend(e for e in (here.__cause__, here.__context__) if e is not None)
    return None
