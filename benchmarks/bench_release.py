"""What the verified release costs (``docs/design.md``, section 11), as ratios in one run.

* **clean unload**: a load/unload cycle of a step whose load sets a model (an
  object) and a list of shards, with the release check (``on_leak="warn"``, the
  default) and without it (``on_leak="ignore"``), in the same process; the
  target is <= 1.1x (everything freed by reference counting: no gc pass).
* **leaked unload**: the same step, with the model kept alive by a global
  cache, on a heap of about 10**6 extra objects: the time of the whole unload
  (one ``gc.collect()`` and the referrer search); the target is <= 1 s.

    python benchmarks/bench_release.py          # ~10 s
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


def clean_ratio(repeat: int, number: int) -> tuple[float, float]:
    """Best µs per cycle (checked, unchecked), timed in alternating rounds."""
    steps = (Checked(), Unchecked())
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for index, step in enumerate(steps):
            timer = timeit.Timer(
                "load(); unload()", globals={"load": step.load, "unload": step.unload}
            )
            best[index] = min(best[index], timer.timeit(number) / number * 1e6)
    return best[0], best[1]


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
    repeat, number, objects = (3, 2_000, 100_000) if args.quick else (7, 20_000, 1_000_000)
    checked, unchecked = clean_ratio(repeat, number)
    ratio = checked / unchecked
    took, tracked = leaked_unload_s(objects)
    print(f"clean load/unload cycle, best of {repeat} x {number:,}")
    print(f"  with the release check       {checked:8.1f} us")
    print(f"  on_leak='ignore'             {unchecked:8.1f} us")
    verdict = "PASS" if ratio <= CLEAN_TARGET else "MISS"
    print(f"  ratio                        {ratio:8.2f}x   target <= {CLEAN_TARGET}x  {verdict}")
    print(f"leaked unload on a heap of {tracked:,} GC-tracked objects")
    verdict = "PASS" if took <= LEAK_TARGET_S else "MISS"
    print(f"  unload + gc + referrer search {took:7.3f} s   target <= {LEAK_TARGET_S} s  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
