"""Regression tests for the defects an adversarial trial found in the core, one each.

Each test names the defect it pins down; each failed on the engine before
the claim-based redesign (see ``docs/decisions.md``, "Interrupt safety").
The interrupt defect itself has its own sweep (``test_interrupt_sweep.py``)
and storm (``test_storm.py``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import stepfsm
from stepfsm import (
    CleanupWarning,
    DefinitionError,
    DuplicateLoadWarning,
    State,
    TransitionInProgressError,
    TransitionRecord,
)
from tests.conftest import FakeStep, run_threads
from tests.fakes import Boom

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


# ------------------------------------------------ 2. fork() inside a load


@stepfsm.stateful(guard=("use",))
class ForkingStep:
    """A step whose load forks; the child lets the load return through stepfsm."""

    def __init__(self) -> None:
        self.name = "forker"
        self.resource: object | None = None
        self.child_pid = 0
        self.forks = True

    def load(self) -> str:
        self.resource = object()
        if self.forks:
            self.forks = False
            self.child_pid = os.fork()
        return "parent" if self.child_pid else "child"

    def unload(self) -> None:
        self.resource = None

    def use(self) -> int:
        assert self.resource is not None
        return 1


@fork_only
@pytest.mark.timeout(60)
def test_fork_inside_load_the_child_returns_through_stepfsm_and_loads_again() -> None:
    """Defect 2: a child forked inside load() finishes that load() and can load for real.

    Before, the child's fresh lock was left held (the ``with`` released the
    parent's old lock object): ``RuntimeError: release unlocked lock``, and
    the child could never load.
    """
    step = ForkingStep()
    returned = step.load()
    if step.child_pid == 0:  # the child: load() returned here, through stepfsm's code
        code = 1
        try:
            lc = stepfsm.lifecycle(step)
            ok = returned == "child" and lc.state is State.UNLOADED
            ok = ok and lc.statistics().owner is None
            step.load()  # a real load in the child
            ok = ok and lc.state is State.LOADED and step.use() == 1
            step.unload()
            code = 0 if ok and lc.state is State.UNLOADED else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(step.child_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not finish and load again"
    assert (returned, stepfsm.state(step)) == ("parent", State.LOADED)
    step.unload()


# ------------------------------------- 3. a listener loading during begin_load


@pytest.mark.parametrize("call", ["load", "ensure_loaded", "use", "unload", "reload"])
def test_listener_operating_on_its_step_during_a_transition_is_refused(
    step: FakeStep, call: str
) -> None:
    """Defect 3: a listener's step.load() during begin_load never runs the load body twice.

    The listener runs on the transitioning thread but outside the user's
    load, so its call is an ordinary one; waiting would deadlock, so it is
    refused with TransitionInProgressError (and logged, not propagated).
    """
    seen: list[BaseException] = []

    def listener(lc: stepfsm.Lifecycle, record: TransitionRecord) -> None:
        if record.trigger == "begin_load":
            try:
                {
                    "load": step.load,
                    "ensure_loaded": lc.ensure_loaded,
                    "use": step.use,
                    "unload": step.unload,
                    "reload": lc.reload,
                }[call]()
            except BaseException as error:  # recorded for the assertion below
                seen.append(error)

    stepfsm.lifecycle(step).subscribe(listener)
    step.load()
    assert step.loads == 1, "the user's load ran twice"
    assert len(seen) == 1
    assert isinstance(seen[0], TransitionInProgressError)
    assert "waiting would deadlock" in str(seen[0])
    assert "from a listener" in str(seen[0]), "the message must not blame the load"
    assert stepfsm.state(step) is State.LOADED


def test_listener_may_operate_on_other_steps(step: FakeStep) -> None:
    """A listener of one step can load another step: that is an ordinary call."""
    other = FakeStep("other")
    stepfsm.lifecycle(step).subscribe(
        lambda lc, record: other.load() if record.trigger == "finish_load" else None
    )
    step.load()
    assert (stepfsm.state(other), other.loads) == (State.LOADED, 1)


# ------------------------------------------- 4. concurrent subscribe/unsubscribe


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scope", ["global", "lifecycle"])
def test_concurrent_unsubscribes_lose_and_resurrect_nothing(
    step: FakeStep, scope: str, busy_switching: None
) -> None:
    """Defect 4: 8,000 subscriptions removed from 8 threads at once leave none behind.

    Before, the read-copy-write of the listener table had no lock: 6,880 of
    8,000 stayed registered.
    """
    lc = stepfsm.lifecycle(step)
    subscribe = stepfsm.subscribe if scope == "global" else lc.subscribe
    calls: list[int] = []
    before = len(stepfsm._settings.LISTENERS)
    unsubscribes = [subscribe(lambda lc, r, i=i: calls.append(i)) for i in range(8000)]
    keepers: list[Any] = []

    def body(i: int) -> None:
        for unsubscribe in unsubscribes[i::8]:
            unsubscribe()
        keepers.append(subscribe(lambda lc, r, i=i: calls.append(-1 - i)))  # adds race removes

    assert run_threads(8, body) == []
    step.load()
    assert sorted(calls) == sorted(-1 - i for i in range(8) for _ in range(2))
    for unsubscribe in keepers:
        unsubscribe()
    assert len(stepfsm._settings.LISTENERS) == before


# --------------------------------------- 5. unload_all and a failed clean-up


def test_unload_all_does_not_report_a_step_whose_cleanup_failed(quiet_log: None) -> None:
    """Defect 5: a failed step whose clean-up raises stays failed and is not reported unloaded."""
    good, bad = FakeStep("good"), FakeStep("bad")
    good.load()
    bad.fail_load = Boom("no GPU")
    with pytest.raises(stepfsm.LoadError):
        bad.load()
    bad.fail_unload = Boom("driver gone")
    with pytest.warns(CleanupWarning, match="driver gone"):
        done = stepfsm.unload_all()
    assert done == ("FakeStep 'good'",)
    lc = stepfsm.lifecycle(bad)
    assert (lc.state, str(lc.cleanup_error)) == (State.FAILED, "driver gone")


# ------------------------------------------ 6. and weak spots: definitions


async def _coroutine(self: Any) -> None:
    pass


def _generator(self: Any) -> Iterator[None]:
    yield


async def _async_generator(self: Any) -> AsyncIterator[None]:
    yield


def _plain(self: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("role", "method", "match"),
    [
        ("load", _coroutine, r"it is an async def while the class.s other transition method"),
        ("unload", _coroutine, r"an async step needs both load\(\) and unload\(\) async def"),
        ("load", _generator, "it is a generator function; calling it only creates a generator"),
        ("load", _async_generator, "it is an async generator function"),
        ("load", staticmethod(_plain), "it is a staticmethod; a step's load"),
        ("unload", classmethod(_plain), "it is a classmethod; a step's unload"),
    ],
)
def test_load_and_unload_that_cannot_run_are_refused_at_definition(
    role: str, method: Any, match: str
) -> None:
    """Defect 6: async/generator/static/class load or unload is refused when the class is made.

    Before, an ``async def load`` was accepted: the state became ``loaded``
    while the body never ran ("coroutine ... was never awaited").
    """
    body = {"load": _plain, "unload": _plain, role: method}
    with pytest.raises(DefinitionError, match=match):
        stepfsm.stateful(type("Bad", (), dict(body)))
    with pytest.raises(DefinitionError, match=match):
        type("BadMixin", (stepfsm.Stateful,), dict(body))


def test_subclass_with_an_async_load_override_is_refused() -> None:
    """A subclass overriding load() with an async def is refused when the subclass is made."""
    with pytest.raises(DefinitionError, match=r"Sub.load\(\) cannot be the load method"):

        class Sub(FakeStep):
            async def load(self) -> None:  # type: ignore[override]
                pass


def test_guard_naming_a_static_method_is_refused() -> None:
    """A guard must be an instance method: a staticmethod would get the step as its argument."""
    body = {"load": _plain, "unload": _plain, "helper": staticmethod(_plain)}
    with pytest.raises(DefinitionError, match="guard names 'helper', but that is not a method"):
        stepfsm.stateful(guard=("helper",))(type("Bad", (), body))


def test_load_and_unload_return_what_the_users_code_returns(step: FakeStep) -> None:
    """load(), lifecycle.load(), reload() and unload() return the user's own return value."""

    @stepfsm.stateful
    class Answering:
        def load(self) -> str:
            return "weights ready"

        def unload(self) -> str:
            return "freed"

    obj = Answering()
    assert obj.load() == "weights ready"
    assert stepfsm.reload(obj) == "weights ready"
    assert obj.unload() == "freed"
    lc = stepfsm.lifecycle(obj)
    assert lc.load() == "weights ready"
    assert lc.unload() == "freed"
    assert lc.unload() is None  # a no-op runs nothing
    assert stepfsm.ensure_loaded(obj) is True  # ensure_loaded() still says whether it loaded


