"""Making classes stateful: decorator, mixin, subclasses, pass-through, definition errors."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

import stepfsm
from stepfsm import DefinitionError, NotLoadedError, State, TransitionInProgressError
from tests.conftest import FakeStep


def test_decorator_without_parentheses() -> None:
    """@stateful with no arguments uses load/unload and guards nothing."""

    @stepfsm.stateful
    class Plain:
        def load(self) -> None: ...
        def unload(self) -> None: ...
        def use(self) -> int:
            return 1

    obj = Plain()
    assert obj.use() == 1  # not guarded
    obj.load()
    assert stepfsm.is_loaded(obj)
    assert stepfsm.is_stateful(Plain)
    assert stepfsm.is_stateful(obj)
    assert not stepfsm.is_stateful(object())


def test_custom_method_names() -> None:
    """load= and unload= name other methods; those become the lifecycle's operations."""

    @stepfsm.stateful(load="setup", unload="teardown", guard="run")
    class Custom:
        def __init__(self) -> None:
            self.ready = False

        def setup(self) -> None:
            self.ready = True

        def teardown(self) -> None:
            self.ready = False

        def run(self) -> bool:
            return self.ready

    obj = Custom()
    with pytest.raises(NotLoadedError, match="so run\\(\\) cannot run"):
        obj.run()
    stepfsm.lifecycle(obj).load()
    assert obj.run() is True
    obj.teardown()
    assert stepfsm.state(obj) is State.UNLOADED


def test_subclass_overrides_are_wrapped_and_super_passes_through() -> None:
    """A subclass's own load() is wrapped too; its super().load() passes straight through."""

    class Child(FakeStep):
        def load(self) -> None:
            super().load()
            self.extra = self.use(5)  # a guarded call inside load passes through

        def use(self, x: int = 1, *, twice: bool = False) -> int:
            return x + 1

    child = Child("child")
    with pytest.raises(NotLoadedError):
        child.use()  # the override is guarded as well
    child.load()
    assert (child.loads, child.extra, stepfsm.state(child)) == (1, 6, State.LOADED)
    assert len(stepfsm.lifecycle(child).history) == 2  # one transition pair, not two


def test_mixin_with_class_keywords() -> None:
    """Stateful takes options as class keywords and covers later subclasses."""

    class Base(stepfsm.Stateful, guard=("go",), on_repeat="ignore"):
        def load(self) -> None:
            self.on = True

        def unload(self) -> None:
            self.on = False

        def go(self) -> str:
            return "went"

    class Derived(Base):
        def go(self) -> str:
            return "derived"

    obj = Derived()
    with pytest.raises(NotLoadedError):
        obj.go()
    obj.load()
    obj.load()  # ignore policy inherited
    assert obj.go() == "derived"
    assert stepfsm.lifecycle(obj).on_repeat == "ignore"


def test_decorating_a_subclass_adds_settings() -> None:
    """@stateful on a subclass of a stateful class adds guards and overrides settings."""

    @stepfsm.stateful(guard=("extra",), on_repeat="warn")
    class More(FakeStep):
        def extra(self) -> str:
            return "x"

    obj = More()
    with pytest.raises(NotLoadedError, match="extra"):
        obj.extra()
    with pytest.raises(NotLoadedError, match="use"):
        obj.use()
    assert More.__stepfsm__.guard == ("use", "extra")  # type: ignore[attr-defined]
    assert stepfsm.lifecycle(obj).on_repeat == "warn"


def test_existing_init_subclass_still_runs() -> None:
    """The subclass hook keeps the decorated class's own __init_subclass__ working."""
    seen: list[str] = []

    @stepfsm.stateful
    class Registering:
        def __init_subclass__(cls, tag: str = "", **kwargs: Any) -> None:
            super().__init_subclass__(**kwargs)
            seen.append(tag)

        def load(self) -> None: ...
        def unload(self) -> None: ...

    class Tagged(Registering, tag="t"):
        def load(self) -> None:
            self.mine = True

    assert seen == ["t"]
    obj = Tagged()
    obj.load()
    assert stepfsm.is_loaded(obj)


def test_guard_preserves_exact_signatures() -> None:
    """Guards keep positional-only, defaults, *args, keyword-only and **kwargs exactly."""

    @stepfsm.stateful(guard=("f", "g", "h"))
    class Sig:
        def load(self) -> None: ...
        def unload(self) -> None: ...
        def f(
            self, a: int, /, b: int = 2, *args: int, c: int, d: int = 4, **kw: int
        ) -> tuple[Any, ...]:
            return (a, b, args, c, d, kw)

        def g(self, a: int, /) -> int:
            return a

        def h(self, *args: Any, **kwargs: Any) -> Any:
            return args, kwargs

    obj = Sig()
    obj.load()
    assert obj.f(1, 2, 3, c=5, e=6) == (1, 2, (3,), 5, 4, {"e": 6})
    assert obj.g(9) == 9
    assert obj.h(1, x=2) == ((1,), {"x": 2})
    assert inspect.signature(Sig.f) == inspect.signature(Sig.f.__wrapped__)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        obj.g(a=1)  # type: ignore[call-arg]  # positional-only stays positional-only


