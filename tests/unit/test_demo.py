"""The README's demo runs and tells the whole story."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_output() -> str:
    """What `python -m stepfsm demo --color never` prints (it must exit 0); run once."""
    result = subprocess.run(
        [sys.executable, "-m", "stepfsm", "demo", "--color", "never"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_tables(out: str) -> list[list[list[str]]]:
    """Every ``stepfsm.status()`` table printed in ``out``: its rows, each a list of cells."""
    tables: list[list[list[str]]] = []
    lines = out.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^\s*step\s{2,}class\s{2,}state\s{2,}", line):
            rows = []
            for row in lines[index + 1 :]:
                if not row.strip():
                    break
                if set(row.strip()) <= {"-", " "}:  # the rule under the header
                    continue
                rows.append(re.split(r"\s{2,}", row.strip()))
            tables.append(rows)
    return tables


def test_demo_runs_and_shows_each_section(demo_output: str) -> None:
    """`python -m stepfsm demo` exits 0 and prints every section with its outcome."""
    for expected in (
        'class TinyLLM(stepfsm.Stateful, guard=("generate",)):',
        "AlreadyLoadedError: TinyLLM 'gen_0' is already loaded",
        "NotLoadedError: TinyLLM 'gen_1' is not loaded",
        "load() ran 1 time; 1 thread loaded, 15 waited and reused it; state: loaded",
        "LoadError: load() of TinyLLM 'flaky' failed with OSError",
        "StepFailedError:",
        "KeyboardInterrupt",
        "state: failed (never stuck in 'loading')",
        "state: unloaded, weights: None",
        "finish_load",
        "stepfsm.unload_all()",
    ):
        assert expected in demo_output, expected
    assert "\033[" not in demo_output  # --color never


def test_demo_status_table_shows_only_classes_a_user_could_write(demo_output: str) -> None:
    """No private name (``_Something``) in the status table: only classes a user would have.

    The Ctrl-C section used a private helper class, which then showed up in
    ``stepfsm.status()`` (issue 14, item 7).
    """
    tables = status_tables(demo_output)
    assert tables, f"no status table in the demo's output:\n{demo_output}"
    rows = [row for table in tables for row in table]
    for row in rows:
        assert len(row) == 7, f"not a step/class/state/since/load/holders/holds row: {row}"
        shown_class = row[0].split(" ")[0]  # the step's display name starts with its class
        assert not shown_class.startswith("_"), f"a private class in the table: {row}"
        assert not row[1].startswith("_"), f"a private class in the table: {row}"
    private = re.findall(r"(?<![\w'])_[A-Za-z]\w*", "\n".join("  ".join(r) for r in rows))
    assert not private, f"private names in the status table: {private}"
    names = {row[0] for row in rows}
    for step in ("gen_0", "gen_1", "racer", "flaky", "slow"):  # every step of sections 1-5
        assert f"TinyLLM '{step}'" in names, f"{step!r} missing from the table: {sorted(names)}"