@pytest.mark.parametrize("scope", ["global", "lifecycle"])
def test_one_argument_listener_is_refused(step: FakeStep, scope: str) -> None:
    """A listener that cannot take (lifecycle, record) is refused by subscribe(), not ignored."""
    subscribe = stepfsm.subscribe if scope == "global" else stepfsm.lifecycle(step).subscribe
    with pytest.raises(TypeError, match=r"has the signature \(record\)"):
        subscribe(lambda record: None)  # type: ignore[arg-type,misc]
    subscribe(lambda *args: None)  # a catch-all is fine
    subscribe(print)  # so is a builtin without a signature


@dataclasses.dataclass
@stepfsm.stateful(guard=("use",))
class DataStep:
    """A dataclass step: equality compares its fields (``model`` is set by load)."""

    path: str
    model: Any = None

    def load(self) -> None:
        self.model = object()

    def unload(self) -> None:
        self.model = None

    def use(self) -> Any:
        return self.model


def test_dataclass_steps_with_the_same_configuration_warn_on_the_second_load() -> None:
    """A @dataclass step gets DuplicateLoadWarning: pre-load configurations are compared.

    Before, the loaded first step (its ``model`` set) was compared with the
    new step's pre-load fields, so they never matched.
    """
    first, second, third = DataStep("w.bin"), DataStep("w.bin"), DataStep("other.bin")
    first.load()
    with pytest.warns(DuplicateLoadWarning, match=r"same configuration as DataStep at 0x"):
        second.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third.load()  # another configuration: no warning


