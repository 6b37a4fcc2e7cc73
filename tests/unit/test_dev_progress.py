"""dev.py's progress output: each stage says when it starts and how long it took.

dev.py is loaded from the repository root as a module (nothing runs on import);
only its ``stage()`` and ``summary()`` helpers run here, so nothing is installed.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest

DEV = Path(__file__).resolve().parents[2] / "dev.py"


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh copy of dev.py (its own empty STAGES) whose clock reads 100, 102.4, 110, 150.3."""
    spec = importlib.util.spec_from_file_location("dev_under_test", DEV)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ticks = iter([100.0, 102.4, 110.0, 150.3])
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    return module


def test_a_stage_prints_its_start_at_once_and_its_time_at_the_end(
    dev: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with dev.stage("venv", ".venv, Python 3.11") as notes:
        started = capsys.readouterr().out
        notes.append("reused")
    assert started == "\n== venv: .venv, Python 3.11 ...\n", "the start line came late"
    assert capsys.readouterr().out == "-- venv: reused in 2.4 s\n"
    ((name, took, note),) = dev.STAGES
    assert (name, round(took, 6), note) == ("venv", 2.4, "reused")


def test_a_failing_stage_still_prints_its_time(
    dev: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit), dev.stage("ruff"):
        raise SystemExit(1)
    assert capsys.readouterr().out.splitlines()[-1] == "-- ruff: done in 2.4 s"


def test_the_summary_is_one_line_with_every_stage_and_the_total(
    dev: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with dev.stage("venv"):
        pass
    with dev.stage("packages", "stepfsm[all,test]") as notes:
        notes.append("up to date")
    capsys.readouterr()
    dev.summary("all passed")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["== all passed in 43 s (venv 2 s, packages 40 s)"]
