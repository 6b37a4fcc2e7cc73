"""The generated diagrams, checked by the real renderers.

* dot text is rendered by the real Graphviz ``dot`` program, which must accept
  it without a single warning, and the SVG it draws must show the table and
  the highlight.
* mermaid text is parsed by the real mermaid parser (the ``mermaid`` npm
  package under Node, with jsdom standing in for the browser), through
  ``mermaid_parse.mjs`` beside this file. The parser's own database must hold
  the table's states and transitions and the highlight classes.

Locally each test skips when its tool is missing; with ``CI=true`` it fails
instead. ``python3 dev.py test`` installs the tools (``apt-get install
graphviz``; ``npm install --prefix .cache/node mermaid jsdom``) and points
``STEPFSM_NODE_MODULES`` at ``.cache/node/node_modules``, which is also the
default. If a real renderer rejects something, fix the generator in
``stepfsm/diagrams.py``, not the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import stepfsm
from stepfsm.registry import Status, StepStatus
from stepfsm.states import TRANSITIONS, State
from tests.fakes import Step
from tests.support import require

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PARSER = HERE / "mermaid_parse.mjs"
NODE_MODULES = Path(
    os.environ.get("STEPFSM_NODE_MODULES") or REPO / ".cache" / "node" / "node_modules"
)
SVG = "{http://www.w3.org/2000/svg}"


def targets() -> dict[str, tuple[object, set[str], tuple[str, str, str] | None]]:
    """Each kind of target with the states it highlights and its marked edge."""
    loaded = Step("loaded")
    stepfsm.lifecycle(loaded).load()
    failed = Step("failed", fail=True)
    with pytest.raises(stepfsm.LoadError, match="CUDA out of memory"):
        stepfsm.lifecycle(failed).load()
    unloaded = Step("unloaded_again")
    stepfsm.lifecycle(unloaded).load()
    stepfsm.lifecycle(unloaded).unload()
    status = Status(
        [
            StepStatus("Step 'a'", "Step", State.LOADING, None, None, 0),
            StepStatus("Step 'b'", "Step", State.LOADED, None, 1.0, 2),
        ]
    )
    return {
        "lifecycle": (None, set(), None),
        "class": (Step, set(), None),
        "loaded object": (loaded, {"loaded"}, ("loading", "loaded", "finish_load (last)")),
        "failed object": (failed, {"failed"}, ("loading", "failed", "fail (last)")),
        "unloaded object": (
            unloaded,
            {"unloaded"},
            ("unloading", "unloaded", "finish_unload (last)"),
        ),
        "status": (status, {"loading", "loaded"}, None),
    }


TARGETS = ["lifecycle", "class", "loaded object", "failed object", "unloaded object", "status"]


def table_edges() -> set[tuple[str, str, str]]:
    """(source, dest, trigger) for every edge of the transition table."""
    return {(s.value, t.dest.value, t.trigger) for t in TRANSITIONS for s in t.sources}


def unmarked(edges: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    return {(a, b, label.replace(" (last)", "")) for a, b, label in edges}


# ---------------------------------------------------------------- Graphviz dot


def dot(args: list[str], text: str) -> subprocess.CompletedProcess[bytes]:
    require(shutil.which("dot") is not None, "the Graphviz 'dot' program")
    return subprocess.run(
        ["dot", *args], input=text.encode(), capture_output=True, timeout=60, check=False
    )


@pytest.mark.parametrize("name", TARGETS)
def test_real_dot_renders_the_dot_text_without_warnings(name: str) -> None:
    """The real dot program accepts each generated dot text with an empty stderr."""
    target, _, _ = targets()[name]
    text = stepfsm.diagram(target, format="dot")
    for fmt in ("svg", "png"):
        done = dot([f"-T{fmt}"], text)
        assert done.returncode == 0, f"dot -T{fmt} failed: {done.stderr.decode()}"
        assert done.stderr == b"", f"dot -T{fmt} warned: {done.stderr.decode()}"
        assert done.stdout, f"dot -T{fmt} drew nothing"


@pytest.mark.parametrize("name", TARGETS)
def test_real_dot_draws_the_table_and_the_highlight(name: str) -> None:
    """The SVG that dot draws has the table's edges and highlights exactly the current states."""
    target, current, last = targets()[name]
    done = dot(["-Tsvg"], stepfsm.diagram(target, format="dot"))
    assert done.returncode == 0, done.stderr.decode()
    graph = ET.fromstring(done.stdout).find(f"{SVG}g")
    assert graph is not None, "dot's SVG has no graph group"
    edges: set[tuple[str, str, str]] = set()
    filled: set[str] = set()
    blue: set[tuple[str, str, str]] = set()
    for group in graph.findall(f"{SVG}g"):
        title = group.findtext(f"{SVG}title") or ""
        label = " ".join(t.text or "" for t in group.findall(f"{SVG}text"))
        shapes = [el for el in group if el.tag in (f"{SVG}path", f"{SVG}polygon")]
        if group.get("class") == "edge" and not title.startswith("__start__"):
            source, _, dest = title.partition("->")
            edges.add((source, dest, label))
            if any(el.get("stroke") == "blue" for el in shapes):
                blue.add((source, dest, label))
        elif group.get("class") == "node" and any(el.get("fill") == "darksalmon" for el in shapes):
            filled.add(title)
    assert unmarked(edges) == table_edges(), f"{name}: dot drew {sorted(edges)}"
    assert filled == current, f"{name}: dot filled {filled}, expected {current}"
    assert blue == ({last} if last else set()), f"{name}: blue edges {blue}, expected {last}"


