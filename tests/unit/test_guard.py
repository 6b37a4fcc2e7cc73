"""Guards written into the method (inline) and the wrapper they fall back to.

The inline guard recompiles a guarded method's own source with the loaded
check in front of its body; it must behave exactly like the method (same
signature, defaults, docstring, closure, ``super()``, generator and async
kinds, line numbers) and must never be used when the source is not what runs.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import linecache
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stepfsm
from stepfsm import NotLoadedError


def _inline(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is an inline guard (its own code, with the check's free variable)."""
    original = fn.__stepfsm_original__  # type: ignore[attr-defined]
    return fn.__code__ is not original.__code__ and "_stepfsm_slow" in fn.__code__.co_freevars


class Base:
    def describe(self) -> str:
        return "base"


def make_class() -> type:
    """A stateful class defined inside a function: its methods close over ``suffix``."""
    suffix = "!"

    @stepfsm.stateful(guard=("everything", "numbers", "agenerate", "child", "keyword_only"))
    class Model(Base):
        def load(self) -> None:
            self.ready = True

        def unload(self) -> None:
            self.ready = False

        def everything(self, x: int, /, y: int = 2, *rest: int, z: int = 3, **extra: int) -> str:
            """Return every argument."""
            return f"{x} {y} {rest} {z} {sorted(extra.items())}{suffix}"

        def numbers(self, n: int) -> Iterator[int]:
            yield from range(n)

        async def agenerate(self, prompt: str) -> str:
            await asyncio.sleep(0)
            return prompt.upper()

        def child(self) -> str:
            return "child of " + super().describe()

        def keyword_only(self, *, a: int) -> int:
            return a

    return Model


def test_methods_with_source_get_the_inline_guard() -> None:
    model = make_class()
    for name in ("everything", "child", "keyword_only"):
        fn = getattr(model, name)
        assert _inline(fn), f"{name} fell back to the wrapper"
        assert fn.__code__.co_filename == __file__
        assert inspect.signature(fn) == inspect.signature(fn.__stepfsm_original__)
    assert model.everything.__doc__ == "Return every argument."


def test_generators_get_the_wrapper_that_holds_the_token_only_while_a_step_runs() -> None:
    model = make_class()
    fn = model.numbers
    assert not _inline(fn)
    assert inspect.isgeneratorfunction(fn)
    assert "_stepfsm_delegate" in fn.__code__.co_names
    assert inspect.signature(fn) == inspect.signature(fn.__stepfsm_original__)


def test_async_methods_get_the_inline_guard_that_holds_the_token_while_they_run() -> None:
    """An ``async def`` method gets the same statements, its slow path awaited.

    With source, they are written into the method itself (one coroutine per
    call, not two); without, a generated ``async def`` wrapper has them. Either
    way the coroutine holds the token while it runs, suspended or not, so an
    unload can count it.
    """
    model = make_class()
    fn = model.agenerate
    original = fn.__stepfsm_original__
    assert fn.__code__ is not original.__code__
    assert "_stepfsm_aslow" in fn.__code__.co_freevars
    assert "_stepfsm_t" in fn.__code__.co_varnames
    assert fn.__code__.co_filename == __file__
    assert inspect.iscoroutinefunction(fn)
    assert inspect.signature(fn) == inspect.signature(original)
    step = model()
    with pytest.raises(NotLoadedError):
        asyncio.run(step.agenerate("x"))
    lc = stepfsm.lifecycle(step)
    lc.load()
    held: list[bool] = []

    async def main() -> str:
        task = asyncio.ensure_future(step.agenerate("hi"))
        await asyncio.sleep(0)  # the call is suspended in asyncio.sleep(0)
        held.append(lc._busy())
        return await task

    assert asyncio.run(main()) == "HI"
    assert held == [True]
    assert not lc._busy()  # let go when it returned
    lc.unload()


def test_async_methods_without_source_get_the_wrapper() -> None:
    namespace: dict[str, Any] = {}
    exec("async def agenerate(self, prompt):\n    return prompt.upper()\n", namespace)

    @stepfsm.stateful(guard="agenerate")
    class NoSource:
        agenerate = namespace["agenerate"]

        def load(self) -> None:
            pass

        def unload(self) -> None:
            pass

    fn = NoSource.agenerate
    assert "_stepfsm_aslow" in fn.__code__.co_names
    assert fn.__code__.co_filename.startswith("<stepfsm guard")
    assert inspect.iscoroutinefunction(fn)
    step = NoSource()
    with pytest.raises(NotLoadedError):
        asyncio.run(step.agenerate("a"))
    stepfsm.lifecycle(step).load()
    assert asyncio.run(step.agenerate("a")) == "A"
    assert not stepfsm.lifecycle(step)._busy()


def test_the_inline_guard_behaves_like_the_method_when_loaded() -> None:
    step = make_class()()
    with stepfsm.loaded(step):
        assert step.everything(1, 5, 6, 7, z=8, w=9) == "1 5 (6, 7) 8 [('w', 9)]!"
        assert step.everything(1) == "1 2 () 3 []!"
        assert list(step.numbers(3)) == [0, 1, 2]
        assert asyncio.run(step.agenerate("hi")) == "HI"
        assert step.child() == "child of base"  # zero-argument super() still works
        assert step.keyword_only(a=4) == 4
        with pytest.raises(TypeError):
            step.everything(x=1)  # positional-only stays positional-only


