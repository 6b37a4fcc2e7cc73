"""Threads: one load for many callers, waiting and timeouts, re-entry, composition, a storm.

docs/design.md §2 (operations in every state, "wait", same-thread re-entry) and §4
(nested loads are acquires). Every test that starts threads has a hard
``pytest.mark.timeout`` and joins its threads with a timeout, so a deadlock
fails the test instead of hanging CI.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import stepfsm
from stepfsm import (
    AlreadyLoadedError,
    Lifecycle,
    LoadError,
    State,
    StepFailedError,
    StepInUseError,
    StepStateError,
    TransitionInProgressError,
)
from tests.conftest import FakeStep, held_count, run_threads
from tests.fakes import Boom
from tests.support import under_claim

TRANSIENT = (State.LOADING, State.UNLOADING)


# ------------------------------------------------------------------ helpers


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail (not hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.001)


def waiters(lc: Lifecycle) -> int:
    """How many threads are blocked on the lifecycle's condition right now."""
    return lc.statistics().waiting


class Worker:
    """A thread running ``fn`` that keeps its result or exception for the test to assert."""

    def __init__(self, fn: Callable[[], Any], name: str = "worker") -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as error:  # asserted by the test
            self.error = error

    def join(self, timeout: float = 10.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} still running: deadlock?"
        if self.error is not None:
            raise self.error
        return self.result


def start_gated_load(step: FakeStep) -> tuple[threading.Event, Worker]:
    """Start ``step.load()`` in another thread and return once it is blocked inside the load."""
    gate = threading.Event()
    step.gate = gate
    worker = Worker(step.load, "loader")
    wait_until(lambda: step.loads == 1, what="the load to start")
    assert stepfsm.state(step) is State.LOADING
    return gate, worker


def finish_gated(step: FakeStep, gate: threading.Event, worker: Worker) -> None:
    gate.set()
    worker.join()
    step.gate = None


# ------------------------------------------------- one load for many callers


@pytest.mark.timeout(30)
def test_sixteen_threads_ensure_loaded_run_one_load() -> None:
    """Sixteen threads calling ensure_loaded() together on a slow step run its load exactly once."""
    step = FakeStep("slow", delay=0.2)
    results: list[bool] = []
    lock = threading.Lock()

    def body(_: int) -> None:
        ran = stepfsm.ensure_loaded(step)
        with lock:
            results.append(ran)

    assert run_threads(16, body) == []
    assert step.loads == 1
    assert sorted(results) == [False] * 15 + [True]
    assert stepfsm.state(step) is State.LOADED
    assert step.held


@pytest.mark.timeout(30)
def test_eight_threads_load_one_succeeds_seven_already_loaded() -> None:
    """Of eight threads calling load() together, one loads and seven get AlreadyLoadedError."""
    step = FakeStep("gen_0", delay=0.2)
    errors = run_threads(8, lambda _: step.load())
    assert len(errors) == 7
    for error in errors:
        assert isinstance(error, AlreadyLoadedError)
        assert error.step == "FakeStep 'gen_0'"
        assert error.state is State.LOADED
        assert "FakeStep 'gen_0' is already loaded (since " in str(error)
        assert "Use ensure_loaded() to make this a no-op" in str(error)
    assert step.loads == 1
    assert stepfsm.state(step) is State.LOADED


@pytest.mark.timeout(30)
def test_concurrent_loaded_blocks_balance_loads_and_unloads() -> None:
    """Eight threads entering and leaving `with loaded(step)` leave it unloaded, balanced."""
    step = FakeStep("ctx")

    def body(_: int) -> None:
        for _ in range(200):
            with stepfsm.loaded(step):
                assert step.use(3) == 3

    assert run_threads(8, body) == []
    assert stepfsm.state(step) is State.UNLOADED
    assert stepfsm.lifecycle(step).holders == ()
    assert step.loads == step.unloads >= 1
    assert held_count() == 0