@pytest.mark.skipif(sys.version_info < (3, 10), reason="dataclass slots")
def test_slotted_dataclass_refusal_names_weakref_slot() -> None:
    """A @dataclass(slots=True) without a __weakref__ slot is told about weakref_slot=True."""
    with pytest.raises(DefinitionError, match=r"@dataclass\(slots=True, weakref_slot=True\)"):

        @stepfsm.stateful
        @dataclasses.dataclass(slots=True)
        class Slotted:
            path: str = ""

            def load(self) -> None:
                pass

            def unload(self) -> None:
                pass


def test_duplicate_detection_reads_only_the_new_steps_configuration() -> None:
    """Finding a duplicate costs one model_dump() of the step loading, however many are loaded.

    Steps are indexed by class and pre-load configuration, so loading the
    2,000th costs what loading the 100th does (benchmarks/ measures it).
    """
    pydantic = pytest.importorskip("pydantic")
    dumps = [0]

    @stepfsm.stateful
    class Model(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)
        path: str

        def load(self) -> None:
            pass

        def unload(self) -> None:
            pass

        def model_dump(self, **kwargs: Any) -> dict[str, Any]:
            dumps[0] += 1
            return super().model_dump(**kwargs)  # type: ignore[no-any-return]

    models = [Model(path=f"m{i}") for i in range(300)]
    for model in models:
        model.load()
    dumps[0] = 0
    Model(path="new").load()
    assert dumps[0] == 1
    with pytest.warns(DuplicateLoadWarning, match="Model at 0x"):
        Model(path="m7").load()
    assert dumps[0] == 2
    stepfsm.unload_all()


# ------------------------------------------------------- typos (first-run)


ACCEPTED = (
    "The accepted options are load, unload, guard, on_repeat, on_unloaded_use, timeout, "
    "on_leak, drain_timeout, cost, idle_timeout."
)


def test_unknown_stateful_class_keyword_is_a_definition_error_with_a_suggestion() -> None:
    """A typo in a Stateful class keyword names the accepted options and the likely one."""
    with pytest.raises(
        DefinitionError, match=r"unknown stepfsm option 'guards' \(did you mean 'guard'\?\)"
    ) as info:

        class Typo(stepfsm.Stateful, guards=("use",)):  # type: ignore[call-arg]
            def load(self) -> None:
                pass

            def unload(self) -> None:
                pass

    assert str(info.value).endswith(ACCEPTED)