def test_async_guard_stays_a_coroutine_function() -> None:
    """An async guarded method stays `async def` and checks the state when awaited."""

    @stepfsm.stateful(guard=("agenerate",))
    class Async:
        def load(self) -> None: ...
        def unload(self) -> None: ...
        async def agenerate(self, prompt: str) -> str:
            return prompt.upper()

    obj = Async()
    assert inspect.iscoroutinefunction(Async.agenerate)
    with pytest.raises(NotLoadedError, match="agenerate"):
        asyncio.run(obj.agenerate("x"))
    obj.load()
    assert asyncio.run(obj.agenerate("hi")) == "HI"


def test_guard_of_builtin_callable_uses_generic_wrapper() -> None:
    """A guarded attribute without a signature still works through a generic wrapper."""

    @stepfsm.stateful(guard=("size",))
    class Builtin:
        size = len  # no introspectable signature with a `self` first

        def load(self) -> None: ...
        def unload(self) -> None: ...
        def __len__(self) -> int:
            return 3

    obj = Builtin()
    with pytest.raises(NotLoadedError):
        obj.size()
    obj.load()
    assert obj.size() == 3


def test_load_inside_own_unload_raises_transition_in_progress() -> None:
    """Calling load() from inside the step's own unload raises, naming the deadlock."""

    @stepfsm.stateful
    class Confused:
        def load(self) -> None: ...
        def unload(self) -> None:
            self.load()

    obj = Confused()
    obj.load()
    with pytest.raises(stepfsm.UnloadError) as info:
        obj.unload()
    cause = info.value.__cause__
    assert isinstance(cause, TransitionInProgressError)
    assert "cannot load() from inside its own unload on the same thread" in str(cause)
    assert cause.timeout is None


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"unload": lambda self: None}, "has no load\\(\\) method.*Define load\\(self\\)"),
        ({"load": lambda self: None}, "has no unload\\(\\) method.*pass unload="),
        ({"load": lambda self: None, "unlaod": lambda self: None}, "Did you mean 'unlaod'"),
    ],
)
def test_missing_methods_are_definition_errors(body: dict[str, Any], match: str) -> None:
    """A class without load/unload cannot be stateful: DefinitionError says what to write."""
    cls = type("Broken", (), body)
    with pytest.raises(DefinitionError, match=match) as info:
        stepfsm.stateful(cls)
    assert isinstance(info.value, TypeError)


def test_unknown_guard_name_is_a_definition_error() -> None:
    """A guard name that is not a method raises DefinitionError with a suggestion."""
    with pytest.raises(DefinitionError, match="guard names 'proces'.*Did you mean 'process'"):

        @stepfsm.stateful(guard=("proces",))
        class Typo:
            def load(self) -> None: ...
            def unload(self) -> None: ...
            def process(self) -> None: ...


def test_guarding_load_itself_is_a_definition_error() -> None:
    """Guarding the load or unload method is refused."""
    with pytest.raises(DefinitionError, match="guard names 'load', which is the load/unload"):

        @stepfsm.stateful(guard=("load",))
        class Loop:
            def load(self) -> None: ...
            def unload(self) -> None: ...


def test_same_load_and_unload_is_a_definition_error() -> None:
    """load and unload must be two different methods."""
    with pytest.raises(DefinitionError, match="must be two different methods"):

        @stepfsm.stateful(load="toggle", unload="toggle")
        class Toggle:
            def toggle(self) -> None: ...


def test_unknown_policy_is_a_definition_error() -> None:
    """An unknown class policy is refused at decoration time."""
    with pytest.raises(DefinitionError, match="on_repeat must be one of 'raise', 'warn', 'ignore'"):

        @stepfsm.stateful(on_repeat="loudly")  # type: ignore[arg-type]
        class Loud:
            def load(self) -> None: ...
            def unload(self) -> None: ...


def test_slots_without_weakref_is_a_definition_error() -> None:
    """Instances that cannot be weakly referenced cannot be tracked: say how to fix it."""
    with pytest.raises(DefinitionError, match="Add '__weakref__' to its __slots__"):

        @stepfsm.stateful
        class Slotted:
            __slots__ = ("x",)

            def load(self) -> None: ...
            def unload(self) -> None: ...


def test_decorating_a_non_class_is_a_definition_error() -> None:
    """@stateful on a function says to put it on a class."""
    with pytest.raises(DefinitionError, match="decorates a class, not function"):
        stepfsm.stateful(lambda: None)  # type: ignore[type-var]


def test_lifecycle_of_a_plain_object_is_a_type_error() -> None:
    """lifecycle() of an object whose class is not stateful explains how to make it so."""
    with pytest.raises(
        TypeError, match="object is not stateful: decorate the class with @stepfsm.stateful"
    ):
        stepfsm.lifecycle(object())
