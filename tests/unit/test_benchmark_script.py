"""Smoke tests of ``benchmarks/bench_lifecycle.py``: it runs and prints every row (no timings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_lifecycle.py"

ROWS = (
    "stepfsm ",
    "stepfsm, 7 others loaded",
    "stepfsm pydantic, 3 loaded",
    "stepfsm pydantic, 9 loaded",
    "transitions.Machine",
    "transitions shared Machine",
    "stepfsm engine alone",
    "transitions LockedMachine",
    "python-statemachine",
    "Automat TypeMachine",
    "lock+flag (floor)",
    "plain call (no guard)",
    "*args/**kwargs wrapper",
    "exact-signature wrapper",
)
TARGETS = (
    "cycle vs transitions.Machine",
    "cycle vs LockedMachine",
    "guarded call vs plain call",
    "bytes per loaded instance",
    "import stepfsm vs transitions",
    "load #9 vs #3 (pydantic)",
)
ARGS = ("--quick", "--others", "7", "--instances", "50", "--scale", "3", "9")

# Runs the script as __main__ with the optional peers made unimportable.
WITHOUT_PEERS = """
import runpy, sys
sys.modules["statemachine"] = None
sys.modules["automat"] = None
sys.argv = sys.argv[1:]  # [script, *args]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(*command: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _check(lines: list[str]) -> None:
    for label in ROWS:
        assert any(line.startswith(label) for line in lines), f"no row {label!r}:\n" + "\n".join(
            lines
        )
    for name in TARGETS:
        row = next((line for line in lines if line.strip().startswith(name)), "")
        assert " PASS" in row or " MISS" in row, f"no target {name!r} with a verdict: {row!r}"


def test_quick_run_prints_every_row_and_target() -> None:
    """A ``--quick`` run exits 0 and prints every table row and every target with a verdict."""
    _check(_run(str(SCRIPT), *ARGS))


def test_missing_optional_peers_are_reported_not_fatal() -> None:
    """Without python-statemachine and Automat the run still completes and says they are missing."""
    lines = _run("-c", WITHOUT_PEERS, str(SCRIPT), *ARGS)
    _check(lines)
    for label in ("python-statemachine", "Automat TypeMachine"):
        row = next(line for line in lines if line.startswith(label))
        assert row.endswith("not installed"), row


def _quick(script: str) -> str:
    """The output of ``benchmarks/<script> --quick``, which must exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_group_benchmark_prints_every_size() -> None:
    """``bench_group.py --quick`` runs and prints a row per N and the verdict (no timings)."""
    out = _quick("bench_group.py")
    rows = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert rows == ["1", "2", "8"], out
    assert out.splitlines()[-1].startswith("worst "), out


def test_release_benchmark_prints_both_rows() -> None:
    """``bench_release.py --quick`` runs, finds the leak it plants and prints both targets."""
    out = _quick("bench_release.py")
    assert "target <= 1.1x" in out, out
    assert "target <= 1.0 s" in out, out
    assert "size estimate at load end" in out, out


def test_budget_benchmark_prints_both_cases() -> None:
    """``bench_budget.py --quick`` runs (every load into the full pool evicts one) and prints."""
    out = _quick("bench_budget.py")
    assert "load that evicts the LRU step" in out, out
    assert "target <= 2.0x" in out, out
    assert "a pool with room" in out, out
