"""Side-by-side lifecycle benchmark: stepfsm vs transitions, python-statemachine, Automat.

Every implementation models the same lifecycle on a model object whose own
load/unload work is a no-op::

    unloaded -> loading -> loaded -> unloading -> unloaded   (4 triggers per cycle)

and exposes ``load()`` / ``unload()`` (firing ``begin_*`` / ``finish_*`` around
the work, ``fail`` if the work raises) plus one method that needs the step
loaded, ``process(x)``, guarded the way each library does it.

Measured, in one run so that the ratios compare like with like:

* **cycle**: ``obj.load(); obj.unload()`` on a live object, ns per cycle (and
  for stepfsm again with N other steps of the class loaded: its per-process
  registry must not make a load cost grow with the number of loaded steps);
* **guarded call**: ``obj.process(1)`` on a loaded object, ns per call, next to
  the same no-op method unguarded (``plain call``) and two reference wrappers;
* **bytes per loaded instance**: ``tracemalloc`` growth for N loaded objects
  minus the same N objects without any lifecycle machinery, divided by N;
* **import time**: ``import <library>`` in fresh interpreters after
  ``compileall``, best of several runs.

Timings are CPU time, the best of many short samples taken in interleaved
rounds (each case once per round), net of the empty ``timeit`` loop. Run
``python benchmarks/bench_lifecycle.py`` (23-51 s on a shared 2-CPU machine)
or ``--quick`` (a smoke run of a few seconds; its numbers are noisy).
benchmarks/README.md has a table from a real run and what it means.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import gc
import importlib.util
import itertools
import os
import subprocess
import sys
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import transitions
from transitions import Machine
from transitions.extensions import LockedMachine

import stepfsm
from stepfsm import _engine

# ---------------------------------------------------------------- the lifecycle

_STATES = ["unloaded", "loading", "loaded", "unloading", "failed"]
_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "begin_load", "source": "unloaded", "dest": "loading"},
    {"trigger": "finish_load", "source": "loading", "dest": "loaded"},
    {"trigger": "begin_unload", "source": ["loaded", "failed"], "dest": "unloading"},
    {"trigger": "finish_unload", "source": "unloading", "dest": "unloaded"},
    {"trigger": "fail", "source": ["loading", "unloading"], "dest": "failed"},
]


class PeerNotLoadedError(RuntimeError):
    """Raised by the hand-written guards of the peers."""


def _work(obj: object) -> None:
    """The user's own load/unload work: nothing, so only the machinery is measured."""


# ---------------------------------------------------------------------- stepfsm


@stepfsm.stateful(guard=("process",))
class StepfsmStep:
    """A stepfsm step: the user writes load/unload/process; stepfsm wraps them."""

    def load(self) -> None:
        _work(self)

    def unload(self) -> None:
        _work(self)

    def process(self, x: int) -> int:
        return x

    def plain(self, x: int) -> int:
        return x


def _pydantic_step() -> Callable[[], Any] | None:
    """A factory of stepfsm pydantic steps, each with its own configuration; None without pydantic.

    Value equality is what makes the duplicate-load check compare configurations,
    so these rows show whether that check grows with the number of loaded steps.
    """
    try:
        import pydantic
    except ImportError:
        return None

    @stepfsm.stateful(guard=("process",))
    class PydanticStep(pydantic.BaseModel):
        name: str
        batch_size: int = 8

        def load(self) -> None:
            _work(self)

        def unload(self) -> None:
            _work(self)

        def process(self, x: int) -> int:
            return x

    names = itertools.count()
    return lambda: PydanticStep(name=f"step_{next(names)}")


class BareStep:
    """The same object without any lifecycle machinery (the memory baseline)."""

    def process(self, x: int) -> int:
        return x


# ---------------------------------------------------------- transitions.Machine


class TransitionsStep:
    """``transitions``: one ``Machine`` per model, triggers bound on the model."""

    state: str
    machine_cls: type[Machine] = Machine

    def __init__(self) -> None:
        self.machine = self.machine_cls(
            model=self,
            states=_STATES,
            transitions=_TRANSITIONS,
            initial="unloaded",
            auto_transitions=False,
        )

    def load(self) -> None:
        self.begin_load()  # type: ignore[attr-defined]
        try:
            _work(self)
        except BaseException:
            self.fail()  # type: ignore[attr-defined]
            raise
        self.finish_load()  # type: ignore[attr-defined]

    def unload(self) -> None:
        self.begin_unload()  # type: ignore[attr-defined]
        try:
            _work(self)
        except BaseException:
            self.fail()  # type: ignore[attr-defined]
            raise
        self.finish_unload()  # type: ignore[attr-defined]

    def process(self, x: int) -> int:
        if not self.is_loaded():  # type: ignore[attr-defined]
            raise PeerNotLoadedError(self.state)
        return x


