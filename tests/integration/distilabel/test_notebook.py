"""A real Jupyter kernel (nbclient + ipykernel): re-running cells, and examples/notebook.ipynb.

The kernel is started from a kernelspec written for the test that runs this
very interpreter, with this repository on its path, so the kernel sees the
same stepfsm and distilabel as the tests. Cells are executed one by one with
``execute_cell``, so a cell can be run a second time, as a user does.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from tests.integration.distilabel import require
from tests.integration.kernel import Session

require("distilabel")

nbformat = require("nbformat")
require("ipykernel")
NotebookClient = require("nbclient").NotebookClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
KERNEL = "stepfsm-distilabel-test"
EXAMPLE = REPO / "examples" / "notebook.ipynb"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline_cache: Path) -> str:
    """A kernelspec running this interpreter, with every Jupyter and cache directory in tmp."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "stepfsm test kernel", "language": "python"}),
        encoding="utf-8",
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's migration warning
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    return KERNEL


def client_for(notebook: Any, kernel: str, tmp_path: Path, **options: Any) -> NotebookClient:
    """An nbclient client for ``notebook`` on ``kernel``, run in tmp_path."""
    return NotebookClient(
        notebook,
        kernel_name=kernel,
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
        **options,
    )


def text(outputs: list[Any], kind: str) -> str:
    """All text of the given output kind: ``stderr``/``stdout`` streams, or ``result``."""
    parts = []
    for output in outputs:
        if output.output_type == "stream" and output.name == kind:
            parts.append(output.text)
        elif output.output_type == "execute_result" and kind == "result":
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown(outputs: list[Any]) -> str:
    """Everything a cell shows, as plain text (ANSI colours removed).

    ``import distilabel`` installs rich's traceback handler, which in IPython
    shows errors as a rich ``display_data`` instead of an ``error`` output.
    """
    parts = []
    for output in outputs:
        if output.output_type == "error":
            parts += [output.ename, output.evalue, *output.traceback]
        elif output.output_type == "stream":
            parts.append(output.text)
        else:
            parts.append(output.get("data", {}).get("text/plain", ""))
    return ANSI.sub("", "\n".join(parts))


def compact(shown_text: str) -> str:
    """``shown_text`` without whitespace and box drawing, so wrapped lines join up again."""
    return re.sub(r"[\s\u2500-\u257f]+", "", shown_text)


CELLS = {
    "setup": (
        "import stepfsm\n"
        "import stepfsm.integrations.distilabel as sd\n"
        "from distilabel.pipeline import Pipeline\n"
        "from distilabel.steps.tasks import TextGeneration\n"
        "from tests.integration.distilabel.offline import EchoLLM, held\n"
        "sd.install()"
    ),
    "build and load": "llm = EchoLLM()\nllm.load()",
    "load": "llm.load()",
    "check": "print(len(held()), stepfsm.state(llm).value)",
    "warn": 'stepfsm.configure(on_repeat="warn")',
    "use in a pipeline": (
        'with Pipeline(name="stepfsm-kernel"):\n    generate = TextGeneration(llm=llm)'
    ),
}


@pytest.fixture
def session(kernel: str, tmp_path: Path) -> Iterator[Session]:
    """A fresh kernel with the CELLS notebook loaded (shut down after the test)."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    client = client_for(notebook, kernel, tmp_path, allow_errors=True)
    running = Session(client, notebook, CELLS)
    client.on_cell_error = running.record
    with client.setup_kernel():
        yield running


def test_rerunning_cells_in_a_kernel(session: Session) -> None:
    """Re-running the load cell raises AlreadyLoadedError (or warns), and a rebuilt LLM warns."""
    for name in ("setup", "build and load"):
        session(name)
        assert not session.raised, f"the {name!r} cell raised {session.raised}"
    assert text(session("check"), "stdout") == "1 loaded\n", "the first load did not load"

    outputs = session("load")  # the load, run a second time
    assert session.raised == [("AlreadyLoadedError", ANY)], f"expected one error: {session.raised}"
    message = session.raised.pop()[1]
    assert "EchoLLM at 0x" in message, message
    assert "Use ensure_loaded() to make this a no-op" in message, message
    assert "AlreadyLoadedError" in shown(outputs), f"the cell does not show the error: {outputs}"
    assert "Useensure_loaded()tomakethisano-op" in compact(shown(outputs)), "the hint is not shown"
    assert text(session("check"), "stdout") == "1 loaded\n", "the re-run loaded a second copy"

    session("warn")
    outputs = session("load")
    assert not session.raised, f"under on_repeat='warn' the re-run raised: {session.raised}"
    assert "RepeatedLoadWarning" in text(outputs, "stderr"), f"no warning: {outputs}"
    assert text(session("check"), "stdout") == "1 loaded\n", "the warned re-run loaded again"

    session("use in a pipeline")
    outputs = session(
        "build and load"
    )  # re-run: a new LLM, same configuration; a task keeps the old
    assert not session.raised, f"a cell raised: {session.raised}"
    stderr = text(outputs, "stderr")
    assert "DuplicateLoadWarning" in stderr, f"no duplicate warning: {outputs}"
    assert "has the same configuration as EchoLLM at 0x" in stderr, stderr
    assert text(session("check"), "stdout") == "2 loaded\n", "expected the two copies to be loaded"


def test_example_notebook_runs_with_only_the_intended_error(kernel: str, tmp_path: Path) -> None:
    """examples/notebook.ipynb executes; its only error is the tagged re-run of the load cell."""
    notebook = nbformat.read(EXAMPLE, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), (
        "examples/notebook.ipynb is committed with outputs; clear them"
    )
    raised: list[tuple[int, str, str]] = []

    def record(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        content = execute_reply["content"]
        raised.append((cell_index, content["ename"], content["evalue"]))

    client = client_for(notebook, kernel, tmp_path, on_cell_error=record)
    client.execute()  # raises CellExecutionError for an error in an untagged cell
    assert [(ename) for _, ename, _ in raised] == ["AlreadyLoadedError"], f"errors: {raised}"
    ((index, _, message),) = raised
    assert "raises-exception" in notebook.cells[index].metadata.get("tags", []), "not tagged"
    assert "Use ensure_loaded() to make this a no-op" in message, message
    assert "AlreadyLoadedError" in shown(notebook.cells[index].outputs), "the error is not shown"
    results = "\n".join(text(cell.outputs, "result") for cell in code)
    assert "['echo: hi', 'echo: hello']" in results, (
        f"the pipeline's generations are missing:\n{results}"
    )
    assert "(<State.LOADED: 'loaded'>, True)" in results, (
        f"the LLM changed during the run:\n{results}"
    )
    (ensure,) = [cell for cell in code if cell.source.startswith("stepfsm.ensure_loaded(llm)")]
    assert text(ensure.outputs, "result") == "False", "ensure_loaded() did not return False"
