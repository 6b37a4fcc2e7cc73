"""How long ``stepfsm.group(...).load()`` takes for N steps whose loads each take 0.1 s.

The loads run in a pool of N workers, so the group should take about one
load's time, whatever N: the target is <= 1.2 x 0.1 s for N <= 8
(``docs/design.md``, section 12). Each load sleeps (as a load waiting on I/O
or a device does), so this measures the group's own overhead and the pool's
concurrency, not CPU work. Wall-clock time, best of ``--repeat`` rounds.

    python benchmarks/bench_group.py            # N = 1..8, 5 rounds each (~5 s)
    python benchmarks/bench_group.py --quick    # 2 rounds, N = 1, 2, 8
"""

from __future__ import annotations

import argparse
import time

import stepfsm

LOAD_S = 0.1
TARGET = 1.2


@stepfsm.stateful
class SleepyStep:
    """A step whose load takes ``LOAD_S`` seconds of waiting."""

    def load(self) -> None:
        time.sleep(LOAD_S)

    def unload(self) -> None:
        pass


def measure(n: int, repeat: int) -> float:
    """The best wall time of a group load of ``n`` steps, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        steps = [SleepyStep() for _ in range(n)]
        group = stepfsm.group(*steps)
        started = time.perf_counter()
        group.load()
        best = min(best, time.perf_counter() - started)
        group.unload()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds; N = 1, 2, 8")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per N (default 5)")
    args = parser.parse_args()
    sizes = (1, 2, 8) if args.quick else tuple(range(1, 9))
    repeat = 2 if args.quick else args.repeat
    print(f"group load of N steps, each load {LOAD_S:.1f} s, N workers; best of {repeat}")
    print(f"{'N':>3}  {'ms':>7}  {'x one load':>10}  target <= {TARGET:.1f}x")
    worst = 0.0
    for n in sizes:
        took = measure(n, repeat)
        ratio = took / LOAD_S
        worst = max(worst, ratio)
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(f"{n:>3}  {took * 1000:7.1f}  {ratio:9.2f}x  {verdict}")
    print(f"worst {worst:.2f}x: {'PASS' if worst <= TARGET else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
