"""State diagrams: every format, highlight, stability, no-``dot`` behaviour, freshness.

The three drawn formats are read back into one summary (title, states, edges,
highlighted states, last transition) by small format-specific readers, so a
test can say "the same thing is drawn in every format". The real renderers
(the ``dot`` program, mermaid's own parser) are exercised in
``tests/integration/test_diagram_renderers.py``.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import stepfsm
from stepfsm import diagrams
from stepfsm.registry import Status, StepStatus
from stepfsm.states import INITIAL, TRANSITIONS, State
from tests.fakes import Step
from tests.support import require, require_dot

REPO = Path(__file__).resolve().parents[2]
DIAGRAMS = REPO / "diagrams"
REGENERATE = "python -m stepfsm diagram --output-dir diagrams"


class NotAStep:
    """A class that is not stateful."""


# ---------------------------------------------------------------- readers


@dataclass(frozen=True)
class Drawn:
    """What a diagram shows, read back from one format."""

    title: str
    states: frozenset[str]
    initial: str
    edges: dict[tuple[str, str], str]
    current: frozenset[str]
    transient: frozenset[str]
    last: tuple[str, str] | None
    labels: dict[str, str]


def expected_edges() -> dict[tuple[str, str], str]:
    """The edges the transition table calls for, read straight from the table."""
    edges: dict[tuple[str, str], list[str]] = {}
    for row in TRANSITIONS:
        for source in row.sources:
            edges.setdefault((source.value, row.dest.value), []).append(row.trigger)
    return {pair: " | ".join(triggers) for pair, triggers in edges.items()}


def read_mermaid(text: str) -> Drawn:
    """Read mermaid text produced by stepfsm back into a :class:`Drawn`."""
    title = json.loads(re.search(r"^title: (.*)$", text, re.M).group(1))  # type: ignore[union-attr]
    edges: dict[tuple[str, str], str] = {}
    initial = ""
    classes: dict[str, set[str]] = {}
    labels: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r" {4}\[\*\] --> (\w+)", line):
            initial = m.group(1)
        elif m := re.fullmatch(r" {4}(\w+) --> (\w+): (.+)", line):
            edges[m.group(1), m.group(2)] = m.group(3)
        elif m := re.fullmatch(r" {4}class ([\w,]+) (\w+)", line):
            for state in m.group(1).split(","):
                classes.setdefault(m.group(2), set()).add(state)
        elif m := re.fullmatch(r' {4}state (".*") as (\w+)', line):
            labels[m.group(2)] = json.loads(m.group(1))
    return _drawn(title, initial, edges, classes, labels)


_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\]\s]+)')


def _attrs(text: str | None) -> dict[str, str]:
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTR.findall(text or "")}


def read_dot(text: str) -> Drawn:
    """Read dot text produced by stepfsm back into a :class:`Drawn`."""
    title = _attrs(re.search(r"^ {4}graph \[(.*)\];$", text, re.M).group(1))["label"]  # type: ignore[union-attr]
    edges: dict[tuple[str, str], str] = {}
    initial = ""
    classes: dict[str, set[str]] = {}
    labels: dict[str, str] = {}
    last_classes: dict[str, set[str]] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r' {4}"(\w+)"(?: \[(.*)\])?;', line):
            attrs = _attrs(m.group(2))
            if attrs.get("fillcolor") == "darksalmon":
                classes.setdefault("current", set()).add(m.group(1))
            if "dashed" in attrs.get("style", ""):
                classes.setdefault("transient", set()).add(m.group(1))
            if "label" in attrs:
                labels[m.group(1)] = attrs["label"]
        elif m := re.fullmatch(r' {4}__start__ -> "(\w+)";', line):
            initial = m.group(1)
        elif m := re.fullmatch(r' {4}"(\w+)" -> "(\w+)" \[(.*)\];', line):
            attrs = _attrs(m.group(3))
            edges[m.group(1), m.group(2)] = attrs["label"]
            if attrs.get("color") == "blue":
                last_classes.setdefault("last", set()).add(f"{m.group(1)}->{m.group(2)}")
    return _drawn(title, initial, edges, classes, labels)


_SVG = "{http://www.w3.org/2000/svg}"


def read_svg(text: str) -> Drawn:
    """Read an SVG rendered by Graphviz from stepfsm's dot text into a :class:`Drawn`."""
    root = ET.fromstring(text.encode())
    graph = root.find(f"{_SVG}g")
    assert graph is not None, "no graph group in the SVG"
    title_el = graph.find(f"{_SVG}text")
    title = title_el.text if title_el is not None and title_el.text else ""
    edges: dict[tuple[str, str], str] = {}
    initial = ""
    classes: dict[str, set[str]] = {}
    labels: dict[str, str] = {}
    for group in graph.findall(f"{_SVG}g"):
        name = group.findtext(f"{_SVG}title") or ""
        texts = " ".join(t.text or "" for t in group.findall(f"{_SVG}text"))
        shapes = [el for el in group if el.tag in (f"{_SVG}path", f"{_SVG}ellipse")]
        if group.get("class") == "node" and name != "__start__":
            if any(el.get("fill") == "darksalmon" for el in shapes):
                classes.setdefault("current", set()).add(name)
            if any(el.get("stroke-dasharray") for el in shapes):
                classes.setdefault("transient", set()).add(name)
            if texts != name:
                labels[name] = texts
        elif group.get("class") == "edge":
            source, _, dest = name.partition("->")
            if source == "__start__":
                initial = dest
            else:
                edges[source, dest] = texts
    return _drawn(title, initial, edges, classes, labels)


