"""Smoke test of ``benchmarks/bench_async.py``: it runs and prints every row (no timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_async.py"

ROWS = (
    "ensure_loaded(step), loaded",
    "await aensure_loaded(step), loaded",
    "await step.aplain(1), unguarded",
    "await step.agenerate(1), guard=",
    "await flag-check wrapper (reference)",
    "asyncio floor: await future",
    "asyncio floor: await shield(future)",
    "sync step (load in a worker thread)",
    "async step (load on the loop)",
)
TARGETS = (
    "aensure_loaded vs ensure_loaded",
    "async guarded call vs unguarded",
    "last of 1,000 tasks, sync step",
    "last of 1,000 tasks, async step",
)


def test_quick_run_prints_every_row_and_target() -> None:
    """A ``--quick`` run exits 0 and prints every table row and every target with a verdict."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tasks", "1000", "--load-ms", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for label in ROWS:
        row = next((line for line in lines if line.startswith(label)), "")
        assert len(row.split()) > len(label.split()), f"no row {label!r}:\n{done.stdout}"
    for name in TARGETS:
        row = next((line for line in lines if line.strip().startswith(name)), "")
        assert " PASS" in row or " MISS" in row, f"no target {name!r} with a verdict: {row!r}"
