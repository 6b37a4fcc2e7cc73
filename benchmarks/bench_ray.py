#!/usr/bin/env python3
"""stepfsm on a local Ray cluster: what reporting to ``cluster_status()`` costs, and what it buys.

    python benchmarks/bench_ray.py                  # the two timings (~40 s on 2 CPUs)
    python benchmarks/bench_ray.py --failing-load   # + RayPipeline with a failing load,
                                                    #   with and without stepfsm (~3 min)

1. **Reporting overhead**: seconds per load/unload cycle inside an actor, for
   an actor that reports its transitions to the cluster's board
   (``stepfsm.integrations.ray.remote``) and one that does not (plain
   ``ray.remote``); the difference divided by the 4 transitions of a cycle.
   Target: at most 5 ms per transition.
2. **cluster_status()** with 100 loaded steps across 4 actors: the median of
   several calls. Target: at most 200 ms.
3. ``--failing-load``: distilabel's ``RayPipeline.run()`` with a step whose
   load raises before ``super().load()`` and an LLM whose load raises after
   it, each in a fresh interpreter with a deadline, without stepfsm and with
   ``install()``: how the run ends and how long it took.

``tests/integration/test_ray.py`` runs 1 and 2 on its own cluster and checks
the targets; ``docs/distilabel.md`` quotes 3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Targets of the cluster issue.
TRANSITION_BUDGET_S = 0.005
STATUS_BUDGET_S = 0.200


def reporting_overhead(ray: Any, cycles: int = 200) -> tuple[float, float, float]:
    """``(cycle without reporting, cycle with reporting, overhead per transition)``, seconds."""
    import stepfsm.integrations.ray as sr
    from tests.integration.ray_steps import TinyLLM

    plain = ray.remote(TinyLLM).remote("plain")
    reporting = sr.remote(TinyLLM).remote("reporting")
    ray.get([plain.cycle.remote(3), reporting.cycle.remote(3)])  # warm up (and connect)
    without = min(ray.get(plain.cycle.remote(cycles)) for _ in range(3))
    with_ = min(ray.get(reporting.cycle.remote(cycles)) for _ in range(3))
    for actor in (plain, reporting):
        ray.kill(actor)
    return without, with_, max(0.0, with_ - without) / 4


def status_time(
    ray: Any, actors: int = 4, steps: int = 25, calls: int = 7
) -> tuple[float, int, set[int]]:
    """``(median seconds of cluster_status(), rows seen, pids of the actors)``."""
    import stepfsm.integrations.ray as sr
    from tests.integration.ray_steps import Many

    handles = [ray.remote(Many).remote(f"a{i}", steps) for i in range(actors)]
    pids = set(ray.get([handle.pid.remote() for handle in handles]))
    deadline = time.monotonic() + 60
    while True:  # the actors report asynchronously after their constructor returns
        rows = [row for row in sr.cluster_status() if row.pid in pids]
        if len(rows) >= actors * steps or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        sr.cluster_status()
        times.append(time.perf_counter() - started)
    for handle in handles:
        ray.kill(handle)
    return statistics.median(times), len(rows), pids


# ------------------------------------------------------------ failing loads

SCENARIO = """
import os, sys, time
sys.path.insert(0, {root!r})
os.environ["PYTHONPATH"] = {root!r}
import ray
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration
from tests.integration.distilabel import offline
from tests.integration.ray_distilabel_steps import LateFailLLM
if {installed!r}:
    import stepfsm.integrations.distilabel as sd
    sd.install()
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
with Pipeline(name="bench-{kind}-{installed}", cache_dir={cache!r}) as pipeline:
    data = LoadDataFromDicts(data=[{{"instruction": i}} for i in offline.INSTRUCTIONS])
    if {kind!r} == "early":
        data >> offline.EarlyFailStep()
    elif {kind!r} == "late":
        data >> TextGeneration(llm=LateFailLLM())
    else:
        data >> TextGeneration(llm=offline.BrokenCleanupLLM())
started = time.monotonic()
try:
    result = pipeline.ray().run(use_cache=False)
    rows = len(result["default"]["train"]) if result else 0
    outcome = f"returned ({{rows}} rows, no exception)"
except Exception as error:
    outcome = f"raised {{type(error).__name__}}: {{str(error)[:160]}}"
print(f"OUTCOME {{time.monotonic() - started:.1f}} s: {{outcome}}", flush=True)
ray.shutdown()
"""


#: The failing loads of ``--failing-load``.
SCENARIOS = {
    "early": "a step's load raises before super().load()",
    "late": "an LLM's load raises after super().load()",
    "cleanup": "an LLM's load raises after super().load(), and its unload too",
}


def failing_load(kind: str, installed: bool, deadline: float, cache: str) -> str:
    """Run one RayPipeline with a failing load in a fresh interpreter; how it ended."""
    code = SCENARIO.format(root=str(ROOT), installed=installed, kind=kind, cache=cache)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "0"}
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.communicate()
            return f"hung: killed after {time.monotonic() - started:.0f} s"
    for line in output.splitlines():
        if line.startswith("OUTCOME "):
            return line.removeprefix("OUTCOME ")
    return f"exit {process.returncode} without an outcome: {output[-300:]!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failing-load", action="store_true", help="also run scenario 3")
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds per scenario")
    parser.add_argument(
        "--scenarios", default="early,late", help=f"of {', '.join(SCENARIOS)} (comma-separated)"
    )
    parser.add_argument("--skip-timings", action="store_true", help="only --failing-load")
    args = parser.parse_args()
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    ok = True
    if not args.skip_timings:
        started = time.monotonic()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        print(f"ray.init: {time.monotonic() - started:.1f} s")
        try:
            without, with_, overhead = reporting_overhead(ray)
            print(
                f"load/unload cycle in an actor: {without * 1e3:.3f} ms without reporting, "
                f"{with_ * 1e3:.3f} ms with; overhead {overhead * 1e3:.3f} ms per transition "
                f"(target <= {TRANSITION_BUDGET_S * 1e3:.0f} ms)"
            )
            median, rows, _ = status_time(ray)
            print(
                f"cluster_status() with {rows} steps across 4 actors: {median * 1e3:.1f} ms "
                f"(median; target <= {STATUS_BUDGET_S * 1e3:.0f} ms)"
            )
        finally:
            ray.shutdown()
        ok = overhead <= TRANSITION_BUDGET_S and median <= STATUS_BUDGET_S
    if args.failing_load:
        import tempfile

        with tempfile.TemporaryDirectory() as cache:
            for kind, what in SCENARIOS.items():
                if kind not in args.scenarios.split(","):
                    continue
                for installed in (False, True):
                    who = "with stepfsm install()" if installed else "distilabel alone     "
                    outcome = failing_load(kind, installed, args.deadline, cache)
                    print(f"RayPipeline, {what}, {who}: {outcome}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
