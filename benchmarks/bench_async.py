"""Async lifecycle benchmark: awaited operations against their synchronous twins and plain calls.

Measured in one run, so that the ratios compare like with like:

* **fast path**: ``await stepfsm.aensure_loaded(step)`` on a loaded step, ns per call,
  next to the synchronous ``stepfsm.ensure_loaded(step)`` on the same step;
* **guarded call**: ``await step.agenerate(1)`` on a loaded step, an ``async def``
  method named in ``guard=``, next to the same ``async def`` method unguarded
  (``aplain``) and a hand-written wrapper that checks a flag on the instance (what
  any ``async def`` guard wrapper costs);
* **wake-up**: 10,000 tasks ``await stepfsm.aensure_loaded(step)`` while one load of
  100 ms runs; measured is the time from the end of the load's own code until the
  last task has resumed (and the first), for a sync step (its load runs in a worker
  thread) and an async step (``async def load``, on the tasks' loop).

Call timings are CPU time, the best of many short samples taken in interleaved
rounds (each case once per round), net of the empty loop (``timeit``'s for the
synchronous call, an ``async def`` loop's for the awaited ones). Wake-up times are
wall time, what a waiting task sees: the median of several rounds (best and worst
shown too). Run ``python benchmarks/bench_async.py`` (about 30 s on a shared 2-CPU
machine) or ``--quick`` (a smoke run of a few seconds; its numbers are noisy).
benchmarks/README.md has a table from a real run and what it means.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import stepfsm

# ------------------------------------------------------------------------ steps


@stepfsm.stateful(guard=("agenerate",))
class SyncStep:
    """A sync step (plain ``def load``/``unload``) with ``async def`` methods to call."""

    def __init__(self, load_s: float = 0.0) -> None:
        self.load_s = load_s
        self.gate: threading.Event | None = None  # the load waits on it when set
        self.ended = 0.0  # perf_counter() when the load's own code returned

    def load(self) -> None:
        if self.gate is not None:
            self.gate.wait(60)
        if self.load_s:
            time.sleep(self.load_s)
        self.ended = time.perf_counter()

    def unload(self) -> None:
        pass

    async def agenerate(self, x: int) -> int:
        return x

    async def aplain(self, x: int) -> int:
        return x


@stepfsm.stateful
class AsyncStep:
    """An async step: its load and unload are ``async def`` and run on the caller's loop."""

    def __init__(self, load_s: float = 0.0) -> None:
        self.load_s = load_s
        self.gate: asyncio.Event | None = None
        self.ended = 0.0

    async def load(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.load_s:
            await asyncio.sleep(self.load_s)
        self.ended = time.perf_counter()

    async def unload(self) -> None:
        pass


def _flag_guard(fn: Callable[[Any, int], Coroutine[Any, Any, int]]) -> Any:
    """A hand-written ``async def`` guard: one flag check, then the method."""

    @functools.wraps(fn)
    async def wrapper(self: Any, x: int) -> int:
        if not self.ready:
            raise RuntimeError("not loaded")
        return await fn(self, x)

    return wrapper


class FlagStep:
    """The reference: the same ``async def`` method behind a hand-written flag check."""

    ready = True

    @_flag_guard
    async def aflag(self, x: int) -> int:
        return x


# --------------------------------------------------------------------- measuring

#: Call timings use this process's CPU time, not wall time, so that time spent waiting
#: for a CPU while other processes run is not counted (their effect on caches still is).
_CLOCK: Final = time.process_time


@dataclass
class Case:
    """One timed statement: ``seconds(number)`` runs it ``number`` times."""

    label: str
    seconds: Callable[[int], float]
    empty: str  # the label of the empty loop it is net of
    number: int = 1
    samples: list[float] = field(default_factory=list)  # ns per call, empty loop included

    def best(self) -> float:
        return min(self.samples)


def _sync_case(label: str, stmt: str, names: dict[str, Any]) -> Case:
    timer = timeit.Timer(stmt, _CLOCK, globals=names)
    return Case(label, timer.timeit, "sync loop")


def _async_case(label: str, stmt: str, names: dict[str, Any], loop: Any) -> Case:
    """``stmt`` (an ``await ...``) in an ``async def`` loop, run to the end on ``loop``."""
    source = f"async def _body(_n):\n    for _ in range(_n):\n        {stmt}\n"
    space = dict(names)
    exec(source, space)  # the statement inline, as timeit does: no call per iteration
    body = space["_body"]

    def seconds(number: int) -> float:
        coro = body(number)
        started = _CLOCK()
        loop.run_until_complete(coro)
        return _CLOCK() - started

    return Case(label, seconds, "async loop")


def _time_cases(cases: Sequence[Case], target_s: float, repeat: int) -> None:
    """Calibrate each case to about ``target_s`` a sample, then take ``repeat`` rounds.

    Rounds are interleaved (every case once per round) and samples are short,
    so that each case gets many chances at a quiet moment of a shared machine:
    the best sample is kept.
    """
    for case in cases:
        number, took = 1, 0.0
        while number < 1 << 24:
            took = min(case.seconds(number) for _ in range(3))
            if took >= target_s / 4:
                break
            number *= 4 if took < target_s / 40 else 2
        case.number = max(1, int(number * target_s / max(took, 1e-9)))
    for _ in range(repeat):
        for case in cases:
            case.samples.append(case.seconds(case.number) / case.number * 1e9)


@dataclass
class Row:
    """One line of the call table."""

    label: str
    ns: float
    ref: str  # the label of the row it is compared with
    x: float = 1.0


_SYNC_ENSURE = "ensure_loaded(step), loaded"
_ASYNC_ENSURE = "await aensure_loaded(step), loaded"
_PLAIN = "await step.aplain(1), unguarded"
_GUARDED = "await step.agenerate(1), guard="
_FLAG = "await flag-check wrapper (reference)"


def measure_calls(target_s: float, repeat: int) -> tuple[list[Row], dict[str, float]]:
    """The call table (ns per call, net of the empty loops) and the empty loops' ns."""
    step = SyncStep()
    stepfsm.ensure_loaded(step)
    names = {
        "ensure_loaded": stepfsm.ensure_loaded,
        "aensure_loaded": stepfsm.aensure_loaded,
        "step": step,
        "flag": FlagStep(),
    }
    loop = asyncio.new_event_loop()
    try:
        cases = [
            _sync_case("sync loop", "pass", names),
            _async_case("async loop", "pass", names, loop),
            _sync_case(_SYNC_ENSURE, "ensure_loaded(step)", names),
            _async_case(_ASYNC_ENSURE, "await aensure_loaded(step)", names, loop),
            _async_case(_PLAIN, "await step.aplain(1)", names, loop),
            _async_case(_GUARDED, "await step.agenerate(1)", names, loop),
            _async_case(_FLAG, "await flag.aflag(1)", names, loop),
        ]
        for case in cases[2:]:  # warm: lazily created lifecycles, caches, the guard's code
            case.seconds(100)
        _time_cases(cases, target_s, repeat)
    finally:
        loop.close()
        stepfsm.lifecycle(step).unload()
    empty = {case.label: case.best() for case in cases[:2]}
    net = {case.label: max(case.best() - empty[case.empty], 0.1) for case in cases[2:]}
    refs = {_ASYNC_ENSURE: _SYNC_ENSURE, _GUARDED: _PLAIN, _FLAG: _PLAIN}
    rows = [
        Row(label, ns, refs.get(label, label), ns / net[refs.get(label, label)])
        for label, ns in net.items()
    ]
    return rows, empty


@dataclass
class Wakeup:
    """Wake-up rounds of one kind of step, or of a floor (a plain asyncio future)."""

    label: str
    last: list[float] = field(default_factory=list)  # s from the load's end to the last resume
    first: list[float] = field(default_factory=list)  # ... to the first resume
    cpu: list[float] = field(default_factory=list)  # the loop thread's CPU s meanwhile
    total: float = 0.0  # seconds the rounds took, set-up included
    floor: bool = False


Round = tuple[float, float, float]  # first, last, cpu


async def _one_wakeup(step: SyncStep | AsyncStep, tasks: int) -> Round:
    """One round: ``tasks`` tasks await one load; (first, last) resume after its end."""
    if isinstance(step, AsyncStep):
        step.gate = asyncio.Event()
    else:
        step.gate = threading.Event()
    loader = asyncio.create_task(stepfsm.aload(step))
    while stepfsm.state(step) is not stepfsm.State.LOADING:
        await asyncio.sleep(0.0005)
    resumed: list[float] = []

    async def waiter() -> None:
        await stepfsm.aensure_loaded(step)
        resumed.append(time.perf_counter())

    waiters = [asyncio.create_task(waiter()) for _ in range(tasks)]
    for _ in range(3):  # each waiter runs until it awaits the step's shared future
        await asyncio.sleep(0)
    if resumed:
        raise RuntimeError("a waiting task resumed before the load ended")
    cpu = time.thread_time()  # the loop is idle from here until the wake-up (but for the load)
    step.gate.set()  # the load goes on: load_s more, then it ends
    await loader
    await asyncio.gather(*waiters)
    cpu = time.thread_time() - cpu
    if len(resumed) != tasks:
        raise RuntimeError(f"{len(resumed)} of {tasks} tasks resumed")
    return min(resumed) - step.ended, max(resumed) - step.ended, cpu


async def _floor(tasks: int, shield: bool) -> Round:
    """The same without stepfsm: ``tasks`` tasks await one future that another thread resolves."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    resumed: list[float] = []

    async def waiter() -> None:
        await (asyncio.shield(future) if shield else future)
        resumed.append(time.perf_counter())

    waiters = [asyncio.create_task(waiter()) for _ in range(tasks)]
    for _ in range(3):
        await asyncio.sleep(0)
    ended = [0.0]

    def end() -> None:  # as a load ending in a worker thread does
        ended[0] = time.perf_counter()
        loop.call_soon_threadsafe(future.set_result, None)

    cpu = time.thread_time()
    threading.Thread(target=end).start()
    await asyncio.gather(*waiters)
    cpu = time.thread_time() - cpu
    return min(resumed) - ended[0], max(resumed) - ended[0], cpu


_FLOOR_PLAIN = "asyncio floor: await future"
_FLOOR_SHIELD = "asyncio floor: await shield(future)"
_WAKE_SYNC = "sync step (load in a worker thread)"
_WAKE_ASYNC = "async step (load on the loop)"


def measure_wakeups(tasks: int, load_s: float, rounds: int) -> list[Wakeup]:
    """``rounds`` rounds for each kind of step and each floor, interleaved."""
    found = [
        Wakeup(_FLOOR_PLAIN, floor=True),
        Wakeup(_FLOOR_SHIELD, floor=True),
        Wakeup(_WAKE_SYNC),
        Wakeup(_WAKE_ASYNC),
    ]
    for _ in range(rounds):
        for wakeup in found:
            started = time.perf_counter()
            if wakeup.floor:
                made = asyncio.run(_floor(tasks, shield=wakeup.label == _FLOOR_SHIELD))
            else:
                step = SyncStep(load_s) if wakeup.label == _WAKE_SYNC else AsyncStep(load_s)
                made = asyncio.run(_one_wakeup(step, tasks))
                asyncio.run(stepfsm.aunload(step))
            wakeup.first.append(made[0])
            wakeup.last.append(made[1])
            wakeup.cpu.append(made[2])
            wakeup.total += time.perf_counter() - started
    return found


# ----------------------------------------------------------------------- report


def render_calls(rows: Sequence[Row], empty: dict[str, float], repeat: int) -> str:
    lines = [
        f"calls: CPU ns per call, best of {repeat} interleaved rounds, net of the empty loop "
        f"(sync {empty['sync loop']:.1f} ns, async {empty['async loop']:.1f} ns)",
        "",
        f"{'call on a loaded step':<40}  {'ns':>8}  {'x':>6}  vs",
        f"{'-' * 40}  {'-' * 8}  {'-' * 6}  {'-' * 32}",
    ]
    for row in rows:
        versus = "" if row.ref == row.label else row.ref
        lines.append(f"{row.label:<40}  {row.ns:>8,.1f}  {row.x:>6.2f}  {versus}".rstrip())
    return "\n".join(lines)


def _ms(values: Sequence[float]) -> str:
    return f"{statistics.median(values) * 1e3:6.1f}"


def render_wakeups(found: Sequence[Wakeup], tasks: int, load_s: float, rounds: int) -> str:
    lines = [
        f"wake-up: {tasks:,} tasks await aensure_loaded(step) during one {load_s * 1e3:g} ms "
        f"load; ms from the end of the load's code",
        f"(wall: median of {rounds} rounds, best, worst; loop CPU: the loop thread's CPU "
        "time meanwhile, median)",
        "",
        f"{'waiting on':<40}  {'last':>6}  {'best':>6}  {'worst':>6}  {'first':>6}  "
        f"{'loop CPU':>8}",
        f"{'-' * 40}  {'-' * 6}  {'-' * 6}  {'-' * 6}  {'-' * 6}  {'-' * 8}",
    ]
    for w in found:
        lines.append(
            f"{w.label:<40}  {_ms(w.last)}  {min(w.last) * 1e3:6.1f}  {max(w.last) * 1e3:6.1f}  "
            f"{_ms(w.first)}  {_ms(w.cpu):>8}"
        )
    return "\n".join(lines)


@dataclass
class Target:
    """One target of the issue and how this run did."""

    name: str
    measured: str
    goal: str
    ok: bool


def targets(rows: Sequence[Row], found: Sequence[Wakeup], tasks: int) -> list[Target]:
    """The issue's targets, each with its measured value and verdict."""
    x = {row.label: row.x for row in rows}
    ensure, guard = x[_ASYNC_ENSURE], x[_GUARDED]
    made = [
        Target("aensure_loaded vs ensure_loaded", f"{ensure:.2f}x", "<= 3.00x", ensure <= 3.0),
        Target("async guarded call vs unguarded", f"{guard:.2f}x", "<= 3.00x", guard <= 3.0),
    ]
    for w in found:
        if w.floor:
            continue
        last = statistics.median(w.last) * 1e3
        kind = w.label.split(" (")[0]
        made.append(
            Target(f"last of {tasks:,} tasks, {kind}", f"{last:.1f} ms", "<= 100 ms", last <= 100)
        )
    return made


def render_targets(found: Sequence[Target]) -> str:
    lines = ["targets (ratios from this run; wake-up: the median round)"]
    for t in found:
        verdict = "PASS" if t.ok else "MISS"
        lines.append(f"  {t.name:<36}  {t.measured:>10}  {t.goal:>9}  {verdict}")
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
    parser.add_argument("--repeat", type=int, help="timing rounds of the calls (best is kept)")
    parser.add_argument("--rounds", type=int, help="wake-up rounds per kind of step")
    parser.add_argument("--tasks", type=int, default=10_000, help="waiting tasks (10,000)")
    parser.add_argument("--load-ms", type=float, default=100.0, help="the load's length (100)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 31)
    rounds = args.rounds or (2 if args.quick else 7)
    target_s = 0.002 if args.quick else 0.01
    load_s = args.load_ms / 1e3

    phases = [time.perf_counter()]
    rows, empty = measure_calls(target_s, repeat)
    phases.append(time.perf_counter())
    found = measure_wakeups(args.tasks, load_s, rounds)
    phases.append(time.perf_counter())

    print(
        f"stepfsm {stepfsm.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {_load()}"
        + (" [--quick: smoke run, numbers are noisy]" if args.quick else "")
    )
    print()
    print(render_calls(rows, empty, repeat))
    print()
    print(render_wakeups(found, args.tasks, load_s, rounds))
    print()
    print(render_targets(targets(rows, found, args.tasks)))
    calls, wakeups = (b - a for a, b in itertools.pairwise(phases))
    print(f"\n({phases[-1] - phases[0]:.1f} s: calls {calls:.1f} s, wake-up {wakeups:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