def test_the_inline_guard_refuses_when_not_loaded_and_points_at_the_method() -> None:
    step = make_class()()
    with pytest.raises(NotLoadedError, match=r"everything\(\) cannot run") as caught:
        step.everything(1)
    frames = traceback.extract_tb(caught.value.__traceback__)
    method = make_class().everything.__stepfsm_original__
    assert any(
        f.filename == __file__ and f.lineno == method.__code__.co_firstlineno for f in frames
    ), "the traceback should show the guarded method's def line"
    gen = step.numbers(2)  # a generator checks at its first next(), like the wrapper did
    with pytest.raises(NotLoadedError):
        next(gen)
    with pytest.raises(NotLoadedError):
        asyncio.run(step.agenerate("x"))


def test_a_class_without_source_falls_back_to_the_wrapper() -> None:
    namespace: dict[str, Any] = {"stepfsm": stepfsm}
    exec(
        "@stepfsm.stateful(guard=('use',))\n"
        "class NoSource:\n"
        "    def load(self): pass\n"
        "    def unload(self): pass\n"
        "    def use(self, x): return x\n",
        namespace,
    )
    cls = namespace["NoSource"]
    assert not _inline(cls.use)
    step = cls()
    with pytest.raises(NotLoadedError):
        step.use(1)
    step.load()
    assert step.use(2) == 2


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return ("logged", fn(*args, **kwargs))

    return wrapper


def test_a_decorated_method_falls_back_to_the_wrapper() -> None:
    @stepfsm.stateful(guard=("use",))
    class Decorated:
        def load(self) -> None:
            pass

        def unload(self) -> None:
            pass

        @_logged
        def use(self, x: int) -> int:
            return x

    assert not _inline(Decorated.use)  # its source is the undecorated function's
    step = Decorated()
    with pytest.raises(NotLoadedError):
        step.use(1)
    step.load()
    assert step.use(3) == ("logged", 3)  # the decorator still runs


def test_source_edited_after_import_is_never_compiled(tmp_path: Path) -> None:
    """The file on disk says something else than what was imported: keep the wrapper."""
    path = tmp_path / "edited_step.py"
    path.write_text(
        "import stepfsm\n"
        "class Edited:\n"
        "    def load(self): pass\n"
        "    def unload(self): pass\n"
        "    def use(self):\n"
        "        return 'imported'\n",
        encoding="utf-8",
    )
    spec = importlib.util.spec_from_file_location("edited_step", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path.write_text(
        path.read_text(encoding="utf-8").replace("'imported'", "'edited on disk'"),
        encoding="utf-8",
    )
    linecache.checkcache(str(path))
    cls = stepfsm.stateful(guard=("use",))(module.Edited)
    assert not _inline(cls.use)
    step = cls()
    step.load()
    assert step.use() == "imported"


def test_slotted_classes_keep_the_wrapper() -> None:
    @stepfsm.stateful(guard=("use",))
    class Slotted:
        __slots__ = ("__weakref__", "value")

        def load(self) -> None:
            self.value = 1

        def unload(self) -> None:
            pass

        def use(self) -> int:
            return self.value

    assert not _inline(Slotted.use)  # no __dict__ for the flag: the id table is checked
    step = Slotted()
    with pytest.raises(NotLoadedError):
        step.use()
    step.load()
    assert step.use() == 1


def test_uninstall_restores_the_original_method() -> None:
    model = make_class()
    original = model.everything.__stepfsm_original__
    stepfsm.wrap.unmake_stateful(model)
    assert model.everything is original


@pytest.mark.skipif(sys.version_info < (3, 11), reason="co_qualname is new in Python 3.11")
def test_the_recompiled_code_keeps_the_qualified_name() -> None:
    model = make_class()
    assert model.everything.__code__.co_qualname == "make_class.<locals>.Model.everything"


@stepfsm.stateful(guard=("echo",))
class Echo:
    def load(self) -> None:
        self.log: list[str] = []

    def unload(self) -> None:
        pass

    def echo(self, first: int) -> Iterator[int]:
        """Yields what it is sent; a thrown ValueError is logged; returns the last value."""
        value = first
        try:
            while True:
                try:
                    value = yield value
                except ValueError as error:
                    self.log.append(f"thrown {error}")
                    value = -1
        finally:
            self.log.append("closed")


def test_the_generator_guard_passes_send_throw_close_and_return_like_yield_from() -> None:
    step = Echo()
    with stepfsm.loaded(step):
        gen = step.echo(1)
        assert next(gen) == 1
        assert gen.send(5) == 5
        assert gen.throw(ValueError("x")) == -1
        gen.close()
        assert step.log == ["thrown x", "closed"]

        def returns() -> Iterator[int]:
            result = yield from step.echo(0)
            return result

        outer = returns()
        next(outer)
        with pytest.raises(KeyError):
            outer.throw(KeyError("not caught inside"))  # propagates out, closing it
        assert step.log[-1] == "closed"
