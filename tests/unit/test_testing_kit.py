"""The public test kit (stepfsm.testing): it fails every broken step class and passes correct ones.

Each broken class below has one of the faults ``check_lifecycle`` promises to
find; each correct one must pass, including one whose first load fails
cleanly. The classes live at module level so that pickling them works.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import re
import weakref
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis.stateful import rule

import stepfsm
from stepfsm import registry, testing
from stepfsm.testing import STEP, LifecycleMachine, check_lifecycle

EXAMPLES = 60  # per correct class; broken ones fail within a few examples


class Res:
    """A resource that is held until closed."""

    def __init__(self) -> None:
        self.open = True

    def close(self) -> None:
        self.open = False


def res_held(obj: Any) -> bool:
    """Whether ``obj.res`` is an open resource."""
    return obj.res is not None and obj.res.open


# ------------------------------------------------------------ correct classes


class Contract:
    """Acquires in load, releases in unload (made stateful by the classes below)."""

    def __init__(self) -> None:
        self.res: Res | None = None

    def load(self) -> None:
        self.res = Res()

    def unload(self) -> None:
        if self.res is not None:
            self.res.close()
        self.res = None


@stepfsm.stateful
class Good(Contract):
    """The contract, through the decorator."""


class GoodFirstLoadFails(Good):
    """Its first load raises before acquiring anything; later loads work."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def load(self) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("the model server is still starting")
        super().load()


class GoodFailsAfterAcquiring(Good):
    """Its first load raises after acquiring; its unload (the clean-up) releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def load(self) -> None:
        self.attempts += 1
        self.res = Res()
        if self.attempts == 1:
            raise MemoryError("out of memory while warming up")


class GoodMixin(Contract, stepfsm.Stateful):
    """The same contract through the Stateful mixin."""


class GoodAsync(stepfsm.Stateful):
    """The contract as an async step: ``async def`` load and unload (awaited by the kit)."""

    def __init__(self) -> None:
        self.res: Res | None = None

    async def load(self) -> None:
        await asyncio.sleep(0)  # a real suspension: other tasks run meanwhile
        self.res = Res()

    async def unload(self) -> None:
        await asyncio.sleep(0)
        if self.res is not None:
            self.res.close()
        self.res = None


# ------------------------------------------------------------- broken classes


class AsyncUnloadKeeps(GoodAsync):
    """Broken: an async step whose unload forgets to release."""

    async def unload(self) -> None:
        await asyncio.sleep(0)


class UnloadKeeps(Good):
    """Broken: unload() forgets to release."""

    def unload(self) -> None:
        pass


class UnloadPartial(Good):
    """Broken: load takes two parts, unload releases only one."""

    def load(self) -> None:
        self.res = Res()
        self.cache = Res()


def partial_held(obj: Any) -> bool:
    """Held while either part is open."""
    cache = getattr(obj, "cache", None)
    return res_held(obj) or (cache is not None and cache.open)


class LoadNoAcquire(Good):
    """Broken: load() does not acquire (it would do so lazily on first use)."""

    def load(self) -> None:
        pass


class SharedAcrossInstances(Good):
    """Broken: every instance shares one class-level resource, so one's unload frees another's."""

    pool: ClassVar[Res | None] = None

    def load(self) -> None:
        cls = type(self)
        if cls.pool is None or not cls.pool.open:
            cls.pool = Res()
        self.res = cls.pool


class CopySharesResource(Good):
    """Broken: its own __copy__/__deepcopy__ carry the live resource into the copy."""

    def __copy__(self) -> CopySharesResource:
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def __deepcopy__(self, memo: dict[int, Any]) -> CopySharesResource:
        return self.__copy__()


_LIVE_BY_NAME: dict[str, Res] = {}
_NAMES = itertools.count()


class PickleReattaches(Good):
    """Broken: unpickling reconnects to the original's live resource (looked up by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"p{next(_NAMES)}"

    def load(self) -> None:
        super().load()
        assert self.res is not None
        _LIVE_BY_NAME[self.name] = self.res

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.res = _LIVE_BY_NAME.get(self.name)


