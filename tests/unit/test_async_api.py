"""Async steps and the async API: failures, pass-through, composition, misuse, observability.

docs/design.md §10: an async step's load/unload run on the caller's loop;
inside its own load, per task, ``await super().load()`` and guarded methods
pass straight through and loading another step is an acquire by it; misuse
is refused with a message saying what to write instead.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest

import stepfsm
from stepfsm import (
    DefinitionError,
    LoadError,
    State,
    StepStateError,
    TransitionInProgressError,
    UnloadError,
)
from tests.conftest import held_count
from tests.fakes import Boom
from tests.unit.async_support import (
    KINDS,
    AsyncStep,
    Gate,
    SyncStep,
    bounded,
    make,
    run,
    settled,
    still_pending,
)

# ------------------------------------------------------------ failures


def test_async_load_that_raises_fails_the_step_with_load_error() -> None:
    """An async step's load raises: LoadError chained to it, the step failed, error kept."""
    step = AsyncStep()
    cause = step.fail_load = Boom("CUDA out of memory")
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        with pytest.raises(
            LoadError, match=r"load\(\) of AsyncStep 'gen_0' failed with Boom: CUDA out of memory"
        ) as info:
            await step.load()  # the step's own wrapped load: the same as aload()
        assert info.value.__cause__ is cause
        assert info.value.cause is cause
        assert info.value.state is State.FAILED
        assert lc.state is State.FAILED
        assert lc.error is cause
        assert lc.statistics().owner is None
        assert not step.held

    run(main())


def test_async_unload_that_raises_fails_the_step_with_unload_error() -> None:
    """An async step's unload raises: UnloadError chained to it, the step failed."""
    step = AsyncStep()
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        await stepfsm.aload(step)
        cause = step.fail_unload = Boom("driver hung")
        with pytest.raises(UnloadError, match="unload.* failed with Boom: driver hung") as info:
            await stepfsm.aunload(step)
        assert info.value.__cause__ is cause
        assert lc.state is State.FAILED
        assert lc.error is cause
        assert await step.unload() == ("unloaded", 2)  # the clean-up: the step's own unload
        assert lc.state is State.UNLOADED

    run(main())


class Abort(BaseException):
    """A BaseException that is not an Exception (as KeyboardInterrupt and SystemExit are)."""


def test_async_load_raising_a_base_exception_fails_the_step_and_reraises_it() -> None:
    """A BaseException that is not an Exception leaves the step failed and is re-raised
    unchanged (no LoadError)."""
    step = AsyncStep()
    raised = step.fail_load = Abort("stop now")

    async def main() -> None:
        with pytest.raises(Abort) as info:
            await stepfsm.aload(step)
        assert info.value is raised
        assert stepfsm.lifecycle(step).error is raised
        assert stepfsm.state(step) is State.FAILED

    run(main())


def test_async_load_raising_cancelled_error_fails_the_step() -> None:
    """A load that raises CancelledError itself: the step is failed with a CancelledError,
    which reaches the caller (asyncio turns the load's task into a cancelled one)."""
    step = AsyncStep()
    step.fail_load = asyncio.CancelledError("from the load")

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await stepfsm.aload(step)
        assert isinstance(stepfsm.lifecycle(step).error, asyncio.CancelledError)
        assert stepfsm.state(step) is State.FAILED
        assert await stepfsm.aensure_loaded(step) is True

    run(main())


# ------------------------------------------------------------ return values


