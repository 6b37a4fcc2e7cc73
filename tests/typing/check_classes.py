"""Static checks that stateful classes keep their types (mypy only; never run, never collected).

``@stateful`` (bare and with options) returns the class it was given, and a
``Stateful`` subclass is an ordinary class: its methods, guarded or not, keep
their signatures and return types for the type checker (at run time the
guards are generated with the same signatures).
"""

# mypy: warn-unused-ignores, enable-error-code="ignore-without-code"

from __future__ import annotations

from collections.abc import Iterator

from typing_extensions import assert_type

import stepfsm


class Model:
    def predict(self, text: str) -> float:
        return float(len(text))


@stepfsm.stateful
class Bare:
    def load(self) -> Model:
        return Model()

    def unload(self) -> None:
        pass


@stepfsm.stateful(guard=("embed", "stream"), on_repeat="warn", timeout=5.0)
class Encoder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.model: Model | None = None

    def load(self) -> Model:
        self.model = Model()
        return self.model

    def unload(self) -> None:
        self.model = None

    def embed(self, text: str, *, normalize: bool = True) -> list[float]:
        return [1.0] if normalize else [len(text) * 1.0]

    def stream(self, texts: list[str]) -> Iterator[str]:
        yield from texts


@stepfsm.stateful(load="open", unload="close")
class Renamed:
    def open(self) -> int:
        return 1

    def close(self) -> bool:
        return True


class Embedder(stepfsm.Stateful, guard=("embed",), on_unloaded_use="warn"):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def load(self) -> Model:
        return Model()

    def unload(self) -> None:
        pass

    def embed(self, text: str) -> list[float]:
        return [0.0] * self.dim


class Sub(Embedder):
    def embed(self, text: str) -> list[float]:
        return super().embed(text.lower())

    def extra(self, n: int) -> str:
        return str(n)


class Plain:
    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass


def check_called_as_functions() -> None:
    # mypy ignores a class decorator's return type, so the decorator syntax
    # above cannot show a bad signature; calling it as a function can.
    assert_type(stepfsm.stateful(Plain), type[Plain])
    assert_type(stepfsm.stateful(load="load", unload="unload")(Plain), type[Plain])
    assert_type(stepfsm.stateful(on_repeat="warn", timeout=None)(Plain)(), Plain)


def check_decorated() -> None:
    assert_type(Bare, type[Bare])
    assert_type(Bare(), Bare)
    assert_type(Encoder, type[Encoder])
    step = Encoder("gen_0")
    assert_type(step, Encoder)
    assert_type(step.name, str)
    assert_type(step.model, Model | None)
    assert_type(Renamed(), Renamed)
    _ = step.nope  # type: ignore[attr-defined]  # not Any
    Encoder()  # type: ignore[call-arg]  # __init__'s signature survives


def check_stateful_subclass() -> None:
    assert_type(Embedder(3), Embedder)
    assert_type(Sub(3), Sub)
    as_stateful: stepfsm.Stateful = Sub(3)
    del as_stateful
    Embedder()  # type: ignore[call-arg]
    Embedder("3")  # type: ignore[arg-type]


def check_load_return_types(a: Bare, b: Encoder, c: Renamed, d: Embedder) -> None:
    # Calling the step's own (wrapped) load/unload keeps the declared return type.
    # At run time the wrapper returns what the user's method returned, or None
    # when it did not run (on_repeat="warn"/"ignore" on a loaded step, or a load
    # nested in another step's load, which becomes a hold): a declared non-None
    # type is then not what comes back.
    assert_type(a.load(), Model)
    assert_type(b.load(), Model)
    assert_type(b.unload(), None)
    assert_type(c.open(), int)
    assert_type(c.close(), bool)
    assert_type(d.load(), Model)


def check_guarded_signatures(b: Encoder, d: Embedder, s: Sub) -> None:
    assert_type(b.embed("x"), list[float])
    assert_type(b.embed("x", normalize=False), list[float])
    assert_type(b.stream(["a"]), Iterator[str])
    assert_type(d.embed("x"), list[float])
    assert_type(s.embed("x"), list[float])
    assert_type(s.extra(1), str)
    b.embed(1)  # type: ignore[arg-type]
    b.embed("x", False)  # type: ignore[call-arg]  # keyword-only stays keyword-only
    b.embed("x", normalise=True)  # type: ignore[call-arg]
    d.embed()  # type: ignore[call-arg]
    s.extra("1")  # type: ignore[arg-type]


def check_loaded_keeps_type(b: Encoder, s: Sub) -> None:
    with stepfsm.loaded(b) as held:
        assert_type(held, Encoder)
        assert_type(held.embed("x"), list[float])
    with stepfsm.loaded(s) as sub:
        assert_type(sub, Sub)
        assert_type(sub.extra(2), str)


def check_rejected() -> None:
    stepfsm.stateful(42)  # type: ignore[call-overload]  # classes only
    stepfsm.stateful(guard=("g",))(len)  # type: ignore[type-var]
    stepfsm.stateful(guard=("g",), bogus=True)  # type: ignore[call-overload]
    stepfsm.stateful(on_repeat="loud")  # type: ignore[call-overload]
    stepfsm.stateful(timeout="5")  # type: ignore[call-overload]