class FailAfterAcquireLeaks(Good):
    """Broken: the first load acquires then raises, and unload only releases after a full load."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0
        self.ready = False

    def load(self) -> None:
        self.attempts += 1
        self.res = Res()
        if self.attempts == 1:
            raise RuntimeError("CUDA error after allocating")
        self.ready = True

    def unload(self) -> None:
        if self.ready and self.res is not None:
            self.res.close()
            self.res = None
        self.ready = False


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "factory",
    [Good, GoodFirstLoadFails, GoodFailsAfterAcquiring, GoodMixin, GoodAsync],
    ids=lambda cls: cls.__name__,
)
def test_check_lifecycle_passes_correct_classes(factory: type) -> None:
    """A class that keeps the contract passes, including one whose first load fails."""
    check_lifecycle(factory, is_held=res_held, max_examples=EXAMPLES)


def test_check_lifecycle_leaves_no_object_alive() -> None:
    """Every object the check made (copies and pickles too) is garbage once it returns.

    The registry keeps a lifecycle as long as its object lives, so a listener
    left subscribed that refers to the object would keep it alive for good.
    """
    made: list[weakref.ref[Any]] = []

    def factory() -> Good:
        step = Good()
        made.append(weakref.ref(step))
        return step

    check_lifecycle(factory, is_held=res_held, max_examples=EXAMPLES)
    gc.collect()
    assert len(made) >= EXAMPLES
    assert [ref() for ref in made if ref() is not None] == []
    assert [lc for lc in registry.live() if isinstance(lc.step, Good)] == []


def test_check_lifecycle_passes_a_correct_pydantic_model() -> None:
    """A pydantic model holding its resource in a private attribute passes."""
    pydantic = pytest.importorskip("pydantic")

    @stepfsm.stateful
    class Model(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)
        name: str = "m"
        _res: Res | None = pydantic.PrivateAttr(default=None)

        def load(self) -> None:
            self._res = Res()

        def unload(self) -> None:
            if self._res is not None:
                self._res.close()
            self._res = None

    check_lifecycle(
        Model, is_held=lambda m: m._res is not None and m._res.open, max_examples=EXAMPLES
    )


@pytest.mark.parametrize(
    ("factory", "is_held", "expected"),
    [
        (UnloadKeeps, res_held, "unload() does not release it"),
        (AsyncUnloadKeeps, res_held, "unload() does not release it"),
        (UnloadPartial, partial_held, "unload() does not release it (or not all of it)"),
        (LoadNoAcquire, res_held, "load() does not acquire it"),
        (SharedAcrossInstances, res_held, "the instances share one resource"),
        (CopySharesResource, res_held, "carries the original's live resource"),
        (PickleReattaches, res_held, "carries the original's live resource"),
        (
            FailAfterAcquireLeaks,
            res_held,
            "the clean-up (unload) of a failed load does not release what that load acquired",
        ),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_check_lifecycle_fails_broken_classes(factory: type, is_held: Any, expected: str) -> None:
    """Each broken class fails with the rule it broke and the shortest sequence that shows it."""
    with pytest.raises(AssertionError) as caught:
        check_lifecycle(factory, is_held=is_held, threads=0)
    message = str(caught.value)
    assert expected in message
    assert message.startswith("after [s0 = factory()")


def test_the_failure_spells_out_the_sequence_and_the_broken_rule() -> None:
    """A failure names every call of the failing sequence, the object, its state and the rule."""
    with pytest.raises(AssertionError) as caught:
        check_lifecycle(LoadNoAcquire, is_held=res_held)
    first_line = str(caught.value).splitlines()[0]
    assert re.fullmatch(
        r"after \[s0 = factory\(\)(, [^\]]+)?\] s\d is 'loaded' but its resource is not "
        r"held: load\(\) does not acquire it\.",
        first_line,
    ), first_line


def test_check_lifecycle_rejects_a_class_that_is_not_stateful() -> None:
    """A factory returning a plain object is refused with a TypeError saying what to do."""

    class Plain:
        res = None

    with pytest.raises(TypeError, match="not stateful"):
        check_lifecycle(Plain, is_held=res_held, max_examples=5)


class GoodWithRule(LifecycleMachine):
    """A user's machine: the kit's rules plus one of their own."""

    def make(self) -> Any:
        return Good()

    def is_held(self, obj: Any) -> bool:
        return res_held(obj)

    @rule(step=STEP)
    def use_resource(self, step: int) -> None:
        """A loaded step's resource is open whenever the user touches it."""
        obj = self.instance(step)
        assert obj in self.instances
        if stepfsm.is_loaded(obj):
            assert obj.res.open


def test_lifecycle_machine_can_be_subclassed_with_own_rules() -> None:
    """Subclassing LifecycleMachine and adding a rule gives a runnable hypothesis test."""
    test_case = GoodWithRule.TestCase
    test_case.settings = settings(max_examples=20, deadline=None)
    test_case("runTest").runTest()


class FirstLoadFailsMachine(LifecycleMachine):
    def make(self) -> Any:
        return GoodFirstLoadFails()

    def is_held(self, obj: Any) -> bool:
        return res_held(obj)