@pytest.mark.parametrize("kind", KINDS)
def test_async_functions_return_what_the_user_code_returned(kind: str) -> None:
    """aload/areload return the load's value, aunload the unload's; so do the Lifecycle's."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        assert await stepfsm.aload(step) == ("loaded", 1)
        assert await stepfsm.areload(step) == ("loaded", 2)
        assert await stepfsm.aunload(step) == ("unloaded", 2)
        assert await lc.aload() == ("loaded", 3)
        assert await lc.areload() == ("loaded", 4)
        assert await lc.aunload() == ("unloaded", 4)
        assert await lc.aensure_loaded() is True
        assert await lc.aensure_loaded() is False
        async with lc.aloaded() as got:
            assert got is step
        async with stepfsm.aloaded(step) as got:
            assert got is step
        if kind == "async":  # the step's own wrapped methods, awaited
            assert await step.unload() == ("unloaded", 5)
            assert await step.load() == ("loaded", 6)
            assert await step.unload() == ("unloaded", 6)
        else:
            await stepfsm.aunload(step)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_aloaded_keeps_a_step_nobody_else_holds(kind: str) -> None:
    """``async with stepfsm.aloaded(Step()) as step:`` works like its ``with`` twin.

    The step is made in the call and held by nothing else; the context manager
    keeps it alive for the block (it used to be collected before the load ran).
    """
    cls = type(make(kind))

    async def main() -> None:
        async with stepfsm.aloaded(cls("temporary")) as step:
            assert isinstance(step, cls)
            assert stepfsm.state(step) is State.LOADED
            assert step.loads == 1
        assert stepfsm.state(step) is State.UNLOADED

    run(main())


def test_aloaded_is_generic_and_slotted() -> None:
    step = make("async")
    held = stepfsm.aloaded(step)
    assert stepfsm.AsyncLoaded[AsyncStep].__origin__ is stepfsm.AsyncLoaded
    with pytest.raises(AttributeError):
        held.other = 1  # type: ignore[attr-defined]


# ------------------------------------------------------------ pass-through


@stepfsm.stateful(guard=("agenerate", "generate"))
class AsyncBase:
    """An async step with a warm-up: its load calls its own guarded methods."""

    def __init__(self) -> None:
        self.model: Any = None
        self.seen: list[str] = []
        self.loads = 0

    async def load(self) -> str:
        self.loads += 1
        self.model = str.upper
        self.seen.append(await self.agenerate("async warm-up"))  # an async guarded method
        self.seen.append(self.generate("sync warm-up"))  # a sync guarded method
        return "base"

    async def unload(self) -> str:
        self.seen.append(await self.agenerate("async goodbye"))
        self.model = None
        return "base gone"

    async def agenerate(self, prompt: str) -> str:
        await asyncio.sleep(0)
        return str(self.model(prompt))

    def generate(self, prompt: str) -> str:
        return str(self.model(prompt))


class AsyncChild(AsyncBase):
    """A subclass of a stateful async class: its load awaits super().load()."""

    async def load(self) -> str:
        base = await super().load()
        self.seen.append("child")
        return f"child of {base}"

    async def unload(self) -> str:
        base = await super().unload()
        return f"child, {base}"


def test_super_load_and_guarded_methods_pass_through_inside_an_async_load() -> None:
    """await super().load() and guarded methods (async and sync) inside the step's own
    async load and unload run straight through: one transition each way."""
    step = AsyncChild()
    lc = stepfsm.lifecycle(step)

    async def main() -> None:
        assert await stepfsm.aload(step) == "child of base"
        assert step.seen == ["ASYNC WARM-UP", "SYNC WARM-UP", "child"]
        assert step.loads == 1
        assert await step.agenerate("hi") == "HI"
        assert await stepfsm.aunload(step) == "child, base gone"
        assert step.seen[-1] == "ASYNC GOODBYE"
        assert [r.trigger for r in lc.history] == [
            "begin_load",
            "finish_load",
            "begin_unload",
            "finish_unload",
        ]

    run(main())


def test_pass_through_is_per_task() -> None:
    """Inside the load, the task running it passes straight through a guard; another
    task's guarded call waits for the load."""
    step = AsyncStep()
    gate = step.gate = Gate()
    lc = stepfsm.lifecycle(step)
    inside: list[State] = []

    async def hook() -> None:
        await lc.arequire_loaded()
        inside.append(lc.state)

    step.hook = hook

    async def main() -> None:
        loader = asyncio.ensure_future(stepfsm.aload(step))
        await step.started["load"].until()
        other = asyncio.ensure_future(lc.arequire_loaded())
        await still_pending(other)
        gate.set()
        assert await bounded(loader) == ("loaded", 1)
        await bounded(other)
        assert inside == [State.LOADING]

    run(main())