def _drawn(
    title: str,
    initial: str,
    edges: dict[tuple[str, str], str],
    classes: dict[str, set[str]],
    labels: dict[str, str],
) -> Drawn:
    marked = [pair for pair, label in edges.items() if "(last)" in label]
    assert len(marked) <= 1, f"more than one edge is marked as the last transition: {marked}"
    return Drawn(
        title=title,
        states=frozenset(s for pair in edges for s in pair) | {initial},
        initial=initial,
        edges=edges,
        current=frozenset(classes.get("current", ())),
        transient=frozenset(classes.get("transient", ())),
        last=marked[0] if marked else None,
        labels=labels,
    )


READERS = {"mermaid": read_mermaid, "dot": read_dot, "svg": read_svg}


def drawn(target: object, fmt: str, **kwargs: Any) -> Drawn:
    """Draw ``target`` in ``fmt`` and read it back."""
    if fmt == "svg":
        require_dot()
    text = stepfsm.diagram(target, format=fmt, **kwargs)
    assert isinstance(text, str), f"{fmt} should be text, got {type(text).__name__}"
    return READERS[fmt](text)


def loaded_step(name: str = "gen_0") -> Step:
    step = Step(name)
    stepfsm.lifecycle(step).load()
    return step


ALL_TEXT = pytest.mark.parametrize("fmt", ["mermaid", "dot", "svg"])


# ---------------------------------------------------------------- content


@ALL_TEXT
def test_lifecycle_diagram_draws_every_state_and_trigger_of_the_table(fmt: str) -> None:
    """The lifecycle diagram has exactly the table's states and edges, and no highlight."""
    seen = drawn(None, fmt)
    assert seen.edges == expected_edges(), f"{fmt} edges differ from the table"
    assert seen.states == {s.value for s in State}, f"{fmt} states differ from State"
    assert seen.initial == INITIAL.value, f"{fmt} does not start at {INITIAL.value}"
    assert seen.transient == {"loading", "unloading"}, f"{fmt} marks the wrong transient states"
    assert seen.current == frozenset(), f"{fmt} highlights {seen.current} with no object"
    assert seen.last is None, f"{fmt} marks a last transition with no object"
    assert seen.title == "stepfsm lifecycle", f"{fmt} title is {seen.title!r}"


@ALL_TEXT
def test_class_diagram_is_titled_with_the_class_and_highlights_nothing(fmt: str) -> None:
    """A stateful class draws the table under the class's name, with nothing highlighted."""
    seen = drawn(Step, fmt)
    assert seen.title == "Step lifecycle", f"{fmt} title is {seen.title!r}"
    assert seen.edges == expected_edges(), f"{fmt} edges differ from the table"
    assert seen.current == frozenset(), f"{fmt} highlights {seen.current} for a class"