# ------------------------------------------------------- waiting and timeouts


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("operation", "call"),
    [
        pytest.param("load", lambda step, lc: step.load(), id="load"),
        pytest.param("ensure_loaded", lambda step, lc: lc.ensure_loaded(), id="ensure_loaded"),
        pytest.param("unload", lambda step, lc: step.unload(), id="unload"),
        pytest.param("reload", lambda step, lc: lc.reload(), id="reload"),
        pytest.param("acquire", lambda step, lc: lc.acquire("waiter"), id="acquire"),
        pytest.param("use", lambda step, lc: step.use(1), id="use"),
    ],
)
def test_waiter_times_out_while_another_thread_loads(
    operation: str, call: Callable[[FakeStep, Lifecycle], Any]
) -> None:
    """With a small timeout, an operation waiting on another thread's gated load raises."""
    step = FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    lc.timeout = 0.05
    try:
        with pytest.raises(
            TransitionInProgressError,
            match=rf"FakeStep 'gen_0' is still 'loading' after waiting 0\.05 s, so "
            rf"{operation}\(\) gave up\. Wait longer",
        ) as info:
            call(step, lc)
        assert (info.value.state, info.value.operation, info.value.timeout) == (
            State.LOADING,
            operation,
            0.05,
        )
        assert lc.holders == ()
    finally:
        finish_gated(step, gate, loader)
    assert lc.state is State.LOADED
    assert step.loads == 1


@stepfsm.stateful(timeout=0.05)
class ImpatientStep(FakeStep):
    """A FakeStep whose class sets a small timeout."""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["class", "configure", "instance-over-configure"])
def test_timeout_set_on_the_class_or_globally_applies(where: str) -> None:
    """A timeout from the decorator or from configure() bounds the wait; the nearest wins."""
    step = ImpatientStep("gen_0") if where == "class" else FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    if where != "class":
        stepfsm.configure(timeout=0.05 if where == "configure" else 3600)
    if where == "instance-over-configure":
        lc.timeout = 0.05
    gate, loader = start_gated_load(step)
    try:
        with pytest.raises(TransitionInProgressError, match=r"after waiting 0\.05 s"):
            lc.ensure_loaded()
    finally:
        finish_gated(step, gate, loader)


@pytest.mark.timeout(30)
def test_waiter_times_out_while_another_thread_unloads() -> None:
    """With a small timeout, load() waiting on another thread's gated unload raises."""
    step = FakeStep("gen_0")
    step.load()
    lc = stepfsm.lifecycle(step)
    gate = threading.Event()
    step.gate = gate
    unloader = Worker(step.unload, "unloader")
    wait_until(lambda: step.unloads == 1, what="the unload to start")
    lc.timeout = 0.05
    try:
        with pytest.raises(TransitionInProgressError, match=r"still 'unloading' after waiting"):
            step.load()
    finally:
        finish_gated(step, gate, unloader)
    assert lc.state is State.UNLOADED


@pytest.mark.timeout(30)
def test_zero_timeout_fails_at_once_while_another_thread_loads() -> None:
    """A timeout of 0 refuses immediately instead of waiting for another thread's load."""
    step = FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    lc.timeout = 0
    try:
        with pytest.raises(TransitionInProgressError, match=r"after waiting 0 s, so load\(\)"):
            step.load()
    finally:
        finish_gated(step, gate, loader)


@pytest.mark.timeout(30)
def test_guarded_call_waits_for_another_threads_load_then_runs() -> None:
    """A guarded call made while another thread loads waits for the load, then runs."""
    step = FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    user = Worker(lambda: step.use(21, twice=True), "user")
    wait_until(lambda: waiters(lc) == 1, what="the guarded call to wait")
    assert user.thread.is_alive()
    finish_gated(step, gate, loader)
    assert user.join() == 42
    assert step.loads == 1


@pytest.mark.timeout(30)
def test_load_waiting_on_another_threads_load_then_refuses() -> None:
    """load() made while another thread loads waits, then raises AlreadyLoadedError."""
    step = FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    second = Worker(step.load, "second")
    wait_until(lambda: waiters(lc) == 1, what="the second load to wait")
    finish_gated(step, gate, loader)
    with pytest.raises(AlreadyLoadedError, match="is already loaded"):
        second.join()
    assert step.loads == 1


