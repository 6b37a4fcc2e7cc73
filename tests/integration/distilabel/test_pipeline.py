"""Real ``Pipeline.run()`` calls (distilabel forks worker processes) with stepfsm installed.

The runs that could hang (a load failing in a worker) run in a subprocess
with a deadline (``scenarios.py``); the others run in this process.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.integration.distilabel import require

require("distilabel")

import stepfsm  # noqa: E402
from tests.integration.distilabel import offline  # noqa: E402

pytestmark = pytest.mark.slow

EXPECTED = [f"echo: {instruction}" for instruction in offline.INSTRUCTIONS]
SCENARIOS = "tests.integration.distilabel.scenarios"

RunPython = Callable[..., dict[str, tuple[int, str]]]


def signatures(pipeline: Any) -> tuple[str, str, dict[str, Any]]:
    """The pipeline's signature, its steps' aggregated signature (the cache key) and its dump."""
    return pipeline.signature, pipeline.aggregated_steps_signature, pipeline.dump()


def test_run_after_a_hand_load_returns_everything_twice(
    not_installed: ModuleType, pipeline_cache: Path
) -> None:
    """Two runs after a hand load return everything; the hand-loaded LLM keeps its one resource."""
    plain = signatures(offline.build_pipeline(offline.EchoLLM()))
    not_installed.install()
    llm = offline.EchoLLM()
    pipeline = offline.build_pipeline(llm)
    assert signatures(pipeline) == plain, "install() changed the pipeline's signature"
    llm.load()
    weights = llm._weights
    for run in (1, 2):
        distiset = pipeline.run(use_cache=False)
        assert offline.generations(distiset) == EXPECTED, f"run {run} lost generations"
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "the runs unloaded the user's LLM"
    assert offline.held() == [weights], (
        f"expected exactly the one hand-loaded resource: {offline.held()}"
    )
    assert offline.COUNTS["EchoLLM.load"] == 1, "the LLM was loaded again in this process"
    assert stepfsm.lifecycle(llm).holders == (), "a run left a hold on the user's LLM"
    assert signatures(pipeline) == plain, "loading or running changed the pipeline's signature"


def test_run_after_loading_an_llm_with_an_unpicklable_handle(
    installed: ModuleType, pipeline_cache: Path
) -> None:
    """An LLM whose load stored an open file and a lock still goes to the workers and generates."""
    llm = offline.HandleLLM()
    llm.load()
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(llm._handle)
    assert pickle.loads(pickle.dumps(llm))._handle is None, "the handle went into the pickle"
    distiset = offline.build_pipeline(llm).run(use_cache=False)
    assert offline.generations(distiset) == EXPECTED, "the run lost generations"
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "the run unloaded the user's LLM"
    assert not llm._handle.closed, "the run closed the user's handle"


def test_cache_is_reused_after_install_and_a_hand_load(
    not_installed: ModuleType,
    pipeline_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """use_cache=True: a run with stepfsm and a hand-loaded LLM reuses distilabel's cached run."""
    calls = tmp_path / "calls.log"
    monkeypatch.setenv(offline.CALL_LOG, str(calls))
    first = offline.build_pipeline(offline.EchoLLM(), name="stepfsm-cache").run(use_cache=True)
    assert offline.generations(first) == EXPECTED, "the uncached run lost generations"
    generated = calls.read_text(encoding="utf-8").count("generate")
    assert generated > 0, "the first run did not generate"
    not_installed.install()
    llm = offline.EchoLLM()
    llm.load()
    second = offline.build_pipeline(llm, name="stepfsm-cache").run(use_cache=True)
    assert offline.generations(second) == EXPECTED, "the cached run lost generations"
    assert calls.read_text(encoding="utf-8").count("generate") == generated, (
        "the second run generated again: its cache key changed"
    )
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "the cached run unloaded the user's LLM"


def _result(name: str, returncode: int, output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert returncode == 0, f"{name} exited {returncode}:\n{output[-3000:]}"
    assert lines, f"{name} printed no RESULT line:\n{output[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def test_failed_loads_in_workers_end_the_run_quickly(run_python: RunPython) -> None:
    """Loads failing in workers (early, or with a failing clean-up): Pipeline.run() ends."""
    results = run_python(
        {
            "llm": ["-m", SCENARIOS, "early-fail-llm", "--install"],
            "step": ["-m", SCENARIOS, "early-fail-step", "--install"],
            # stepfsm's warnings as errors in the workers, as under pytest's filterwarnings
            "clean-up fails, strict": ["-m", SCENARIOS, "broken-cleanup", "--install", "--strict"],
        },
        timeout=120,
    )
    for name, (returncode, output) in results.items():
        result = _result(name, returncode, output)
        assert result["outcome"] == "raised", f"{name}: the run did not report the failure"
        assert (
            result["error"] == "RuntimeError: Failed to load all the steps. Could not run pipeline."
        )
        assert "LoadError" in result["cause"], result["cause"]
        assert "(pretend)" in result["cause"], result["cause"]


def test_decorated_llm_without_install_runs_in_a_pipeline(run_python: RunPython) -> None:
    """Without install(), a hand-loaded @stepfsm.stateful LLM runs in a pipeline, stays loaded."""
    ((returncode, output),) = run_python(
        {"decorated": ["-m", SCENARIOS, "decorated"]}, timeout=120
    ).values()
    result = _result("decorated", returncode, output)
    assert result["installed"] is False, "the scenario installed the integration"
    assert result["generations"] == EXPECTED, f"the run lost generations: {result}"
    assert (result["state"], result["same_weights"], result["held"], result["loads"]) == (
        "loaded",
        True,
        1,
        1,
    ), f"the hand-loaded LLM changed: {result}"