@ALL_TEXT
def test_live_object_highlights_its_current_state_and_last_transition(fmt: str) -> None:
    """A loaded object's diagram highlights 'loaded' and marks finish_load as last."""
    seen = drawn(loaded_step(), fmt)
    assert seen.current == {"loaded"}, f"{fmt} highlights {set(seen.current)}, not loaded"
    assert seen.last == ("loading", "loaded"), f"{fmt} marks {seen.last} as last"
    assert seen.edges["loading", "loaded"] == "finish_load (last)", f"{fmt}: {seen.edges}"
    assert seen.title == "Step 'gen_0' lifecycle: loaded", f"{fmt} title is {seen.title!r}"
    unmarked = {pair: label.replace(" (last)", "") for pair, label in seen.edges.items()}
    assert unmarked == expected_edges(), f"{fmt} edges differ from the table"


@ALL_TEXT
def test_failed_object_highlights_failed_and_marks_the_fail_transition(fmt: str) -> None:
    """A step whose load raised is drawn in 'failed', with fail from loading marked last."""
    step = Step("broken", fail=True)
    with pytest.raises(stepfsm.LoadError, match="CUDA out of memory"):
        stepfsm.lifecycle(step).load()
    seen = drawn(step, fmt)
    assert seen.current == {"failed"}, f"{fmt} highlights {set(seen.current)}, not failed"
    assert seen.last == ("loading", "failed"), f"{fmt} marks {seen.last} as last"
    assert seen.edges["loading", "failed"] == "fail (last)", f"{fmt}: {seen.edges}"


@ALL_TEXT
def test_unused_object_highlights_the_initial_state_with_no_last_transition(fmt: str) -> None:
    """An object that never loaded is drawn in 'unloaded' with no transition marked."""
    seen = drawn(Step("fresh"), fmt)
    assert seen.current == {"unloaded"}, f"{fmt} highlights {set(seen.current)}"
    assert seen.last is None, f"{fmt} marks {seen.last} with an empty history"