@pytest.mark.timeout(30)
def test_unload_waiting_on_another_threads_load_then_unloads() -> None:
    """unload() made while another thread loads waits for the load, then unloads."""
    step = FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    unloader = Worker(step.unload, "unloader")
    wait_until(lambda: waiters(lc) == 1, what="the unload to wait")
    finish_gated(step, gate, loader)
    unloader.join()
    assert (lc.state, step.loads, step.unloads, step.held) == (State.UNLOADED, 1, 1, False)


@pytest.mark.timeout(30)
def test_waiter_sees_the_failure_of_another_threads_load() -> None:
    """A guarded call waiting on a load that fails raises StepFailedError carrying the cause."""
    step = FakeStep("gen_0")
    step.fail_load = Boom("no GPU")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    user = Worker(step.use, "user")
    wait_until(lambda: waiters(lc) == 1, what="the guarded call to wait")
    gate.set()
    with pytest.raises(LoadError, match="failed with Boom: no GPU"):
        loader.join()
    with pytest.raises(StepFailedError, match=r"is 'failed' since .* after Boom: no GPU") as info:
        user.join()
    assert info.value.cause is step.fail_load
    assert lc.statistics().owner is None


@pytest.mark.timeout(30)
def test_many_waiters_all_wake_when_the_load_finishes() -> None:
    """Every thread waiting on a load wakes when it finishes; none of them loads again."""
    step = FakeStep("gen_0")
    lc = stepfsm.lifecycle(step)
    gate, loader = start_gated_load(step)
    users = [Worker(lambda: lc.ensure_loaded(), f"user{i}") for i in range(6)]
    wait_until(lambda: waiters(lc) == 6, what="six waiters")
    finish_gated(step, gate, loader)
    assert [u.join() for u in users] == [False] * 6
    assert step.loads == 1


# -------------------------------------------------------- same-thread re-entry


class ReentrantStep(FakeStep):
    """A FakeStep subclass whose load/unload run a test-supplied check from inside."""

    def __init__(self, name: str = "re_0") -> None:
        super().__init__(name)
        self.inside_load: Callable[[ReentrantStep], None] | None = None
        self.inside_unload: Callable[[ReentrantStep], None] | None = None
        self.uses: list[int] = []

    def load(self) -> None:
        super().load()  # passes straight through: only the outermost call is a transition
        self.uses.append(self.use(7))  # a warm-up call passes through the guard
        if self.inside_load is not None:
            self.inside_load(self)

    def unload(self) -> None:
        self.uses.append(self.use(8))
        if self.inside_unload is not None:
            self.inside_unload(self)
        super().unload()


@pytest.mark.timeout(10)
def test_super_load_and_guarded_calls_pass_through_inside_load() -> None:
    """Inside its own load, super().load() and a guarded call run without waiting or raising."""
    step = ReentrantStep()
    step.load()
    assert (stepfsm.state(step), step.loads, step.uses) == (State.LOADED, 1, [7])
    assert [r.trigger for r in stepfsm.lifecycle(step).history] == ["begin_load", "finish_load"]
    step.unload()
    assert (stepfsm.state(step), step.unloads, step.uses) == (State.UNLOADED, 1, [7, 8])


