"""distilabel's own unit tests, run with and without stepfsm (docs/design.md §4: migration mode).

Runs ``run_distilabel_suite.py`` (about a minute on this machine, plus a one-time
download of distilabel's sdist into ``.cache/distilabel-compat/``) and checks
its JSON: with ``install(on_unloaded_use="warn")`` exactly the tests that pass
without stepfsm pass, and with the default ``install()`` every test that
starts failing fails with a stepfsm error. README.md beside this file has the
measured counts and the list; the counts it and docs/distilabel-compat.md quote
are checked against the run (``readme_count_problems``; the checker itself is
tested on made-up counts, without the run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
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


COMPAT_README = Path(__file__).with_name("README.md")
COLUMNS = ("passed", "failed", "error", "skipped", "total")


def _cells(text: str, first: str) -> list[str]:
    """The cells of the markdown table row whose first cell is ``first`` ([] if none)."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            return cells
    return []


def readme_count_problems(comparison: dict[str, Any], text: str) -> list[str]:
    """Where README.md beside this file (``text``) quotes counts other than ``comparison``'s.

    The mode table (passed, failed, error, skipped, total), the number of tests collected,
    each "vs plain" heading's lost and gained, and the error table of the default install.
    """
    problems = []
    for run in ("plain", "warn", "raise"):
        counts = comparison["runs"][run]["counts"]
        want = [str(counts.get(key, 0)) for key in COLUMNS]
        if _cells(text, run)[1:6] != want:
            problems.append(f"the {run!r} row says {_cells(text, run)}; this run: {want}")
    total = comparison["runs"]["plain"]["counts"]["total"]
    if f"{total} tests collected" not in " ".join(text.split()):
        problems.append(f"it should say {total} tests collected")
    for run in ("warn", "raise"):
        diff = comparison["compare"][run]
        heading = f"### {run} vs plain: {len(diff['lost'])} lost, {len(diff['gained'])} gained"
        if heading not in text.splitlines():
            problems.append(f"it should have the heading {heading!r}")
    errors = Counter(
        t["message"].split(":")[0].removeprefix("stepfsm.errors.")
        for t in comparison["compare"]["raise"]["lost"]
    )
    quoted = {
        cells[0].strip("`"): cells[1]
        for line in text.splitlines()
        if (cells := [c.strip() for c in line.strip().strip("|").split("|")])[0].startswith("`")
        and cells[0].endswith("Error`")
        and len(cells) == 3
    }
    if quoted != {name: str(n) for name, n in errors.items()}:
        problems.append(f"its error table says {quoted}; this run: {dict(errors)}")
    return problems


def test_the_counts_the_readme_quotes_are_this_runs(comparison: dict[str, Any]) -> None:
    """README.md beside this file quotes this run's counts."""
    problems = readme_count_problems(comparison, COMPAT_README.read_text(encoding="utf-8"))
    assert problems == [], "tests/integration/distilabel_compat/README.md:\n" + "\n".join(problems)


def _made_up(lost: int) -> dict[str, Any]:
    """A comparison result with made-up counts, shaped as the script's JSON."""
    counts = {"passed": 10, "failed": 2, "error": 1, "skipped": 3, "total": 16}
    raised = dict(counts, passed=10 - lost, failed=2 + lost)
    return {
        "runs": {
            "plain": {"counts": counts},
            "warn": {"counts": counts},
            "raise": {"counts": raised},
        },
        "compare": {
            "warn": {"lost": [], "gained": []},
            "raise": {
                "lost": [{"message": "stepfsm.errors.NotLoadedError: x"}] * (lost - 1)
                + [{"message": "stepfsm.errors.LoadError: y"}],
                "gained": [],
            },
        },
    }


MADE_UP_README = """\
16 tests
collected.

| mode | passed | failed | error | skipped | total | time |
|---|---|---|---|---|---|---|
| plain | 10 | 2 | 1 | 3 | 16 | see below |
| warn | 10 | 2 | 1 | 3 | 16 | |
| raise | 7 | 5 | 1 | 3 | 16 | |

### warn vs plain: 0 lost, 0 gained

### raise vs plain: 3 lost, 0 gained

| error | tests | why |
|---|---|---|
| `NotLoadedError` | 2 | use before load |
| `LoadError` | 1 | the load's own exception type |
"""


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("", ""), None),
        (("| raise | 7 |", "| raise | 8 |"), "the 'raise' row"),
        (("| 3 | 16 | see", "| 3 | 17 | see"), "the 'plain' row"),
        (("16 tests\ncollected", "15 tests\ncollected"), "16 tests collected"),
        (("3 lost", "4 lost"), "raise vs plain: 3 lost"),
        (("`NotLoadedError` | 2", "`NotLoadedError` | 3"), "error table"),
        (("| `LoadError` | 1 | the load's own exception type |\n", ""), "error table"),
    ],
)
def test_the_readme_count_check_finds_a_drifted_count(
    edit: tuple[str, str], problem: str | None
) -> None:
    """The checker, on made-up counts: quick, without distilabel's suite."""
    assert edit[0] in MADE_UP_README
    problems = readme_count_problems(_made_up(3), MADE_UP_README.replace(*edit))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1, problems
        assert problem in problems[0], problems