@pytest.mark.parametrize("where", ["task", "thread"])
def test_a_failed_entry_ends_an_aloaded_block(where: str) -> None:
    """The kit runs ``async with aloaded(step): await use`` as ``async with`` does.

    Its entry raised (the first load fails), so neither the use nor the exit
    runs. Running the exit of a block never entered was refused (no hold) and,
    when another caller's acquire held the step by then, matched no order the
    model allows: a correct class failed the check now and then.
    """
    machine = FirstLoadFailsMachine()
    try:
        machine.first_instance()
        obj = machine.instance(0)
        made: list[Any] = []
        plan = machine._run_plan(obj, ["aenter", "ause", "aexit"], itertools.count(), made)
        if where == "task":
            machine.run_async(plan)
        else:
            asyncio.run(plan)
        assert [(call.op, type(call.observed.error)) for call in made] == [
            ("aenter", stepfsm.LoadError)
        ]
        assert stepfsm.state(obj) is stepfsm.State.FAILED
    finally:
        machine.teardown()


class LoadBypassesStepfsm(Good):
    """Broken: each instance replaces its load() with an unwrapped one, bypassing stepfsm."""

    def __init__(self) -> None:
        super().__init__()
        self.load = self._raw_load  # type: ignore[method-assign]

    def _raw_load(self) -> None:
        self.res = Res()


class AcquiresInInit(Good):
    """Broken: the constructor already opens the resource."""

    def __init__(self) -> None:
        super().__init__()
        self.res = Res()


class DeepcopyFailsWhenLoaded(Good):
    """Broken: a deep copy of a loaded object raises (its handle cannot be copied)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> DeepcopyFailsWhenLoaded:
        if stepfsm.is_loaded(self):
            raise TypeError("cannot deepcopy a CUDA context")
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin


class InterruptedByUser(Good):
    """Its load is interrupted by a real Ctrl-C (not one the kit planned)."""

    def load(self) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (LoadBypassesStepfsm, "s0.load() broke the lifecycle contract"),
        (AcquiresInInit, "a fresh object already holds it"),
        (DeepcopyFailsWhenLoaded, "copies and pickles must work in every state"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_check_lifecycle_reports_other_misuse(factory: type, expected: str) -> None:
    """A load that bypasses stepfsm, a factory that loads, or a copy that raises is reported."""
    with pytest.raises(AssertionError, match=re.escape(expected)):
        check_lifecycle(factory, is_held=res_held, threads=0)


def test_a_real_keyboard_interrupt_stops_the_check() -> None:
    """A KeyboardInterrupt the kit did not plan propagates instead of being judged."""
    with pytest.raises(KeyboardInterrupt):
        check_lifecycle(InterruptedByUser, is_held=res_held, max_examples=5, threads=0)


def test_check_lifecycle_needs_callables() -> None:
    """Passing something that is not callable is a TypeError."""
    with pytest.raises(TypeError, match="two callables"):
        check_lifecycle(Good, is_held=None, max_examples=1)  # type: ignore[arg-type]


def test_the_model_and_perform_reject_unknown_operations() -> None:
    """An operation name the model does not know is a ValueError, not a silent no-op."""
    with pytest.raises(ValueError, match="unknown operation"):
        testing.model_step(stepfsm.State.UNLOADED, testing.Holders(), "frobnicate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown operation"):
        raise_error(testing.perform(Good(), "frobnicate"))  # type: ignore[arg-type]


def raise_error(observed: testing.Observed) -> None:
    """Re-raise the error a perform() call caught."""
    if observed.error is not None:
        raise observed.error


def test_mismatches_describe_every_difference() -> None:
    """mismatches() names a wrong error, return value, warning and code run."""
    expected = testing.Result(None, True, (("load", "ok"),), None)
    observed = testing.Observed(
        RuntimeError("x"), False, (stepfsm.RepeatedLoadWarning,), (("unload", "error"),)
    )
    problems = testing.mismatches(expected, "ensure_loaded", observed)
    assert problems == [
        "it raised RuntimeError (x), expected nothing",
        "it returned False, expected True",
        "it warned RepeatedLoadWarning, expected nothing",
        "the step's own code ran [unload (error)], expected [load]",
    ]


def test_flaky_failures_are_reported_as_the_assertion_inside() -> None:
    """The AssertionError hidden in an exception group or a cause is found for the report."""
    inner = AssertionError("after [s0 = factory()] it broke")
    group = RuntimeError("flaky")  # shaped like an ExceptionGroup (Python 3.10 has none)
    group.exceptions = [ValueError("noise"), inner]  # type: ignore[attr-defined]
    outer = RuntimeError("wrapper")
    outer.__cause__ = group
    assert testing.machine._first_assertion(outer) is inner
    assert testing.machine._first_assertion(RuntimeError("nothing")) is None