def test_a_last_transition_that_does_not_lead_to_the_state_is_not_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If state and history were read mid-transition and disagree, no edge is marked last."""
    step = loaded_step()
    stale = stepfsm.lifecycle(step).history[-1]._replace(dest=State.LOADING)
    monkeypatch.setattr(stepfsm.Lifecycle, "history", property(lambda self: (stale,)))
    seen = read_mermaid(stepfsm.diagram(step))
    assert (seen.current, seen.last) == ({"loaded"}, None), seen


@ALL_TEXT
def test_all_formats_draw_the_same_thing(fmt: str) -> None:
    """Mermaid, dot and SVG agree on title, states, edges, highlight and last transition."""
    step = loaded_step("same")
    stepfsm.lifecycle(step).unload()
    assert drawn(step, fmt) == drawn(step, "mermaid"), f"{fmt} disagrees with mermaid"


def test_lifecycle_target_draws_like_its_object() -> None:
    """diagram(lifecycle(obj)) is the same text as diagram(obj)."""
    step = loaded_step()
    for fmt in ("mermaid", "dot"):
        same = stepfsm.diagram(stepfsm.lifecycle(step), format=fmt)
        assert same == stepfsm.diagram(step, format=fmt), f"{fmt} differs for the lifecycle"


def test_lifecycle_of_a_collected_object_is_still_drawn() -> None:
    """A lifecycle whose object was garbage-collected is drawn with a generic title."""
    step = Step()
    life = stepfsm.lifecycle(step)
    del step
    gc.collect()
    assert life.step is None, "the step should have been collected"
    seen = read_mermaid(stepfsm.diagram(life))
    assert seen.title == "stepfsm lifecycle: unloaded", f"title is {seen.title!r}"


@ALL_TEXT
def test_highlight_false_draws_a_live_object_like_its_class(fmt: str) -> None:
    """highlight=False leaves out the current state and the last transition."""
    seen = drawn(loaded_step(), fmt, highlight=False)
    assert seen.current == frozenset(), f"{fmt} still highlights {set(seen.current)}"
    assert seen.last is None, f"{fmt} still marks {seen.last}"
    assert seen.title == "Step 'gen_0' lifecycle", f"{fmt} title is {seen.title!r}"


@ALL_TEXT
def test_status_diagram_counts_steps_per_state(fmt: str) -> None:
    """diagram(status()) labels each occupied state with its count and highlights it."""
    rows = [
        StepStatus("Step 'a'", "Step", State.LOADED, None, 0.1, 0),
        StepStatus("Step 'b'", "Step", State.LOADED, None, 0.2, 1),
        StepStatus("Step 'c'", "Step", State.FAILED, None, None, 0),
    ]
    seen = drawn(Status(rows), fmt)
    assert seen.current == {"loaded", "failed"}, f"{fmt} highlights {set(seen.current)}"
    assert seen.labels == {"loaded": "loaded (2)", "failed": "failed (1)"}, f"{fmt}: {seen.labels}"
    assert seen.title == "stepfsm status: 3 live steps", f"{fmt} title is {seen.title!r}"
    plain = drawn(Status(rows[:1]), fmt, highlight=False)
    assert (plain.current, plain.labels) == (frozenset(), {}), f"{fmt} highlights without asking"
    assert plain.title == "stepfsm status: 1 live step", f"{fmt} title is {plain.title!r}"


def test_status_function_result_is_a_valid_target() -> None:
    """The real status() can be drawn and counts a loaded step."""
    step = loaded_step("counted")
    text = stepfsm.diagram(stepfsm.status(), format="mermaid")
    assert re.search(r'state "loaded \(\d+\)" as loaded', text), text
    assert stepfsm.lifecycle(step).state is State.LOADED


def test_names_are_quoted_safely_in_dot_and_mermaid() -> None:
    """A step name with quotes and backslashes cannot break the dot or mermaid text."""
    step = loaded_step('say "hi" \\ bye')
    dot = stepfsm.diagram(step, format="dot")
    assert 'label="Step \'say \\"hi\\" \\\\\\\\ bye\' lifecycle: loaded"' in dot, dot
    title = read_mermaid(stepfsm.diagram(step)).title
    assert title == "Step 'say \"hi\" \\\\ bye' lifecycle: loaded", title


def test_display_name_never_contains_an_address() -> None:
    """Objects without a string name are titled by class only, so output stays stable."""

    class Slotted:
        __slots__ = ()

    assert diagrams._display_name(Slotted()) == "Slotted"
    assert diagrams._display_name(Step(name="")) == "Step"
    assert diagrams._display_name(Step(name="x")) == "Step 'x'"


# ---------------------------------------------------------------- stability


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_text_output_is_byte_identical_for_the_same_input(fmt: str) -> None:
    """Drawing the same target twice gives the same bytes, and the text ends with a newline."""
    step = loaded_step()
    for target in (None, Step, step):
        first = stepfsm.diagram(target, format=fmt)
        assert first == stepfsm.diagram(target, format=fmt), f"{fmt} of {target!r} is unstable"
        assert first.endswith("\n"), f"{fmt} text does not end with a newline"
        assert not re.search(r"[ \t]$", first, re.M), f"{fmt} text has trailing whitespace"


def test_two_objects_in_the_same_state_draw_the_same_text() -> None:
    """Diagrams depend on class, name and state, never on the object's address."""
    assert stepfsm.diagram(loaded_step("x")) == stepfsm.diagram(loaded_step("x"))


def test_svg_output_is_identical_for_the_same_input() -> None:
    """Rendering the same dot text twice gives the same SVG."""
    require_dot()
    assert stepfsm.diagram(format="svg") == stepfsm.diagram(format="svg")


def test_edges_match_what_transitions_graph_machine_draws() -> None:
    """The edges agree with transitions' own GraphMachine (mermaid engine) for the same table."""
    from transitions.extensions.diagrams import GraphMachine

    class Model:
        pass

    model = Model()
    GraphMachine(
        model=model,
        states=[s.value for s in State],
        initial=INITIAL.value,
        transitions=[
            {"trigger": t.trigger, "source": [s.value for s in t.sources], "dest": t.dest.value}
            for t in TRANSITIONS
        ],
        auto_transitions=False,
        graph_engine="mermaid",
    )
    theirs = model.get_graph().source  # type: ignore[attr-defined]
    their_edges = {
        (m.group(1), m.group(2)): m.group(3)
        for m in re.finditer(r"^\s*(\w+) --> (\w+): (.+)$", theirs, re.M)
    }
    assert their_edges == read_mermaid(stepfsm.diagram()).edges


