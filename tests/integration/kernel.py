"""A real Jupyter kernel (nbclient + ipykernel) for tests that run notebook cells one by one.

The kernel is started from a kernelspec written for the test that runs this very
interpreter, with this repository on its path. Cells run one by one with
``execute_cell``, so a cell can be run a second time, as a user does. Locally
the tests skip without nbclient, nbformat and ipykernel; with ``CI=true`` they
fail instead.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

REPO = Path(__file__).resolve().parents[2]
KERNEL = "stepfsm-test"


class Session:
    """A running kernel: ``session(name)`` runs the cell ``cells[name]``; returns its outputs.

    ``raised`` collects ``(ename, evalue)`` of every cell that raised, from the
    kernel's execute replies.
    """

    def __init__(self, client: Any, notebook: Any, cells: dict[str, str]) -> None:
        self.client = client
        self.notebook = notebook
        self.index = {name: i for i, name in enumerate(cells)}
        self.raised: list[tuple[str, str]] = []

    def __call__(self, name: str) -> list[Any]:
        cell = self.notebook.cells[self.index[name]]
        self.client.execute_cell(cell, self.index[name])
        return copy.deepcopy(cell.outputs)

    def record(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        content = execute_reply["content"]
        self.raised.append((content["ename"], content["evalue"]))


@contextlib.contextmanager
def kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cells: dict[str, str], timeout: int = 60
) -> Iterator[Session]:
    """A fresh kernel running this interpreter, with a notebook of ``cells`` (shut down after)."""
    require(
        all(importlib.util.find_spec(n) is not None for n in ("nbclient", "nbformat", "ipykernel")),
        "nbclient, nbformat and ipykernel",
    )
    import nbformat
    from nbclient import NotebookClient

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

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells.values()]
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=timeout,
        startup_timeout=120,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    running = Session(client, notebook, cells)
    client.on_cell_error = running.record
    with client.setup_kernel():
        yield running


def stdout(outputs: list[Any]) -> str:
    return "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")


def result(outputs: list[Any]) -> str:
    return "".join(
        o.data.get("text/plain", "") for o in outputs if o.output_type == "execute_result"
    )


def error_text(outputs: list[Any]) -> str:
    """The error a cell shows (name, message, traceback), ANSI colours removed."""
    parts = [
        part
        for o in outputs
        if o.output_type == "error"
        for part in (o.ename, o.evalue, *o.traceback)
    ]
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))