REFUSED_INSIDE_LOAD = [
    pytest.param("unload", lambda s: s.unload(), id="unload"),
    pytest.param("unload", lambda s: stepfsm.lifecycle(s).unload(force=True), id="unload-force"),
    pytest.param("reload", lambda s: stepfsm.reload(s), id="reload"),
    pytest.param("ensure_loaded", lambda s: stepfsm.ensure_loaded(s), id="ensure_loaded"),
    pytest.param(
        "ensure_loaded", lambda s: stepfsm.lifecycle(s).ensure_loaded(), id="lc.ensure_loaded"
    ),
    pytest.param("acquire", lambda s: stepfsm.lifecycle(s).acquire(), id="acquire"),
    pytest.param("acquire", lambda s: stepfsm.loaded(s).__enter__(), id="loaded-block"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("operation", "call"), REFUSED_INSIDE_LOAD)
def test_other_lifecycle_operations_inside_own_load_raise(
    operation: str, call: Callable[[ReentrantStep], Any]
) -> None:
    """Inside its own load, unload/reload/ensure_loaded/acquire raise TransitionInProgressError."""
    step = ReentrantStep()

    def inside(s: ReentrantStep) -> None:
        with pytest.raises(
            TransitionInProgressError,
            match=rf"ReentrantStep 're_0' cannot {operation}\(\) from inside its own load on "
            r"the same thread \(state 'loading'\); waiting would deadlock",
        ) as info:
            call(s)
        assert (info.value.timeout, info.value.state) == (None, State.LOADING)

    step.inside_load = inside
    step.load()
    lc = stepfsm.lifecycle(step)
    assert (lc.state, lc.holders, step.loads) == (State.LOADED, (), 1)
    assert lc.statistics().owner is None


REFUSED_INSIDE_UNLOAD = [
    pytest.param("load", lambda s: s.load(), id="load"),
    pytest.param("load", lambda s: stepfsm.lifecycle(s).load(), id="lc.load"),
    pytest.param("reload", lambda s: stepfsm.lifecycle(s).reload(), id="reload"),
    pytest.param("ensure_loaded", lambda s: stepfsm.ensure_loaded(s), id="ensure_loaded"),
    pytest.param("acquire", lambda s: stepfsm.lifecycle(s).acquire(), id="acquire"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("operation", "call"), REFUSED_INSIDE_UNLOAD)
def test_other_lifecycle_operations_inside_own_unload_raise(
    operation: str, call: Callable[[ReentrantStep], Any]
) -> None:
    """Inside its own unload, load/reload/ensure_loaded/acquire raise TransitionInProgressError."""
    step = ReentrantStep()

    def inside(s: ReentrantStep) -> None:
        with pytest.raises(
            TransitionInProgressError,
            match=rf"cannot {operation}\(\) from inside its own unload on the same thread "
            r"\(state 'unloading'\)",
        ):
            call(s)

    step.inside_unload = inside
    step.load()
    step.unload()
    lc = stepfsm.lifecycle(step)
    assert (lc.state, step.unloads, step.held) == (State.UNLOADED, 1, False)
    assert lc.statistics().owner is None


@pytest.mark.timeout(10)
def test_reentry_error_escaping_load_fails_the_step_without_deadlock() -> None:
    """A re-entry error that escapes the load fails the step like any other error, no lock held."""
    step = ReentrantStep()
    step.inside_load = lambda s: s.unload()
    with pytest.raises(LoadError, match="failed with TransitionInProgressError") as info:
        step.load()
    assert isinstance(info.value.cause, TransitionInProgressError)
    lc = stepfsm.lifecycle(step)
    assert lc.state is State.FAILED
    assert lc.statistics().owner is None
    step.inside_load = None
    step.load()  # cleans up, then loads
    assert lc.state is State.LOADED


# ---------------------------------------------------------------- composition


@stepfsm.stateful(guard=("run",))
class Task:
    """A step whose load loads another stateful step (a task loading its LLM)."""

    def __init__(
        self,
        llm: FakeStep,
        *,
        name: str = "task_0",
        unload_llm: bool = False,
        fail: BaseException | None = None,
        how: str = "load",
    ) -> None:
        self.name = name
        self.llm = llm
        self.unload_llm = unload_llm
        self.fail = fail
        self.fail_unload: BaseException | None = None
        self.how = how

    def load(self) -> None:
        if self.how == "load":
            self.llm.load()
        elif self.how == "ensure_loaded":
            stepfsm.ensure_loaded(self.llm)
        else:
            stepfsm.lifecycle(self.llm).load()
        if self.fail is not None:
            raise self.fail

    def unload(self) -> None:
        if self.fail_unload is not None:
            raise self.fail_unload
        if self.unload_llm:
            self.llm.unload()

    def run(self) -> int:
        return self.llm.use(5)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("how", ["load", "ensure_loaded", "lifecycle"])
def test_nested_load_is_an_acquire_held_by_the_parent(how: str) -> None:
    """A step loaded inside another's load is acquired: the parent is its holder."""
    llm = FakeStep("llm")
    task = Task(llm, how=how)
    task.load()
    lc = stepfsm.lifecycle(llm)
    assert (lc.state, lc.holders, llm.loads) == (State.LOADED, ("Task 'task_0'",), 1)
    assert task.run() == 5
    with pytest.raises(StepInUseError, match=r"held by 1 holder \(Task 'task_0'\)"):
        llm.unload()
    task.unload()
    assert (lc.state, lc.holders, llm.unloads) == (State.UNLOADED, (), 1)
    assert held_count() == 0


@pytest.mark.timeout(10)
@pytest.mark.parametrize("unload_llm", [False, True])
def test_hand_loaded_child_stays_loaded_after_parent_unloads(unload_llm: bool) -> None:
    """A child the user loaded is reused by the parent's load and stays loaded after its unload."""
    llm = FakeStep("llm")
    llm.load()
    task = Task(llm, unload_llm=unload_llm)
    task.load()  # no AlreadyLoadedError: a nested load is an acquire
    lc = stepfsm.lifecycle(llm)
    assert (llm.loads, lc.holders) == (1, ("Task 'task_0'",))
    task.unload()
    assert (lc.state, lc.holders, llm.unloads) == (State.LOADED, (), 0)
    assert llm.held


@pytest.mark.timeout(10)
@pytest.mark.parametrize("unload_llm", [False, True])
def test_child_loaded_by_parent_is_unloaded_with_the_parent(unload_llm: bool) -> None:
    """A child the parent's load loaded is unloaded once when the parent unloads."""
    llm = FakeStep("llm")
    task = Task(llm, unload_llm=unload_llm)
    task.load()
    task.unload()
    lc = stepfsm.lifecycle(llm)
    assert (lc.state, lc.holders, llm.loads, llm.unloads) == (State.UNLOADED, (), 1, 1)
    assert not llm.held


@pytest.mark.timeout(10)
def test_child_loaded_by_parent_is_unloaded_when_the_parent_load_fails() -> None:
    """When the parent's load raises, the child it loaded is released and unloaded."""
    llm = FakeStep("llm")
    task = Task(llm, fail=Boom("bad prompt template"))
    with pytest.raises(LoadError, match="load\\(\\) of Task 'task_0' failed with Boom"):
        task.load()
    lc = stepfsm.lifecycle(llm)
    assert stepfsm.state(task) is State.FAILED
    assert (lc.state, lc.holders, llm.unloads) == (State.UNLOADED, (), 1)
    assert held_count() == 0


@pytest.mark.timeout(10)
def test_hand_loaded_child_survives_the_parents_failed_load() -> None:
    """When the parent's load raises, a child the user loaded keeps running, without the hold."""
    llm = FakeStep("llm")
    llm.load()
    task = Task(llm, fail=Boom("bad prompt template"))
    with pytest.raises(LoadError, match="failed with Boom"):
        task.load()
    lc = stepfsm.lifecycle(llm)
    assert (lc.state, lc.holders, llm.unloads) == (State.LOADED, (), 0)


@pytest.mark.timeout(10)
def test_two_parents_share_a_child_until_the_last_unloads() -> None:
    """Two tasks sharing one LLM keep it loaded until both have unloaded."""
    llm = FakeStep("llm")
    first, second = Task(llm, name="t1"), Task(llm, name="t2", unload_llm=True)
    first.load()
    second.load()
    lc = stepfsm.lifecycle(llm)
    assert (llm.loads, lc.holders) == (1, ("Task 't1'", "Task 't2'"))
    second.unload()
    assert (lc.state, lc.holders) == (State.LOADED, ("Task 't1'",))
    first.unload()
    assert (lc.state, lc.holders, llm.unloads) == (State.UNLOADED, (), 1)


@pytest.mark.timeout(10)
def test_three_level_chain_loads_and_unloads_top_down() -> None:
    """A pipeline loading a task that loads an LLM unloads all three when the pipeline unloads."""

    @stepfsm.stateful
    class Pipeline:
        def __init__(self, task: Task) -> None:
            self.name = "pipe"
            self.task = task

        def load(self) -> None:
            self.task.load()

        def unload(self) -> None:
            pass

    llm = FakeStep("llm")
    task = Task(llm)
    pipe = Pipeline(task)
    pipe.load()
    assert stepfsm.lifecycle(task).holders == ("Pipeline 'pipe'",)
    assert stepfsm.lifecycle(llm).holders == ("Task 'task_0'",)
    pipe.unload()
    assert [stepfsm.state(x) for x in (pipe, task, llm)] == [State.UNLOADED] * 3
    assert (llm.loads, llm.unloads, held_count()) == (1, 1, 0)


@pytest.mark.timeout(10)
def test_child_stays_held_while_parent_unload_fails_until_clean_up() -> None:
    """A parent whose unload raised still holds its child; the parent's clean-up releases it."""
    llm = FakeStep("llm")
    task = Task(llm)
    task.load()
    lc = stepfsm.lifecycle(llm)
    task.fail_unload = Boom("disk full")
    with pytest.raises(stepfsm.UnloadError, match="failed with Boom: disk full"):
        task.unload()
    assert stepfsm.state(task) is State.FAILED
    assert (lc.state, lc.holders) == (State.LOADED, ("Task 'task_0'",))
    task.fail_unload = None
    task.unload()  # the clean-up succeeds
    assert stepfsm.state(task) is State.UNLOADED
    assert (lc.state, lc.holders, llm.unloads) == (State.UNLOADED, (), 1)


class HoldsWithHook(list):  # type: ignore[type-arg]
    """A holders list that runs ``hook`` once, in the middle of the first scan over it.

    It iterates by index exactly like the built-in list iterator, so what the
    hook does (another thread's release) is seen as it would be by a scan
    that a thread switch interrupted there.
    """

    def __init__(self, items: list[Any], hook: Callable[[], None]) -> None:
        super().__init__(items)
        self.hook: Callable[[], None] | None = hook

    def __iter__(self) -> Iterator[Any]:
        index = 0
        while index < len(self):
            yield self[index]
            if self.hook is not None:
                hook, self.hook = self.hook, None
                hook()
            index += 1


@pytest.mark.timeout(30)
def test_parent_unload_finds_its_hold_while_another_holder_releases() -> None:
    """A parent's unload lets go of its child even if another holder releases at the same moment.

    The parent's unload calls the child's unload(), which must find the
    parent's hold and release it. Another thread releases its own hold on the
    child while that lookup runs; the lookup must still find the parent's hold
    instead of treating the call as a plain unload() (StepInUseError).
    """
    llm = FakeStep("llm")
    llm.load()
    lc = stepfsm.lifecycle(llm)
    lc.acquire("other")
    task = Task(llm, unload_llm=True)
    task.load()
    assert lc.holders == ("'other'", "Task 'task_0'")

    def other_thread_releases() -> None:
        releaser = Worker(lambda: lc.release("other"), "releaser")
        releaser.thread.join(0.5)  # it may be blocked on the child's lock: then it runs later

    lc._holds = HoldsWithHook(lc._holds, other_thread_releases)
    task.unload()
    assert stepfsm.state(task) is State.UNLOADED
    wait_until(lambda: lc.holders == (), what="both holds to be released")
    assert (lc.state, llm.held) == (State.LOADED, True)  # loaded by hand: stays loaded


@pytest.mark.timeout(30)
def test_parents_loading_in_threads_share_one_child_load() -> None:
    """Eight tasks sharing one LLM, loaded together from eight threads, load the LLM once."""
    llm = FakeStep("llm", delay=0.05)
    tasks = [Task(llm, name=f"t{i}") for i in range(8)]
    assert run_threads(8, lambda i: tasks[i].load()) == []
    lc = stepfsm.lifecycle(llm)
    assert (llm.loads, len(lc.holders)) == (1, 8)
    assert run_threads(8, lambda i: tasks[i].unload()) == []
    assert (lc.state, lc.holders, llm.unloads) == (State.UNLOADED, (), 1)


class HookStep(FakeStep):
    """A FakeStep that calls ``before_unload`` at the start of its unload."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.before_unload: Callable[[], None] | None = None

    def unload(self) -> None:
        if self.before_unload is not None:
            self.before_unload()
        super().unload()


class TwoLLMTask(Task):
    """A task holding two LLMs whose unload lets go of the first one by hand."""

    def __init__(self, first: FakeStep, second: FakeStep) -> None:
        super().__init__(first, unload_llm=True)
        self.second = second

    def load(self) -> None:
        self.llm.load()
        self.second.load()

    def unload(self) -> None:
        self.llm.unload()  # the second LLM is released for it after the unload


@pytest.mark.timeout(30)
def test_stale_release_after_parent_unload_does_not_steal_a_new_hold() -> None:
    """A parent loaded again while its old holds are still being released keeps its children.

    The parent's unload lets go of child one by hand; child two is released for
    it after the unload, and child two's unload is where another thread loads
    the parent again. Once that settles the parent is loaded, so both children
    must be loaded and held by it.
    """
    one, two = FakeStep("one"), HookStep("two")
    task = TwoLLMTask(one, two)
    task.load()
    lc_one = stepfsm.lifecycle(one)
    reloader: list[Worker] = []

    def load_parent_again() -> None:
        reloader.append(Worker(task.load, "reloader"))
        wait_until(lambda: lc_one.holders == ("TwoLLMTask 'task_0'",), what="the new hold")

    two.before_unload = load_parent_again
    task.unload()
    two.before_unload = None
    assert len(reloader) == 1
    reloader[0].join()
    assert stepfsm.state(task) is State.LOADED
    assert stepfsm.state(two) is State.LOADED
    assert (lc_one.state, lc_one.holders, one.held) == (
        State.LOADED,
        ("TwoLLMTask 'task_0'",),
        True,
    )


# ------------------------------------------------------------------ the storm


class StormThread:
    """One thread's view of the storm: its own holder token and how many holds it owns."""

    def __init__(self, index: int) -> None:
        self.token = f"thread-{index}"
        self.holds = 0
        self.ops = 0


#: Operation mixes: a thread holding the step mostly releases it, so that the
#: step often has no holders and unload()/reload() get through.
FREE_OPS = ("load", "unload", "unload", "ensure", "acquire", "release", "reload", "block", "status")
HOLDING_OPS = ("release",) * 6 + ("acquire", "use", "load", "unload", "reload", "block")

#: The only refusals each storm operation may meet; anything else fails the test.
REFUSALS: dict[str, tuple[type[StepStateError], ...]] = {
    "load": (AlreadyLoadedError,),
    "unload": (StepInUseError,),
    "reload": (StepInUseError,),
}


def check_settled(step: FakeStep, lc: Lifecycle, me: StormThread) -> None:
    """With the lock held and no transition running: the resource is held iff state is loaded."""

    def check() -> None:
        state = lc.state
        assert state not in TRANSIENT, f"{state} while claimed"
        assert (state is State.LOADED) == step.held, f"state {state} but held={step.held}"
        assert state is not State.FAILED
        if me.holds:  # while this thread holds the step nobody can unload it
            assert state is State.LOADED, f"held by {me.token} but {state}"

    under_claim(lc, check)


def storm_op(op: str, step: FakeStep, lc: Lifecycle, me: StormThread) -> None:
    """Run one storm operation; the refusals in REFUSALS are allowed, nothing else is."""
    try:
        if op == "load":
            step.load()
        elif op == "unload":
            step.unload()
        elif op == "ensure":
            lc.ensure_loaded()
        elif op == "acquire":
            lc.acquire(me.token)
            me.holds += 1
        elif op == "release":
            if me.holds:
                lc.release(me.token)
                me.holds -= 1
            else:
                with pytest.raises(StepStateError, match=r"has no hold by 'thread-\d' to release"):
                    lc.release(me.token)
        elif op == "reload":
            lc.reload()
        elif op == "block":
            with stepfsm.loaded(step) as same:
                assert same.use(2) == 2
        elif op == "status":
            assert "FakeStep 'storm'" in str(stepfsm.status())
        else:
            assert step.use(4) == 4
    except StepStateError as refused:
        if not isinstance(refused, REFUSALS.get(op, ())):
            raise
    me.ops += 1


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("busy_switching")
def test_storm_of_operations_keeps_resource_held_iff_loaded() -> None:
    """12,000 random operations over eight threads keep 'resource held iff loaded' at every step.

    The storm runs in rounds: 100 random operations per thread, then every
    thread lets go of its holds, all meet at a barrier, one of them unloads,
    and all check that the step is unloaded with nothing held.
    """
    step = FakeStep("storm")
    lc = stepfsm.lifecycle(step)
    # Checks on other threads list the open handles (HANDLES.held()) while one unloads:
    # a reference in another thread's frame, which the release check rightly reports.
    lc.on_leak = "ignore"
    threads = [StormThread(i) for i in range(8)]
    rounds, ops_per_round = 15, 100
    triggers: list[str] = []
    lc.subscribe(lambda _, record: triggers.append(record.trigger))
    barrier = threading.Barrier(8, timeout=30)

    def body(i: int) -> None:
        me = threads[i]
        rng = random.Random(1234 + i)
        try:
            for _ in range(rounds):
                for _ in range(ops_per_round):
                    storm_op(rng.choice(HOLDING_OPS if me.holds else FREE_OPS), step, lc, me)
                    check_settled(step, lc, me)
                while me.holds:
                    storm_op("release", step, lc, me)
                if barrier.wait() == 0:
                    step.unload()  # nobody holds it and nobody else is acting
                barrier.wait()
                assert (lc.state, lc.holders, step.held) == (State.UNLOADED, (), False)
                barrier.wait()
        except BaseException:
            barrier.abort()  # the others fail fast instead of waiting out the barrier
            raise

    errors = run_threads(8, body, timeout=50)
    assert [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] == []
    assert errors == []
    assert sum(t.ops for t in threads) >= rounds * ops_per_round * 8 >= 10_000
    assert "fail" not in triggers
    assert step.loads == step.unloads >= rounds  # every round loaded at least once
    assert (lc.state, lc.holders, held_count()) == (State.UNLOADED, (), 0)
    assert lc.statistics().owner is None


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("busy_switching")
def test_storm_with_composition_keeps_child_loaded_while_parent_is() -> None:
    """Threads loading and unloading tasks and their shared LLM never leave a task on a bare LLM."""
    llm = FakeStep("llm")
    tasks = [Task(llm, name=f"t{i}", unload_llm=bool(i % 2)) for i in range(4)]
    task_lcs = [stepfsm.lifecycle(t) for t in tasks]
    llm_lc = stepfsm.lifecycle(llm)
    ops_per_thread = 500

    def body(i: int) -> None:
        rng = random.Random(99 + i)
        for _ in range(ops_per_thread):
            task = rng.choice(tasks)
            op = rng.choice(("task.load", "task.unload", "llm.load", "llm.unload"))
            try:
                if op == "task.load":
                    task.load()
                elif op == "task.unload":
                    task.unload()
                elif op == "llm.load":
                    llm.load()
                else:
                    llm.unload()
            except StepStateError as refused:
                if not isinstance(refused, REFUSALS.get(op.partition(".")[2], ())):
                    raise
            for lc in task_lcs:

                def task_check(lc: Lifecycle = lc) -> None:
                    if lc.state is State.LOADED:
                        assert llm_lc.state is State.LOADED, "a loaded task on an unloaded LLM"

                under_claim(lc, task_check)

            def llm_check() -> None:
                assert (llm_lc.state is State.LOADED) == llm.held

            under_claim(llm_lc, llm_check)

    assert run_threads(8, body, timeout=50) == []
    for task in tasks:
        task.unload()
    assert llm_lc.holders == ()
    assert llm.loads == llm.unloads + (llm_lc.state is State.LOADED)
