"""A real Jupyter kernel displays a live lifecycle as a diagram.

nbclient runs a notebook in a real IPython kernel (ipykernel), and the cell's
display output is checked: ``image/svg+xml`` when Graphviz ``dot`` is on the
kernel's PATH, ``text/markdown`` holding a fenced mermaid block otherwise.
Either way the current state is in it and highlighted.

The kernel is started from a kernelspec written for the test, which runs this
very interpreter, so that a PATH without ``dot`` cannot also lose Python, and
no kernel installed elsewhere on the machine is picked up by mistake.
Locally the tests skip without nbclient/ipykernel (or dot); with ``CI=true``
they fail instead.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
KERNEL = "stepfsm-test"

CELL = textwrap.dedent(
    """
    import stepfsm

    @stepfsm.stateful
    class Encoder:
        def __init__(self, name):
            self.name = name

        def load(self):
            self.model = object()

        def unload(self):
            del self.model

    encoder = Encoder("embed_0")
    stepfsm.lifecycle(encoder).load()
    stepfsm.lifecycle(encoder)
    """
)


def _importable(*names: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in names)


def run_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> dict[str, Any]:
    """Run CELL in a fresh kernel whose PATH is ``path``; return its result's data."""
    require(_importable("nbclient", "nbformat", "ipykernel"), "nbclient, nbformat and ipykernel")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's migration warning
    import nbformat
    from nbclient import NotebookClient

    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "stepfsm test kernel",
                "language": "python",
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("PATH", path)

    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell(CELL))
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=120,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = notebook.cells[0].outputs
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"the cell raised: {errors}"
    results = [o for o in outputs if o.output_type == "execute_result"]
    assert len(results) == 1, f"expected one result, got {outputs}"
    return dict(results[0].data)


def test_kernel_displays_a_live_lifecycle_as_svg_with_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With dot available, the kernel's output is an SVG naming and highlighting 'loaded'."""
    require(shutil.which("dot") is not None, "the Graphviz 'dot' program")
    require(_importable("graphviz"), "the Python package 'graphviz'")
    data = run_cell(tmp_path, monkeypatch, os.environ["PATH"])
    assert "image/svg+xml" in data, f"no SVG in {sorted(data)}"
    svg = data["image/svg+xml"]
    assert "Encoder 'embed_0' lifecycle: loaded" in html.unescape(svg), svg
    node = re.search(r"<title>loaded</title>\s*<path fill=\"(\w+)\"", svg)
    assert node is not None, "no 'loaded' node in the SVG"
    assert node.group(1) == "darksalmon", f"'loaded' is filled {node.group(1)}, not highlighted"
    assert "Lifecycle of Encoder 'embed_0': loaded" in data["text/plain"], data["text/plain"]


def test_kernel_displays_mermaid_markdown_without_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dot on PATH, the kernel's output is a mermaid block highlighting 'loaded'."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    data = run_cell(tmp_path, monkeypatch, str(empty))
    assert "image/svg+xml" not in data, "SVG although dot is not on PATH"
    markdown = data.get("text/markdown", "")
    assert markdown.startswith("```mermaid\n"), f"not a mermaid block: {data}"
    assert "title: \"Encoder 'embed_0' lifecycle: loaded\"" in markdown, markdown
    assert "    class loaded current\n" in markdown, markdown