class LockedTransitionsStep(TransitionsStep):
    """``transitions.extensions.LockedMachine``: the thread-safe variant, one per model."""

    machine_cls = LockedMachine


_SHARED = Machine(
    model=None,
    states=_STATES,
    transitions=_TRANSITIONS,
    initial="unloaded",
    auto_transitions=False,
)


def _shared_step(events: Any, doc: str, attribute: str = "state") -> type:
    """A step class fired through one shared machine's ``events`` (``Event.trigger(model)``),
    which keep the model's state in ``attribute``."""
    begin_load, finish_load = events["begin_load"].trigger, events["finish_load"].trigger
    begin_unload, finish_unload = events["begin_unload"].trigger, events["finish_unload"].trigger
    fail = events["fail"].trigger

    class SharedStep:
        __doc__ = doc
        state: str

        def __init__(self) -> None:
            setattr(self, attribute, "unloaded")

        def load(self) -> None:
            begin_load(self)
            try:
                _work(self)
            except BaseException:
                fail(self)
                raise
            finish_load(self)

        def unload(self) -> None:
            begin_unload(self)
            try:
                _work(self)
            except BaseException:
                fail(self)
                raise
            finish_unload(self)

        def process(self, x: int) -> int:  # (the engine row times no call)
            if self.state != "loaded":
                raise PeerNotLoadedError(self.state)
            return x

    return SharedStep


SharedTransitionsStep = _shared_step(
    _SHARED.events,
    "``transitions``: one shared stock ``Machine``, fired with ``Event.trigger(model)``.",
)
EngineStep = _shared_step(
    _engine.MACHINE.events,
    "stepfsm's engine alone: its shared machine's lean events (docs/decisions.md, "
    '"The engine\'s lean events and states"), nothing of stepfsm around them.',
    _engine.ATTRIBUTE,
)


# ---------------------------------------------------------- python-statemachine


def _python_statemachine() -> type | None:
    try:
        from statemachine import State, StateMachine
    except ImportError:
        return None

    class LifecycleSM(StateMachine):
        unloaded = State(initial=True)
        loading = State()
        loaded = State()
        unloading = State()
        failed = State()

        begin_load = unloaded.to(loading)
        finish_load = loading.to(loaded)
        begin_unload = loaded.to(unloading) | failed.to(unloading)
        finish_unload = unloading.to(unloaded)
        fail = loading.to(failed) | unloading.to(failed)

    class StatemachineStep:
        """python-statemachine: one ``StateMachine`` per model (the step is its model)."""

        def __init__(self) -> None:
            self.sm = LifecycleSM(self)

        def load(self) -> None:
            sm = self.sm
            sm.begin_load()
            try:
                _work(self)
            except BaseException:
                sm.fail()
                raise
            sm.finish_load()

        def unload(self) -> None:
            sm = self.sm
            sm.begin_unload()
            try:
                _work(self)
            except BaseException:
                sm.fail()
                raise
            sm.finish_unload()

        def process(self, x: int) -> int:
            if not self.sm.loaded.is_active:
                raise PeerNotLoadedError(self.state)  # type: ignore[attr-defined]
            return x

    return StatemachineStep


# ------------------------------------------------------------------------ Automat


class _Inputs(Protocol):
    def begin_load(self) -> None: ...
    def finish_load(self) -> None: ...
    def begin_unload(self) -> None: ...
    def finish_unload(self) -> None: ...
    def fail(self) -> None: ...
    def process(self, x: int) -> int: ...


class _Core:
    """Automat's core object (the data the machine's transitions act on)."""


