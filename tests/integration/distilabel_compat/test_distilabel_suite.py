"""distilabel's own unit tests, run with and without stepfsm (docs/design.md §4: migration mode).

Runs ``run_distilabel_suite.py`` (about a minute on this machine, plus a one-time
download of distilabel's sdist into ``.cache/distilabel-compat/``) and checks
its JSON: with ``install(on_unloaded_use="warn")`` exactly the tests that pass
without stepfsm pass, and with the default ``install()`` every test that
starts failing fails with a stepfsm error. README.md beside this file has the
measured counts and the list.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCRIPT = Path(__file__).with_name("run_distilabel_suite.py")
#: distilabel 1.5.3's tests/unit passes 603 tests here without optional clients; far
#: fewer means the run itself is broken (an import error in a conftest, say).
MIN_PASSED = 500
#: What the default install() may turn a passing distilabel test into (see README.md).
EXPECTED_ERRORS = {"NotLoadedError", "AlreadyLoadedError", "LoadError"}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the comparison script once (plain, warn, raise) and return its JSON result."""
    if importlib.util.find_spec("distilabel") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("distilabel is not installed (stepfsm[distilabel]); CI must have it")
        pytest.skip("needs distilabel (pip install 'stepfsm[distilabel]')")
    out = tmp_path_factory.mktemp("distilabel-compat") / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(out), "--min-passed", str(MIN_PASSED)],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    if proc.returncode == 2 and os.environ.get("CI") != "true":
        pytest.skip(f"distilabel's sdist could not be downloaded:\n{proc.stderr[-2000:]}")
    assert out.exists(), f"the script wrote no result:\n{proc.stdout[-4000:]}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    result["stdout"] = proc.stdout
    result["returncode"] = proc.returncode
    return result


def test_every_run_used_the_intended_setup(comparison: dict[str, Any]) -> None:
    """The plain run has no stepfsm; the others installed it with the intended policies."""
    runs = comparison["runs"]
    assert runs["plain"]["report"]["installed"] is False
    assert runs["plain"]["report"]["stepfsm_imported"] is False
    assert runs["plain"]["counts"]["passed"] >= MIN_PASSED, runs["plain"]["summary"]
    warn, strict = runs["warn"]["report"], runs["raise"]["report"]
    assert (warn["installed"], warn["on_unloaded_use"], warn["on_repeat"]) == (True, "warn", "warn")
    assert (strict["installed"], strict["on_unloaded_use"], strict["on_repeat"]) == (
        True,
        "raise",
        None,
    )


def test_migration_mode_passes_the_same_tests(comparison: dict[str, Any]) -> None:
    """With install(on_unloaded_use="warn") the passing set equals the one without stepfsm."""
    diff = comparison["compare"]["warn"]
    assert diff == {"lost": [], "gained": []}, comparison["stdout"]
    warned = comparison["runs"]["warn"]["report"]["warnings"]
    assert any("UnloadedUseWarning" in counts for counts in warned.values()), (
        "no UnloadedUseWarning: the migration mode was not exercised"
    )


def test_default_install_fails_only_with_stepfsm_errors(comparison: dict[str, Any]) -> None:
    """Under the default install() every newly failing test fails with a stepfsm error."""
    diff = comparison["compare"]["raise"]
    assert diff["gained"] == [], comparison["stdout"]
    assert diff["lost"], "the default policies changed nothing: were they installed?"
    errors = {t["message"].split(":")[0].removeprefix("stepfsm.errors.") for t in diff["lost"]}
    assert errors <= EXPECTED_ERRORS, comparison["stdout"]
    assert comparison["returncode"] == 0, comparison["stdout"]


COMPAT_DOC = Path(__file__).resolve().parents[3] / "docs" / "distilabel-compat.md"


def test_the_counts_docs_quote_are_this_runs(comparison: dict[str, Any]) -> None:
    """docs/distilabel-compat.md quotes this run's counts (they drift when clients are added)."""
    text = COMPAT_DOC.read_text(encoding="utf-8")
    for run in ("plain", "warn", "raise"):
        counts = comparison["runs"][run]["counts"]
        cells = [str(counts.get(k, 0)) for k in ("passed", "failed", "error", "skipped")]
        row = next((line for line in text.splitlines() if line.startswith(f"| {run} |")), "")
        assert row.split("|")[-5:-1] == [f" {c} " for c in cells], (
            f"docs/distilabel-compat.md's {run!r} row says {row!r}; this run: "
            f"passed {cells[0]}, failed {cells[1]}, errors {cells[2]}, skipped {cells[3]}"
        )
    total = comparison["runs"]["plain"]["counts"]["total"]
    assert f"`tests/unit`, {total} tests" in text, f"the doc should say {total} tests ran"
    lost = len(comparison["compare"]["raise"]["lost"])
    assert f"**Default policies**: {lost} tests" in text, (
        f"docs/distilabel-compat.md should say {lost} tests fail under the default policies"
    )
