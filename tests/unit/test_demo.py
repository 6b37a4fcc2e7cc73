"""The README's demo runs and tells the whole story."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_and_shows_each_section() -> None:
    """`python -m stepfsm demo` exits 0 and prints every section with its outcome."""
    result = subprocess.run(
        [sys.executable, "-m", "stepfsm", "demo", "--color", "never"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "AlreadyLoadedError: TinyLLM 'gen_0' is already loaded",
        "NotLoadedError: TinyLLM 'gen_1' is not loaded",
        "load() ran 1 time; 1 thread loaded, 15 waited and reused it; state: loaded",
        "LoadError: load() of TinyLLM 'flaky' failed with OSError",
        "StepFailedError:",
        "state: failed (never stuck in 'loading')",
        "finish_load",
        "stepfsm.unload_all()",
    ):
        assert expected in out, expected
    assert "\033[" not in out  # --color never