def _automat() -> type | None:
    try:
        from automat import TypeMachineBuilder
    except ImportError:
        return None

    builder = TypeMachineBuilder(_Inputs, _Core)
    unloaded = builder.state("unloaded")
    loading = builder.state("loading")
    loaded = builder.state("loaded")
    unloading = builder.state("unloading")
    failed = builder.state("failed")
    unloaded.upon(_Inputs.begin_load).to(loading).returns(None)
    loading.upon(_Inputs.finish_load).to(loaded).returns(None)
    loaded.upon(_Inputs.begin_unload).to(unloading).returns(None)
    failed.upon(_Inputs.begin_unload).to(unloading).returns(None)
    unloading.upon(_Inputs.finish_unload).to(unloaded).returns(None)
    loading.upon(_Inputs.fail).to(failed).returns(None)
    unloading.upon(_Inputs.fail).to(failed).returns(None)

    @loaded.upon(_Inputs.process).loop()
    def _process(inputs: _Inputs, core: _Core, x: int) -> int:
        return x

    machine = builder.build()

    class AutomatStep:
        """Automat ``TypeMachine``: ``process`` is an input accepted only in ``loaded``."""

        def __init__(self) -> None:
            self.fsm = machine(_Core())

        def load(self) -> None:
            fsm = self.fsm
            fsm.begin_load()
            try:
                _work(self)
            except BaseException:
                fsm.fail()
                raise
            fsm.finish_load()

        def unload(self) -> None:
            fsm = self.fsm
            fsm.begin_unload()
            try:
                _work(self)
            except BaseException:
                fsm.fail()
                raise
            fsm.finish_unload()

        def process(self, x: int) -> int:
            return self.fsm.process(x)  # NoTransition unless loaded

    return AutomatStep


# ------------------------------------------------------------ the floor and refs

_UNLOADED, _LOADING, _LOADED, _UNLOADING, _FAILED = _STATES