@pytest.mark.parametrize(
    "operation",
    ["aunload", "areload", "aensure_loaded", "aloaded", "own unload"],
)
def test_operations_inside_own_async_load_that_would_wait_raise(operation: str) -> None:
    """Inside an async step's own load, an operation on it that would wait for that load
    raises TransitionInProgressError at once (no deadlock)."""
    step = AsyncStep()
    lc = stepfsm.lifecycle(step)
    caught: list[BaseException] = []

    async def block() -> None:
        async with stepfsm.aloaded(step):
            pass

    calls = {
        "aunload": lambda: stepfsm.aunload(step),
        "areload": lambda: stepfsm.areload(step),
        "aensure_loaded": lambda: stepfsm.aensure_loaded(step),
        "aloaded": block,
        "own unload": step.unload,
    }

    async def hook() -> None:
        try:
            await calls[operation]()
        except TransitionInProgressError as error:
            caught.append(error)

    step.hook = hook

    async def main() -> None:
        assert await bounded(stepfsm.aload(step)) == ("loaded", 1)
        assert len(caught) == 1
        assert "from inside its own load" in str(caught[0])
        assert caught[0].timeout is None
        assert lc.state is State.LOADED

    run(main())


# ------------------------------------------------------------ composition


@stepfsm.stateful(guard=("process",))
class Parent:
    """An async step whose load loads a child step (an acquire), one way or another."""

    def __init__(self, child: SyncStep | AsyncStep, how: str, name: str = "task_0") -> None:
        self.name = name
        self.child = child
        self.how = how
        self.fail: BaseException | None = None
        self.release_child = False  # its unload lets go of the child explicitly
        self.after_child: Gate | None = None  # the load waits here once the child is loaded
        self.child_loaded = Gate()

    async def load(self) -> None:
        if self.how == "aensure_loaded":
            assert await stepfsm.aensure_loaded(self.child) in (True, False)
        elif self.how == "aload":
            await stepfsm.aload(self.child)
        else:
            await stepfsm.lifecycle(self.child).aensure_loaded()
        self.child_loaded.set()
        if self.after_child is not None:
            await self.after_child.until()
        if self.fail is not None:
            raise self.fail

    async def unload(self) -> None:
        if self.release_child:
            await stepfsm.aunload(self.child)  # a release of the parent's hold

    async def process(self) -> int:
        return await self.child.ause(1)