# ---------------------------------------------------------------- formats and errors


def test_png_is_png_bytes() -> None:
    """format='png' returns the bytes of a PNG image."""
    require_dot()
    png = stepfsm.diagram(loaded_step(), format="png")
    assert isinstance(png, bytes), f"png should be bytes, got {type(png).__name__}"
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), f"not a PNG: {png[:16]!r}"


def test_unknown_format_is_refused_with_the_choices() -> None:
    """An unknown format raises DiagramError naming the formats that exist."""
    with pytest.raises(stepfsm.DiagramError, match=r"unknown diagram format 'jpeg'.*mermaid, dot"):
        stepfsm.diagram(format="jpeg")


@pytest.mark.parametrize("target", [NotAStep, NotAStep(), 3, "Step"])
def test_a_target_that_is_not_stateful_is_refused(target: object) -> None:
    """A class or object that is not stateful raises DiagramError saying how to make it so."""
    with pytest.raises(stepfsm.DiagramError, match=r"it is not stateful.*@stepfsm\.stateful"):
        stepfsm.diagram(target)


def test_diagram_error_is_a_stepfsm_error() -> None:
    """DiagramError can be caught as StepFSMError."""
    assert issubclass(stepfsm.DiagramError, stepfsm.StepFSMError)


@pytest.mark.usefixtures("no_dot")
@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_without_dot_svg_and_png_raise_a_clear_error(fmt: str) -> None:
    """With no dot program on PATH, SVG/PNG raise DiagramError saying how to install Graphviz."""
    with pytest.raises(stepfsm.DiagramError) as caught:
        stepfsm.diagram(format=fmt)
    message = str(caught.value)
    assert f"{fmt.upper()} output needs the Graphviz 'dot' program" in message, message
    for hint in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz"):
        assert hint in message, f"{hint!r} missing from: {message}"
    assert 'format="mermaid"' in message, message


@pytest.mark.usefixtures("no_dot")
def test_without_dot_text_formats_still_work() -> None:
    """With no dot program on PATH, mermaid and dot text are drawn as usual."""
    step = loaded_step()
    assert read_mermaid(stepfsm.diagram(step)).current == {"loaded"}
    assert read_dot(stepfsm.diagram(step, format="dot")).current == {"loaded"}


def test_without_the_graphviz_package_svg_says_to_install_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With dot but no graphviz package, SVG raises DiagramError naming stepfsm[diagrams]."""
    monkeypatch.setattr(diagrams, "dot_available", lambda: True)
    monkeypatch.setitem(sys.modules, "graphviz", None)  # makes `import graphviz` fail
    with pytest.raises(stepfsm.DiagramError, match=r"pip install 'stepfsm\[diagrams\]'"):
        stepfsm.diagram(format="svg")
    assert stepfsm.diagram(format="dot").startswith("// Generated by stepfsm")


@pytest.mark.usefixtures("no_dot")
def test_dot_vanishing_between_check_and_render_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the graphviz package cannot run dot after all, the error says to install Graphviz."""
    require("graphviz" in sys.modules or _importable("graphviz"), "the Python package 'graphviz'")
    monkeypatch.setattr(diagrams, "dot_available", lambda: True)
    with pytest.raises(stepfsm.DiagramError, match=r"could not be run.*apt-get install graphviz"):
        stepfsm.diagram(format="png")


