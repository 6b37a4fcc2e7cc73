"""What the verified release costs (``docs/design.md``, section 11), as ratios in one run.

* **clean unload**: the unload of a step whose load set a model (an object)
  and a list of three shards, with the release check (``on_leak="warn"``, the
  default) and without it (``on_leak="ignore"``), in the same process; the
  target is <= 1.1x (everything freed by reference counting: no gc pass). Each
  unload is timed on its own (the load before it is not), best of many short
  samples taken in alternating rounds. The whole load/unload cycle's ratio is
  shown too.
* **size estimate**: what the load-end estimate of what the load set costs
  (``_release.measure``; every policy pays it: ``status()`` shows it, and the
  release check reuses it instead of walking the model at unload).
* **leaked unload**: the same step, with the model kept alive by a global
  cache, on a heap of about 10**6 extra objects: the time of the whole unload
  (one ``gc.collect()`` and the referrer search); the target is <= 1 s.

    python benchmarks/bench_release.py          # ~15 s
    python benchmarks/bench_release.py --quick  # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import gc
import time
import timeit
import warnings
from typing import Any

import stepfsm
from stepfsm import _release

CLEAN_TARGET = 1.1
LEAK_TARGET_S = 1.0


class Weights:
    """A stand-in for a model: an object holding a buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(1024)


@stepfsm.stateful
class Checked:
    """Its load sets a model and three shards; its unload lets go of them."""

    def load(self) -> None:
        self.model = Weights()
        self.shards = [Weights(), Weights(), Weights()]

    def unload(self) -> None:
        self.model = None
        self.shards = None


@stepfsm.stateful(on_leak="ignore")
class Unchecked(Checked):
    """The same step with the release check off."""


#: the global cache the leaked model stays in
CACHE: dict[str, Any] = {}


def _unloads_us(step: Checked, number: int) -> float:
    """Mean µs of ``number`` unloads of ``step``, each timed alone (its load is not)."""
    load, unload, clock = step.load, step.unload, time.perf_counter
    total = 0.0
    for _ in range(number):
        load()
        started = clock()
        unload()
        total += clock() - started
    return total / number * 1e6


def clean_unload_us(repeat: int, number: int) -> tuple[float, float]:
    """Best µs per unload (checked, unchecked), sampled in alternating rounds."""
    steps = (Checked(), Unchecked())
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for index, step in enumerate(steps):
            best[index] = min(best[index], _unloads_us(step, number))
    return best[0], best[1]


def clean_cycle_us(repeat: int, number: int) -> tuple[float, float]:
    """Best µs per load/unload cycle (checked, unchecked), timed in alternating rounds."""
    steps = (Checked(), Unchecked())
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for index, step in enumerate(steps):
            timer = timeit.Timer(
                "load(); unload()", globals={"load": step.load, "unload": step.unload}
            )
            best[index] = min(best[index], timer.timeit(number) / number * 1e6)
    return best[0], best[1]


def measure_us(repeat: int, number: int) -> float:
    """Best µs of the load-end size estimate of the same step's loaded objects."""
    step = Unchecked()
    step.load()
    key = stepfsm.lifecycle(step).owner_ref.key
    timer = timeit.Timer("measure(key)", globals={"measure": _release.measure, "key": key})
    best = min(timer.repeat(repeat, number)) / number * 1e6
    step.unload()
    return best


def leaked_unload_s(objects: int) -> tuple[float, int]:
    """Seconds of one unload whose model is leaked, on a heap of ``objects`` more objects."""
    heap = [[i] for i in range(objects)]  # GC-tracked objects for gc and get_referrers to scan
    step = Checked()
    step.load()
    CACHE["model"] = step.model
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.perf_counter()
            step.unload()
            took = time.perf_counter() - started
        leaks = [w for w in caught if issubclass(w.category, stepfsm.LeakWarning)]
        assert leaks, "the leak was not reported"
        report = stepfsm.lifecycle(step).last_release
        assert report is not None
        assert report.leaked
        assert f"{__name__}.CACHE['model']" in report.leaked[0].referrers, report
    finally:
        CACHE.clear()
    tracked = len(gc.get_objects())
    del heap
    return took, tracked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (noisy numbers)")
    args = parser.parse_args()
    repeat, number, objects = (5, 1_000, 100_000) if args.quick else (25, 2_000, 1_000_000)
    checked, unchecked = clean_unload_us(repeat, number)
    ratio = checked / unchecked
    cycle_checked, cycle_unchecked = clean_cycle_us(max(repeat // 4, 2), number * 4)
    sizing = measure_us(max(repeat // 4, 2), number * 4)
    took, tracked = leaked_unload_s(objects)
    print(f"clean unload, best of {repeat} x {number:,} (the load before each is not timed)")
    print(f"  with the release check       {checked:8.1f} us")
    print(f"  on_leak='ignore'             {unchecked:8.1f} us")
    verdict = "PASS" if ratio <= CLEAN_TARGET else "MISS"
    print(f"  ratio                        {ratio:8.2f}x   target <= {CLEAN_TARGET}x  {verdict}")
    print("clean load/unload cycle (for reference)")
    print(f"  with the release check       {cycle_checked:8.1f} us")
    print(f"  on_leak='ignore'             {cycle_unchecked:8.1f} us")
    print(f"  ratio                        {cycle_checked / cycle_unchecked:8.2f}x")
    share = sizing / cycle_unchecked * 100
    print(
        f"size estimate at load end      {sizing:8.1f} us   ({share:.0f}% of the cycle, any policy)"
    )
    print(f"leaked unload on a heap of {tracked:,} GC-tracked objects")
    verdict = "PASS" if took <= LEAK_TARGET_S else "MISS"
    print(f"  unload + gc + referrer search {took:7.3f} s   target <= {LEAK_TARGET_S} s  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