HOW = ["aensure_loaded", "aload", "lifecycle"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("release_child", [False, True], ids=["implicit", "explicit"])
def test_child_loaded_inside_an_async_load_is_held_by_the_parent(
    kind: str, how: str, release_child: bool
) -> None:
    """Loading another step inside an async load is an acquire by the parent; the hold is
    released when the parent unloads (whether or not its unload unloads the child)."""
    child = make(kind, "llm_0")
    parent = Parent(child, how)
    parent.release_child = release_child
    lc = stepfsm.lifecycle(child)

    async def main() -> None:
        await stepfsm.aload(parent)
        assert lc.holders == ("Parent 'task_0'",)
        assert await parent.process() == 3
        with pytest.raises(stepfsm.StepInUseError):
            await stepfsm.aunload(child)
        await stepfsm.aunload(parent)
        await settled(child)
        assert lc.holders == ()
        assert lc.state is State.UNLOADED  # the parent's load loaded it
        assert (child.loads, child.unloads) == (1, 1)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", HOW)
def test_hand_loaded_child_stays_loaded_after_the_parent(kind: str, how: str) -> None:
    """A child loaded by hand is reused by the parent's load (no second load, no
    AlreadyLoadedError) and stays loaded after the parent unloads."""
    child = make(kind, "llm_0")
    parent = Parent(child, how)
    parent.release_child = True
    lc = stepfsm.lifecycle(child)

    async def main() -> None:
        await stepfsm.aload(child)
        await stepfsm.aload(parent)
        assert lc.holders == ("Parent 'task_0'",)
        await stepfsm.aunload(parent)
        await settled(child)
        assert lc.holders == ()
        assert lc.state is State.LOADED
        assert (child.loads, child.unloads) == (1, 0)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", HOW)
def test_child_is_released_when_the_parent_load_fails(kind: str, how: str) -> None:
    """The parent's async load fails after loading the child: the child is released and,
    since the parent's load loaded it, unloaded."""
    child = make(kind, "llm_0")
    parent = Parent(child, how)
    parent.fail = Boom("bad prompt template")
    lc = stepfsm.lifecycle(child)

    async def main() -> None:
        with pytest.raises(LoadError, match="Parent 'task_0' failed with Boom"):
            await stepfsm.aload(parent)
        await settled(child)
        assert lc.holders == ()
        assert lc.state is State.UNLOADED
        assert (child.loads, child.unloads) == (1, 1)
        assert not child.held

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_child_is_released_when_the_parent_load_is_cancelled(kind: str, quiet_log: None) -> None:
    """The task running the parent's async load is cancelled after the child loaded: the
    parent is failed (CancelledError), the child is released and unloaded, not failed."""
    child = make(kind, "llm_0")
    parent = Parent(child, "aensure_loaded")
    parent.after_child = Gate()
    lc = stepfsm.lifecycle(child)

    async def main() -> None:
        loader = asyncio.ensure_future(stepfsm.aload(parent))
        await parent.child_loaded.until()
        loader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(loader)
        assert isinstance(stepfsm.lifecycle(parent).error, asyncio.CancelledError)
        await settled(child)
        assert lc.error is None
        assert lc.state is State.UNLOADED
        assert lc.holders == ()
        assert (child.loads, child.unloads) == (1, 1)
        parent.after_child = None
        await stepfsm.aload(parent)  # clean up, then load again: the child with it
        assert lc.holders == ("Parent 'task_0'",)
        await stepfsm.aunload(parent)
        await settled(child)
        assert lc.state is State.UNLOADED

    run(main())


@stepfsm.stateful
class SyncParent:
    """A sync step composing a child the sync way: its load runs in aload()'s worker."""

    def __init__(self, child: SyncStep | AsyncStep) -> None:
        self.child = child

    def load(self) -> None:
        stepfsm.ensure_loaded(self.child)  # an acquire, even of an async child

    def unload(self) -> None:
        stepfsm.lifecycle(self.child).unload()  # a release of the parent's hold


@pytest.mark.parametrize("kind", KINDS)
def test_sync_parent_loaded_with_aload_composes_as_in_a_sync_load(kind: str) -> None:
    """A sync parent awaited with aload(): inside its load (in the worker thread) loading
    a child is an acquire, of an async child too, and its unload releases it."""
    child = make(kind, "llm_0")
    parent = SyncParent(child)
    lc = stepfsm.lifecycle(child)

    async def main() -> None:
        await stepfsm.aload(parent)
        assert lc.holders == (stepfsm.lifecycle(parent).name,)
        assert lc.state is State.LOADED
        await stepfsm.aunload(parent)
        assert lc.holders == ()
        assert lc.state is State.UNLOADED
        assert (child.loads, child.unloads) == (1, 1)

    run(main())


def test_two_async_parents_share_one_child_load() -> None:
    """Two async parents loading at once in two tasks share one load of their child."""
    child = AsyncStep("llm_0")
    child.gate = Gate()
    parents = [Parent(child, "aensure_loaded", f"task_{i}") for i in range(2)]
    lc = stepfsm.lifecycle(child)

    async def main() -> None:
        loads = [asyncio.ensure_future(stepfsm.aload(p)) for p in parents]
        await child.started["load"].until()
        child.gate.set()  # type: ignore[union-attr]
        await bounded(asyncio.gather(*loads))
        assert sorted(lc.holders) == ["Parent 'task_0'", "Parent 'task_1'"]
        assert child.loads == 1
        await stepfsm.aunload(parents[0])
        assert lc.state is State.LOADED
        await stepfsm.aunload(parents[1])
        await settled(child)
        assert lc.state is State.UNLOADED
        assert (child.loads, child.unloads) == (1, 1)

    run(main())


# ------------------------------------------------------------ misuse


SYNC_ON_ASYNC = {
    "stepfsm.ensure_loaded": (stepfsm.ensure_loaded, "await stepfsm.aensure_loaded(step)"),
    "lifecycle.load": (lambda s: stepfsm.lifecycle(s).load(), "await stepfsm.aload(step)"),
    "lifecycle.unload": (lambda s: stepfsm.lifecycle(s).unload(), "await stepfsm.aunload(step)"),
    "stepfsm.reload": (lambda s: stepfsm.reload(s), "await stepfsm.areload(step)"),
    "lifecycle.acquire": (
        lambda s: stepfsm.lifecycle(s).acquire(),
        "async with stepfsm.aloaded(step)",
    ),
    "lifecycle.release": (
        lambda s: stepfsm.lifecycle(s).release(),
        "async with stepfsm.aloaded(step)",
    ),
    "with stepfsm.loaded": (
        lambda s: stepfsm.loaded(s).__enter__(),
        "async with stepfsm.aloaded(step)",
    ),
}


@pytest.mark.parametrize("call", SYNC_ON_ASYNC)
def test_sync_operation_on_an_async_step_names_the_async_one(call: str) -> None:
    """A sync operation on an async step: StepStateError naming what to write; nothing ran."""
    step = AsyncStep()
    fn, instead = SYNC_ON_ASYNC[call]
    with pytest.raises(StepStateError, match="is an async step") as info:
        fn(step)
    assert instead in str(info.value)
    assert info.value.state is State.UNLOADED
    assert (step.loads, step.unloads) == (0, 0)
    assert stepfsm.state(step) is State.UNLOADED


def test_sync_operation_on_an_async_step_is_refused_inside_a_coroutine_too() -> None:
    """From async code, a sync call on an async step is refused just the same."""
    step = AsyncStep()

    async def main() -> None:
        with pytest.raises(StepStateError, match=r"await stepfsm\.aensure_loaded\(step\)"):
            stepfsm.ensure_loaded(step)
        with (
            pytest.raises(StepStateError, match=r"async with stepfsm\.aloaded\(step\)"),
            stepfsm.loaded(step),
        ):
            pass
        assert step.loads == 0

    run(main())


def test_an_async_steps_wrapped_load_and_unload_stay_coroutine_functions() -> None:
    """``inspect`` (and frameworks that ask it) still sees ``async def`` load and unload."""
    step = AsyncStep()
    for fn in (AsyncStep.load, AsyncStep.unload, step.load, step.unload):
        assert inspect.iscoroutinefunction(fn), fn
        assert fn.__name__ in ("load", "unload")

    async def main() -> None:
        await step.load()
        assert stepfsm.state(step) is State.LOADED
        await step.unload()

    run(main())
    assert stepfsm.state(step) is State.UNLOADED
    assert (step.loads, step.unloads) == (1, 1)
    assert not inspect.iscoroutinefunction(SyncStep.load)


def test_aload_of_an_object_that_is_not_stateful_is_a_type_error() -> None:
    """await stepfsm.aload(obj) on a plain object: TypeError saying how to make it stateful."""

    class Plain:
        async def load(self) -> None: ...

    async def main() -> None:
        for call in (stepfsm.aload, stepfsm.aensure_loaded, stepfsm.aunload, stepfsm.areload):
            with pytest.raises(TypeError, match="stateful"):
                await call(Plain())
        with pytest.raises(TypeError, match="stateful"):
            stepfsm.aloaded(Plain())

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_plain_with_on_aloaded_says_async_with(kind: str) -> None:
    """with stepfsm.aloaded(step): (no async) raises TypeError saying `async with`."""
    step = make(kind)
    with (
        pytest.raises(TypeError, match=r"`async with stepfsm\.aloaded\(step\):`"),
        stepfsm.aloaded(step),  # type: ignore[attr-defined]
    ):
        pass
    assert step.loads == 0
    assert stepfsm.lifecycle(step).holders == ()


@pytest.mark.parametrize("async_method", ["load", "unload"])
def test_one_async_and_one_sync_transition_method_is_a_definition_error(
    async_method: str,
) -> None:
    """A class with an async load and a sync unload (or the reverse): DefinitionError."""

    async def coroutine(self: Any) -> None: ...

    def plain(self: Any) -> None: ...

    namespace = {
        "load": coroutine if async_method == "load" else plain,
        "unload": coroutine if async_method == "unload" else plain,
    }
    with pytest.raises(DefinitionError, match="needs both load.* and unload.* async def"):
        stepfsm.stateful(type("Mixed", (), namespace))
    with pytest.raises(DefinitionError, match=rf"MixedToo\.{async_method}\(\) cannot be the"):
        type("MixedToo", (stepfsm.Stateful,), dict(namespace))


# ------------------------------------------------------------ observability


@pytest.mark.parametrize("kind", KINDS)
def test_listeners_see_the_transitions_of_async_operations(kind: str) -> None:
    """Global and per-step listeners get every transition of the async operations; a
    sync step's are reported from its worker thread."""
    step = make(kind)
    lc = stepfsm.lifecycle(step)
    seen: list[tuple[str, str, int]] = []
    mine: list[str] = []
    unsubscribe = stepfsm.subscribe(lambda lc, r: seen.append((r.trigger, lc.name, r.thread)))
    lc.subscribe(lambda _, r: mine.append(r.trigger))
    step.fail_load = Boom("CUDA out of memory")

    async def main() -> int:
        with pytest.raises(LoadError):
            await stepfsm.aload(step)
        await stepfsm.aensure_loaded(step)
        async with stepfsm.aloaded(step):
            pass
        await stepfsm.areload(step)
        await stepfsm.aunload(step)
        return threading.get_ident()

    try:
        loop_thread = run(main())
    finally:
        unsubscribe()
    expected = [
        "begin_load",
        "fail",
        "begin_unload",  # the clean-up before the next load
        "finish_unload",
        "begin_load",
        "finish_load",
        "begin_unload",  # areload
        "finish_unload",
        "begin_load",
        "finish_load",
        "begin_unload",
        "finish_unload",
    ]
    assert [trigger for trigger, _, _ in seen] == expected
    assert mine == expected
    assert {name for _, name, _ in seen} == {lc.name}
    assert loop_thread not in {thread for _, _, thread in seen}  # made in worker threads


def test_status_shows_async_steps() -> None:
    """status() lists an async step with its state."""
    step = AsyncStep("client_0")

    async def main() -> None:
        await stepfsm.aload(step)
        rows = {row.name: row for row in stepfsm.status()}
        assert rows["AsyncStep 'client_0'"].state is State.LOADED
        assert "client_0" in str(stepfsm.status())
        await stepfsm.aunload(step)
        rows = {row.name: row for row in stepfsm.status()}
        assert rows["AsyncStep 'client_0'"].state is State.UNLOADED

    run(main())
    assert held_count() == 0


def test_a_sync_guarded_call_on_the_loop_of_an_async_load_is_refused_not_hung() -> None:
    """A plain ``def`` guarded method of an async step, called from a coroutine on the loop
    that runs the step's own load, would block that loop for good: it is refused."""
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(stepfsm.Stateful, guard=("tokenize",)):
        async def load(self) -> None:
            started.set()
            await release.wait()

        async def unload(self) -> None:
            pass

        def tokenize(self, text: str) -> list[str]:
            return text.split()

    async def main() -> str:
        step = Slow()
        loading = asyncio.ensure_future(stepfsm.aload(step))
        await bounded(started.wait())
        try:
            step.tokenize("a b")
        except stepfsm.TransitionInProgressError as error:
            message = str(error)
        else:
            message = "ran"
        release.set()
        await bounded(loading)
        assert step.tokenize("a b") == ["a", "b"]  # loaded: the fast path
        return message

    message = run(main(), timeout=20)
    assert "event loop" in message, message
    assert "await stepfsm.aensure_loaded(step)" in message