@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_a_failing_dot_program_is_reported_with_its_message(
    fmt: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """When dot rejects its input, DiagramError carries dot's own error text (not printed)."""
    require_dot()
    monkeypatch.setattr(diagrams, "_render_dot", lambda graph: "digraph {")
    pattern = rf"'dot' program failed to render {fmt.upper()}: .*syntax error"
    with pytest.raises(stepfsm.DiagramError, match=pattern):
        stepfsm.diagram(format=fmt)
    assert capfd.readouterr().err == "", "dot's stderr leaked to the terminal"


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------- Jupyter


def test_mimebundle_is_svg_when_dot_is_available() -> None:
    """With dot, a lifecycle's Jupyter bundle is an SVG with its state highlighted."""
    require_dot()
    bundle = stepfsm.lifecycle(loaded_step())._repr_mimebundle_()
    assert list(bundle) == ["image/svg+xml"], f"bundle has {list(bundle)}"
    assert read_svg(bundle["image/svg+xml"]).current == {"loaded"}


@pytest.mark.usefixtures("no_dot")
def test_mimebundle_is_mermaid_markdown_without_dot() -> None:
    """Without dot, the bundle is a fenced mermaid block that highlights the current state."""
    bundle = diagrams.mimebundle(stepfsm.lifecycle(loaded_step()))
    assert list(bundle) == ["text/markdown"], f"bundle has {list(bundle)}"
    markdown = bundle["text/markdown"]
    assert markdown.startswith("```mermaid\n---\n"), markdown
    assert markdown.endswith("\n```\n"), markdown
    assert read_mermaid(markdown).current == {"loaded"}


# ---------------------------------------------------------------- imports and files


@pytest.mark.slow
def test_import_stepfsm_and_text_diagrams_never_import_graphviz() -> None:
    """import stepfsm, and drawing mermaid or dot text, leave the graphviz package unimported."""
    code = (
        "import sys, stepfsm\n"
        "assert 'graphviz' not in sys.modules, 'import stepfsm imported graphviz'\n"
        "stepfsm.diagram(format='mermaid'); stepfsm.diagram(format='dot')\n"
        "assert 'graphviz' not in sys.modules, 'text diagrams imported graphviz'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("name", "fmt"), [("lifecycle.mmd", "mermaid"), ("lifecycle.dot", "dot")])
def test_committed_text_diagrams_are_up_to_date(name: str, fmt: str) -> None:
    """diagrams/lifecycle.mmd and .dot are exactly what stepfsm generates now."""
    committed = (DIAGRAMS / name).read_text(encoding="utf-8")
    assert committed == stepfsm.diagram(format=fmt), (
        f"diagrams/{name} is stale; regenerate with: {REGENERATE}"
    )


def _graphviz_version(svg: str) -> str | None:
    found = re.search(r"Generated by graphviz version (\S+)", svg)
    return found.group(1) if found else None


def test_committed_svg_is_up_to_date() -> None:
    """diagrams/lifecycle.svg matches a fresh render (exactly, with the same Graphviz version)."""
    require_dot()
    committed = (DIAGRAMS / "lifecycle.svg").read_text(encoding="utf-8")
    fresh = stepfsm.diagram(format="svg")
    if _graphviz_version(committed) == _graphviz_version(fresh):
        assert committed == fresh, f"diagrams/lifecycle.svg is stale; regenerate with: {REGENERATE}"
    else:  # another Graphviz lays out differently: compare what is drawn instead
        assert read_svg(committed) == read_svg(fresh), (
            f"diagrams/lifecycle.svg is stale; regenerate with: {REGENERATE}"
        )


def test_committed_files_are_the_output_dir_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The regenerate command writes exactly the files in diagrams/ (svg only when dot exists)."""
    from stepfsm.cli import main

    if shutil.which("dot") is None or not _importable("graphviz"):
        require(False, "the Graphviz 'dot' program and the 'graphviz' package")
    assert main(["diagram", "--output-dir", str(tmp_path)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in DIAGRAMS.iterdir())
    for name in ("lifecycle.mmd", "lifecycle.dot"):
        assert (tmp_path / name).read_bytes() == (DIAGRAMS / name).read_bytes(), name


@pytest.mark.parametrize("doc", ["README.md", "docs/diagrams.md"])
def test_lifecycle_diagrams_pasted_into_the_docs_are_up_to_date(doc: str) -> None:
    """Every mermaid block titled 'stepfsm lifecycle' in the docs is the generated text."""
    path = REPO / doc
    if not path.exists():
        pytest.skip(f"{doc} does not exist")
    blocks = re.findall(r"^```mermaid\n(.*?)^```$", path.read_text(encoding="utf-8"), re.M | re.S)
    generated = stepfsm.diagram()
    for block in blocks:
        if 'title: "stepfsm lifecycle"' in block:
            assert block == generated, (
                f"the lifecycle diagram in {doc} is stale; paste {DIAGRAMS.name}/lifecycle.mmd"
            )