def test_unknown_stateful_decorator_option_is_a_definition_error_with_a_suggestion() -> None:
    """A typo in an @stateful(...) option is refused as a Stateful class keyword is."""
    with pytest.raises(
        DefinitionError, match=r"\.Typo: unknown stepfsm option 'guards' \(did you mean 'guard'"
    ) as info:

        @stepfsm.stateful(guards=("use",))  # type: ignore[call-overload]
        class Typo:
            def load(self) -> None:
                pass

            def unload(self) -> None:
                pass

    assert str(info.value).endswith(ACCEPTED)
    assert isinstance(info.value, TypeError)  # what Python raises for an unknown keyword


def test_missing_load_never_suggests_the_unload_method() -> None:
    """With no load() but an unload(), the hint does not point at unload."""
    with pytest.raises(DefinitionError, match=r"has no load\(\) method") as info:
        stepfsm.stateful(type("NoLoad", (), {"unload": _plain}))
    assert "unload'?" not in str(info.value)


def _hint(**methods: Any) -> str:
    """The 'Did you mean' part of the error for a class with these methods, or ''."""
    with pytest.raises(DefinitionError, match=r"has no (un)?load\(\) method") as info:
        stepfsm.stateful(type("Missing", (), methods))
    _, _, hint = str(info.value).partition(" Did you mean ")
    return hint


@pytest.mark.parametrize(
    ("names", "hint"),
    [
        (("unload", "_unload"), ""),  # no name with "unload" in it is a load method
        (("unload", "unload_model"), ""),
        (("unload", "download", "reload", "preload"), ""),  # "load" inside another word
        (("unload", "load_model", "download"), "'load_model'?"),
        (("unload", "_unload", "_load"), "'_load'?"),
        (("unload", "aload"), "'aload'?"),
        (("unload", "laod"), "'laod'?"),  # a typo of the word
        (("load", "load_model"), ""),  # and symmetrically for a missing unload()
        (("load", "download"), ""),
        (("load", "unload_model", "load_model"), "'unload_model'?"),
        (("load", "_unload"), "'_unload'?"),
        (("load", "unlaod"), "'unlaod'?"),
    ],
)
def test_missing_method_hint_suggests_only_a_name_that_could_be_that_method(
    names: tuple[str, ...], hint: str
) -> None:
    assert _hint(**dict.fromkeys(names, _plain)) == hint


def test_same_thread_operations_inside_a_listener_do_not_deadlock(step: FakeStep) -> None:
    """Even a release() from a listener during a transition returns at once (refused)."""
    seen: list[BaseException] = []
    lc = stepfsm.lifecycle(step)

    def listener(lc: stepfsm.Lifecycle, record: TransitionRecord) -> None:
        if record.trigger == "begin_unload":
            try:
                lc.release("nobody")
            except BaseException as error:  # recorded
                seen.append(error)

    lc.subscribe(listener)
    step.load()
    done = threading.Event()
    threading.Thread(target=lambda: (step.unload(), done.set()), daemon=True).start()
    assert done.wait(10), "deadlocked"
    assert [type(e) for e in seen] == [TransitionInProgressError]


def test_operations_leave_no_frame_for_the_garbage_collector(step: FakeStep) -> None:
    """Every operation's claim holds its frame: a claim left in the frame's locals makes a
    cycle that only the garbage collector frees (8 objects per load/unload, ~1 us)."""
    import gc
    import types

    lc = stepfsm.lifecycle(step)

    def operations() -> None:
        step.load()
        step.unload()
        stepfsm.ensure_loaded(step)
        stepfsm.reload(step)
        with stepfsm.loaded(step):
            pass
        lc.acquire()
        lc.release()
        step.unload()
        lc.on_unloaded_use = "ignore"
        lc.require_loaded()  # the guards' slow path reads the settled state under a claim
        lc.on_unloaded_use = None

    operations()  # one-time objects (history, tables) stay out of the count
    gc.collect()
    flags, enabled = gc.get_debug(), gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
    try:
        for _ in range(5):
            operations()
        gc.collect()
        frames = [
            obj.f_code.co_name
            for obj in gc.garbage
            if isinstance(obj, types.FrameType)
            and obj.f_code.co_filename.startswith(os.path.dirname(stepfsm.__file__))
        ]
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert frames == [], f"stepfsm frames freed only by the garbage collector: {frames}"
