"""What a budget costs a load when its pool holds 1,000 loaded steps, as ratios in one run.

* **eviction**: the pool is full (1,000 steps of cost 1, capacity 1,000), so
  every load first evicts the least recently used step. Against the same work
  without a budget: a load of one step and an unload of another. The target
  (``docs/design.md`` §12) is <= 2x: the choice of the victim must not be a
  sort of the pool per load.
* **room**: the pool has room (capacity 10**9): a budgeted load and unload
  against the same pair without a cost.

The steps' load and unload set one attribute, so the numbers are stepfsm's
own work. Best µs per iteration of ``--repeat`` rounds, cases alternating.

    python benchmarks/bench_budget.py            # ~10 s
    python benchmarks/bench_budget.py --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import time

import stepfsm

POOL = 1_000
TARGET = 2.0


@stepfsm.stateful(on_leak="ignore")
class Step:
    """A step whose load and unload set one attribute."""

    def load(self) -> None:
        self.value = 1

    def unload(self) -> None:
        self.value = 0


def steps(count: int, cost: tuple[str, float] | None) -> list[Step]:
    made = [Step() for _ in range(count)]
    for step in made:
        stepfsm.lifecycle(step).cost = cost
    return made


def evicting_us(ring: list[Step], number: int, start: int) -> float:
    """µs per load of the next step of ``ring`` into a full pool (each evicts one)."""
    size = len(ring)
    started = time.perf_counter()
    for i in range(start, start + number):
        ring[(i + POOL) % size].load()  # the least recently used, ring[i % size], goes
    return (time.perf_counter() - started) / number * 1e6


def pairing_us(ring: list[Step], number: int, start: int) -> float:
    """µs per load of the next step of ``ring`` plus an unload of the oldest, by hand."""
    size = len(ring)
    started = time.perf_counter()
    for i in range(start, start + number):
        ring[i % size].unload()
        ring[(i + POOL) % size].load()
    return (time.perf_counter() - started) / number * 1e6


def cycle_us(step: Step, number: int) -> float:
    load, unload, clock = step.load, step.unload, time.perf_counter
    started = clock()
    for _ in range(number):
        load()
        unload()
    return (clock() - started) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (noisy numbers)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (default 7)")
    args = parser.parse_args()
    repeat, number = (3, 1_000) if args.quick else (args.repeat, 5_000)
    stepfsm.budget("bench", POOL)
    budgeted = steps(POOL + 1, ("bench", 1))
    plain = steps(POOL + 1, None)
    for step in (*budgeted[:POOL], *plain[:POOL]):
        step.load()
    best = {"evicting": float("inf"), "pairing": float("inf")}
    done = 0
    for _ in range(repeat):
        best["evicting"] = min(best["evicting"], evicting_us(budgeted, number, done))
        best["pairing"] = min(best["pairing"], pairing_us(plain, number, done))
        done += number
    stepfsm.budget("roomy", 10**9)
    roomy, free = steps(1, ("roomy", 1))[0], steps(1, None)[0]
    room = {"roomy": float("inf"), "free": float("inf")}
    for _ in range(repeat):
        room["roomy"] = min(room["roomy"], cycle_us(roomy, number))
        room["free"] = min(room["free"], cycle_us(free, number))
    pool = next(p for p in stepfsm.budgets() if p.name == "bench")
    assert pool.used == POOL, pool  # every load evicted exactly one step
    ratio = best["evicting"] / best["pairing"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"a full pool of {POOL:,} loaded steps, best of {repeat} x {number:,}")
    print(f"  load that evicts the LRU step   {best['evicting']:8.1f} us")
    print(f"  load + unload, no budget        {best['pairing']:8.1f} us")
    print(f"  ratio                           {ratio:8.2f}x   target <= {TARGET}x  {verdict}")
    print("a pool with room: load + unload")
    print(f"  with a cost                     {room['roomy']:8.1f} us")
    print(f"  without                         {room['free']:8.1f} us")
    print(f"  ratio                           {room['roomy'] / room['free']:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