def test_committed_dot_file_renders_with_real_dot() -> None:
    """diagrams/lifecycle.dot renders with the real dot program without warnings."""
    done = dot(["-Tsvg"], (REPO / "diagrams" / "lifecycle.dot").read_text(encoding="utf-8"))
    assert (done.returncode, done.stderr) == (0, b""), done.stderr.decode()


# ---------------------------------------------------------------- mermaid


def mermaid_parse(*texts: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Parse each text with the real mermaid parser; return its report for each."""
    require(shutil.which("node") is not None, "Node.js ('node')")
    require(
        (NODE_MODULES / "mermaid").is_dir() and (NODE_MODULES / "jsdom").is_dir(),
        f"the npm packages mermaid and jsdom in {NODE_MODULES}",
    )
    files = []
    for i, text in enumerate(texts):
        path = tmp_path / f"diagram{i}.mmd"
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    done = subprocess.run(
        ["node", str(PARSER), str(NODE_MODULES), *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), f"the mermaid parser could not run: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_parser_helper_rejects_broken_mermaid(tmp_path: Path) -> None:
    """The helper really parses: a broken diagram is reported as a parse error."""
    (report,) = mermaid_parse("stateDiagram-v2\n    a --> : b\n", tmp_path=tmp_path)
    assert report["ok"] is False, report
    assert "Parse error" in report["error"], report


def test_real_mermaid_parses_every_target(tmp_path: Path) -> None:
    """Mermaid's parser accepts every target's text and holds its states, edges and classes."""
    cases = targets()
    texts = [stepfsm.diagram(cases[name][0], format="mermaid") for name in TARGETS]
    reports = mermaid_parse(*texts, tmp_path=tmp_path)
    assert len(reports) == len(TARGETS)
    for name, report in zip(TARGETS, reports, strict=True):
        _, current, last = cases[name]
        assert report["ok"], f"{name}: mermaid rejected the text: {report.get('error')}"
        assert report["diagramType"] == "stateDiagram", report
        relations = {tuple(r) for r in report["relations"]}
        assert ("root_start", "unloaded", "") in relations, f"{name}: no start marker"
        edges = relations - {("root_start", "unloaded", "")}
        assert unmarked(edges) == table_edges(), f"{name}: mermaid holds {sorted(edges)}"
        marked = {e for e in edges if e[2].endswith("(last)")}
        assert marked == ({last} if last else set()), f"{name}: marked {marked}"
        states = report["states"]
        assert set(states) - {"root_start"} == {s.value for s in State}, states
        with_current = {s for s, classes in states.items() if "current" in classes}
        assert with_current == current, f"{name}: current class on {with_current}"
        transient = {s for s, classes in states.items() if "transient" in classes}
        assert transient == {"loading", "unloading"}, f"{name}: transient on {transient}"
        if current:
            assert "fill:darksalmon" in report["classDefs"]["current"], report["classDefs"]


def test_real_mermaid_reads_the_status_counts(tmp_path: Path) -> None:
    """Mermaid's parser reads the per-state counts of a status() diagram as state labels."""
    status = targets()["status"][0]
    (report,) = mermaid_parse(stepfsm.diagram(status), tmp_path=tmp_path)
    assert report["labels"] == {"loading": ["loading (1)"], "loaded": ["loaded (1)"]}, report


def test_committed_mermaid_file_parses_with_real_mermaid(tmp_path: Path) -> None:
    """diagrams/lifecycle.mmd is accepted by the real mermaid parser."""
    text = (REPO / "diagrams" / "lifecycle.mmd").read_text(encoding="utf-8")
    (report,) = mermaid_parse(text, tmp_path=tmp_path)
    assert report["ok"], report.get("error")