class FloorStep:
    """The floor: a hand-written lock and state flag, user code run with the lock released."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _UNLOADED

    def load(self) -> None:
        with self._lock:
            if self._state is not _UNLOADED:
                raise PeerNotLoadedError(self._state)
            self._state = _LOADING
        try:
            _work(self)
        except BaseException:
            with self._lock:
                self._state = _FAILED
            raise
        with self._lock:
            self._state = _LOADED

    def unload(self) -> None:
        with self._lock:
            if self._state is not _LOADED:
                raise PeerNotLoadedError(self._state)
            self._state = _UNLOADING
        try:
            _work(self)
        except BaseException:
            with self._lock:
                self._state = _FAILED
            raise
        with self._lock:
            self._state = _UNLOADED

    def process(self, x: int) -> int:
        if self._state is not _LOADED:
            raise PeerNotLoadedError(self._state)
        return x


def _generic_guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._state is not _LOADED:
            raise PeerNotLoadedError(self._state)
        return fn(self, *args, **kwargs)

    return wrapper


def _exact_guard(fn: Callable[[Any, int], int]) -> Callable[[Any, int], int]:
    @functools.wraps(fn)
    def wrapper(self: Any, x: int) -> int:
        if self._state is not _LOADED:
            raise PeerNotLoadedError(self._state)
        return fn(self, x)

    return wrapper


class RefStep(FloorStep):
    """Hand-written guard decorators around the same no-op method.

    The ``*args/**kwargs`` and exact-signature wrapper rows of benchmarks/README.md: what
    any guard wrapper costs, next to stepfsm's guarded call.
    """

    @_generic_guard
    def process_generic(self, x: int) -> int:
        return x

    @_exact_guard
    def process_exact(self, x: int) -> int:
        return x


# --------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One implementation: how to build it, and what was measured."""

    label: str
    factory: Callable[[], Any] | None
    module: str | None = None  # what its import-time column imports
    note: str = ""
    cycle: bool = True
    guard: str | None = "process"  # the method timed as the guarded call
    memory: bool = True
    others: int = 0  # other live objects of the same class kept loaded while timing the cycle
    cycle_ns: float | None = None
    cycle_x: float | None = None  # vs transitions.Machine
    call_ns: float | None = None
    call_x: float | None = None  # vs the plain call
    bytes_per: float | None = None
    import_ms: float | None = None
    import_delta: float | None = None  # vs `import transitions`


def _rows(others: int, scale: tuple[int, int]) -> list[Row]:
    psm = _python_statemachine()
    aut = _automat()
    value = _pydantic_step()
    missing = "not installed"
    scaling = [
        Row(
            f"stepfsm pydantic, {n:,} loaded",
            value,
            guard=None,
            memory=False,
            others=n - 1,
            note="" if value else "pydantic not installed",
        )
        for n in scale
    ]
    return [
        Row("stepfsm", StepfsmStep, "stepfsm"),
        Row(
            f"stepfsm, {others:,} others loaded",
            StepfsmStep,
            guard=None,
            memory=False,
            others=others,
        ),
        *scaling,
        Row("transitions.Machine", TransitionsStep, "transitions"),
        Row("transitions shared Machine", SharedTransitionsStep, "transitions"),
        Row("stepfsm engine alone", EngineStep, guard=None, memory=False),
        Row(
            "transitions LockedMachine",
            LockedTransitionsStep,
            "transitions.extensions",
        ),
        Row("python-statemachine", psm, "statemachine", note="" if psm else missing),
        Row("Automat TypeMachine", aut, "automat", note="" if aut else missing),
        Row("lock+flag (floor)", FloorStep),
        Row("plain call (no guard)", StepfsmStep, cycle=False, guard="plain", memory=False),
        Row("*args/**kwargs wrapper", RefStep, cycle=False, guard="process_generic", memory=False),
        Row("exact-signature wrapper", RefStep, cycle=False, guard="process_exact", memory=False),
    ]


#: Timings use this process's CPU time, not wall time, so that time spent waiting for a
#: CPU while other processes run is not counted (their effect on caches still is).
_CLOCK: Final = time.process_time


@dataclass
class Case:
    """One timed statement, with what must hold only while it is timed."""

    timer: timeit.Timer
    enter: Callable[[], None] | None = None
    exit: Callable[[], None] | None = None
    number: int = 1
    samples: list[float] = field(default_factory=list)  # ns per op, empty loop included

    def seconds(self, number: int) -> float:
        if self.enter is not None:
            self.enter()
        try:
            return self.timer.timeit(number)
        finally:
            if self.exit is not None:
                self.exit()

    def best(self, loop_ns: float) -> float:
        return min(self.samples) - loop_ns


def _time_cases(cases: dict[str, Case], target_s: float, repeat: int) -> None:
    """Calibrate each case to about ``target_s`` a sample, then take ``repeat`` rounds.

    Rounds are interleaved (every case once per round), and samples are short,
    so that each case gets many chances at a quiet moment of a shared machine:
    the best sample is kept. Ratios are not invariant under contention (a tight
    loop slows down more than a longer one), so only quiet samples compare well.
    """
    for case in cases.values():
        number, took = 1, 0.0
        while number < 1 << 24:
            took = min(case.seconds(number) for _ in range(3))
            if took >= target_s / 4:
                break
            number *= 4 if took < target_s / 40 else 2
        case.number = max(1, int(number * target_s / max(took, 1e-9)))
    for _ in range(repeat):
        for case in cases.values():
            case.samples.append(case.seconds(case.number) / case.number * 1e9)


def _keep_loaded(objs: Sequence[Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    def enter() -> None:
        for obj in objs:
            obj.load()

    def exit_() -> None:
        for obj in objs:
            obj.unload()

    return enter, exit_


_MACHINE_ROW = "transitions.Machine"
_PLAIN_ROW = "plain call (no guard)"


def measure_speed(rows: Sequence[Row], target_s: float, repeat: int) -> float:
    """Fill the ns and ratio columns (net of the empty timeit loop); return that loop's ns."""
    cases: dict[str, Case] = {}
    for row in rows:
        if row.factory is None:
            continue
        if row.cycle:
            obj = row.factory()
            obj.load()
            obj.unload()  # warm: lazily created lifecycles, caches
            timer = timeit.Timer(
                "load(); unload()", _CLOCK, globals={"load": obj.load, "unload": obj.unload}
            )
            case = cases[f"cycle:{row.label}"] = Case(timer)
            if row.others:
                case.enter, case.exit = _keep_loaded([row.factory() for _ in range(row.others)])
        if row.guard is not None:
            # loaded only while timed, so that no other case sees an extra loaded step
            obj = row.factory()
            timer = timeit.Timer(f"o.{row.guard}(1)", _CLOCK, globals={"o": obj})
            cases[f"call:{row.label}"] = Case(timer, *_keep_loaded([obj]))
    loop_ns = min(timeit.repeat("pass", timer=_CLOCK, number=100_000, repeat=max(repeat, 5)))
    loop_ns = loop_ns / 100_000 * 1e9
    _time_cases(cases, target_s, repeat)
    machine = cases[f"cycle:{_MACHINE_ROW}"].best(loop_ns)
    plain = cases[f"call:{_PLAIN_ROW}"].best(loop_ns)
    for row in rows:
        cycle = cases.get(f"cycle:{row.label}")
        if cycle is not None:
            row.cycle_ns = cycle.best(loop_ns)
            row.cycle_x = row.cycle_ns / machine
        call = cases.get(f"call:{row.label}")
        if call is not None:
            row.call_ns = call.best(loop_ns)
            row.call_x = row.call_ns / plain
    return loop_ns


def measure_memory(rows: Sequence[Row], instances: int) -> None:
    """Fill ``bytes_per``: traced growth for N loaded objects minus N bare objects, over N.

    N is ``instances`` for stepfsm and the floor, a quarter of it for the peers
    (their per-object cost is large and steady, and building them is slow).
    """

    def grown(factory: Callable[[], Any], load: bool, instances: int) -> int:
        warm = [factory() for _ in range(8)]  # one-time costs (caches, class setup) stay out
        if load:
            for obj in warm:
                obj.load()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            objs = [factory() for _ in range(instances)]
            if load:
                for obj in objs:
                    obj.load()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        if load:
            for obj in (*warm, *objs):
                obj.unload()
        del objs, warm
        gc.collect()
        return after - before

    for row in rows:
        if row.factory is not None and row.memory:
            n = instances if row.factory in (StepfsmStep, FloorStep) else max(1, instances // 4)
            bare = grown(BareStep, False, n)
            row.bytes_per = (grown(row.factory, True, n) - bare) / n


def measure_imports(rows: Sequence[Row], runs: int) -> None:
    """Fill ``import_ms``: best in-process time of ``import <module>`` in fresh interpreters.

    Each package is byte-compiled first (``compileall``); the child runs in the
    folder that holds the ``stepfsm`` this process imported, so it imports the
    same copy (checked), and a first, discarded round warms the OS file cache.
    """
    modules = ["transitions"]  # the reference of the import target
    modules += [r.module for r in rows if r.module and r.factory is not None]
    modules = list(dict.fromkeys(modules))
    for name in modules:
        spec = importlib.util.find_spec(name.split(".")[0])
        for location in (spec and spec.submodule_search_locations) or ():
            compileall.compile_dir(location, quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(stepfsm.__file__)))
    code = (
        "import sys, time; t = time.process_time(); import {0}; "
        "print((time.process_time() - t) * 1e3, sys.modules[{0!r}].__file__)"
    )
    samples: dict[str, list[float]] = {name: [] for name in modules}
    for run in range(runs + 1):
        for name in modules:
            out = subprocess.run(
                [sys.executable, "-c", code.format(name)],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split(maxsplit=1)
            if name == "stepfsm" and os.path.abspath(out[1].strip()) != stepfsm.__file__:
                raise RuntimeError(f"the child imported another stepfsm: {out[1].strip()}")
            if run:
                samples[name].append(float(out[0]))
    base = samples["transitions"]  # timed first in every round
    for row in rows:
        if row.module in samples and row.factory is not None:
            row.import_ms = min(samples[row.module])
            row.import_delta = row.import_ms - min(base)


# ----------------------------------------------------------------------- report

_COLUMNS = (
    ("implementation", 28),
    ("cycle ns", 9),
    ("x Machine", 9),
    ("call ns", 8),
    ("x plain", 7),
    ("bytes/inst", 10),
    ("import ms", 9),
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _by(rows: Sequence[Row], label: str) -> Row:
    return next(r for r in rows if r.label == label)


_LEGEND = """\
cycle       load() + unload() of a live object: 4 triggers, no-op load/unload work
call        process(1) on a loaded object, guarded the library's way: stepfsm guard=,
            transitions is_loaded(), an inline state check (shared Machine, floor),
            python-statemachine sm.loaded.is_active, Automat an input only 'loaded' accepts
ns          CPU time, best of {repeat} interleaved rounds, net of the empty loop ({loop:.1f} ns)
bytes/inst  tracemalloc growth for N loaded objects minus N bare ones, / N ({instances:,};
            a quarter of it for the peers)
import ms   best CPU time of `import <module>` in fresh interpreters, after compileall
"""


def render_table(rows: Sequence[Row]) -> str:
    head = [
        name.ljust(width) if i == 0 else name.rjust(width)
        for i, (name, width) in enumerate(_COLUMNS)
    ]
    lines = ["  ".join(head), "  ".join("-" * w for _, w in _COLUMNS)]
    for row in rows:
        if row.factory is None:
            lines.append(f"{row.label.ljust(_COLUMNS[0][1])}  {row.note}")
            continue
        cells = [
            _fmt(row.cycle_ns, ",.0f"),
            _fmt(row.cycle_x, ".2f"),
            _fmt(row.call_ns, ",.1f"),
            _fmt(row.call_x, ".2f"),
            _fmt(row.bytes_per, ",.0f"),
            _fmt(row.import_ms, ".1f"),
        ]
        widths = [w for _, w in _COLUMNS[1:]]
        lines.append(
            "  ".join(
                [row.label.ljust(_COLUMNS[0][1])]
                + [c.rjust(w) for c, w in zip(cells, widths, strict=True)]
            ).rstrip()
        )
    return "\n".join(lines)


@dataclass
class Target:
    """One target of the issue and how this run did."""

    name: str
    measured: str
    goal: str
    ok: bool
    extra: str = ""


def _need(value: float | None) -> float:
    if value is None:
        raise RuntimeError("a measurement that the targets need is missing")
    return value


def targets(rows: Sequence[Row]) -> list[Target]:
    """The issue's targets for stepfsm, each with its measured value and verdict."""
    step = _by(rows, "stepfsm")
    locked = _by(rows, "transitions LockedMachine")
    cycle = _need(step.cycle_x)
    speedup = _need(locked.cycle_x) / cycle
    call = _need(step.call_x)
    per_instance = _need(step.bytes_per)
    extra_ms = _need(step.import_delta)
    grows: list[Target] = []
    few, many = (r for r in rows if r.label.startswith("stepfsm pydantic, "))
    if few.factory is not None:
        ratio = _need(many.cycle_ns) / _need(few.cycle_ns)
        grows.append(
            Target(
                f"load #{many.others + 1:,} vs #{few.others + 1:,} (pydantic)",
                f"{ratio:.2f}x",
                "<= 1.50x",
                ratio <= 1.5,
            )
        )
    return [
        Target("cycle vs transitions.Machine", f"{cycle:.2f}x", "<= 1.30x", cycle <= 1.3),
        Target("cycle vs LockedMachine", f"{speedup:.2f}x faster", ">= 3.50x", speedup >= 3.5),
        Target(
            "guarded call vs plain call",
            f"{call:.2f}x",
            "<= 2.50x",
            call <= 2.5,
            f"(stretch <= 1.50x: {'PASS' if call <= 1.5 else 'MISS'})",
        ),
        Target(
            "bytes per loaded instance",
            f"{per_instance:,.0f} B",
            "<= 5,000 B",
            per_instance <= 5000,
        ),
        Target(
            "import stepfsm vs transitions",
            f"{extra_ms:+.1f} ms",
            "<= +10.0 ms",
            extra_ms <= 10.0,
        ),
        *grows,
    ]


def render_targets(found: Sequence[Target]) -> str:
    lines = ["targets (stepfsm; ratios from this run)"]
    for t in found:
        verdict = "PASS" if t.ok else "MISS"
        line = f"  {t.name:<30}  {t.measured:>14}  {t.goal:>11}  {verdict} {t.extra}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except (AttributeError, OSError):  # not on every platform
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of a few seconds (noisy numbers)"
    )
    parser.add_argument("--repeat", type=int, help="timing rounds (best is kept)")
    parser.add_argument("--instances", type=int, help="objects in the memory measurement")
    parser.add_argument("--others", type=int, help="other stepfsm steps loaded in the scaling row")
    parser.add_argument(
        "--scale",
        type=int,
        nargs=2,
        metavar=("FEW", "MANY"),
        help="loaded pydantic steps in the two duplicate-check rows (default 100 2000)",
    )
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 31)
    instances = args.instances or (200 if args.quick else 2000)
    others = args.others if args.others is not None else (100 if args.quick else 1000)
    target_s = 0.002 if args.quick else 0.01
    import_runs = 1 if args.quick else 11

    phases = [time.perf_counter()]
    scale = tuple(args.scale) if args.scale else ((10, 50) if args.quick else (100, 2000))
    rows = _rows(others, (scale[0], scale[1]))
    loop_ns = measure_speed(rows, target_s, repeat)
    phases.append(time.perf_counter())
    measure_memory(rows, instances)
    phases.append(time.perf_counter())
    measure_imports(rows, import_runs)
    phases.append(time.perf_counter())

    print(
        f"stepfsm {stepfsm.__version__}, transitions {transitions.__version__}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {_load()}"
        + (" [--quick: smoke run, numbers are noisy]" if args.quick else "")
    )
    print(_LEGEND.format(instances=instances, repeat=repeat, loop=loop_ns))
    print(render_table(rows))
    print()
    print(render_targets(targets(rows)))
    speed, memory, imports = (b - a for a, b in itertools.pairwise(phases))
    print(
        f"\n({phases[-1] - phases[0]:.1f} s: speed {speed:.1f} s, memory {memory:.1f} s, "
        f"imports {imports:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
