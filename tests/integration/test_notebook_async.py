"""Top-level ``await`` in a real Jupyter kernel (nbclient + ipykernel): re-running cells.

A notebook user writes ``await stepfsm.aload(step)`` in a cell (IPython runs
the cell on the kernel's event loop) and then runs that cell again. The
kernel is started from a kernelspec written for the test that runs this very
interpreter, with this repository on its path. Cells run one by one with
``execute_cell``, so a cell can be run a second time, as a user does.

Locally the test skips without nbclient, nbformat and ipykernel; with
``CI=true`` it fails instead.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
KERNEL = "stepfsm-async-test"

CELLS = {
    "define": textwrap.dedent(
        """\
        import asyncio
        import threading

        import stepfsm


        @stepfsm.stateful(guard=("encode",))
        class Encoder:
            \"\"\"A sync step: its load runs in a worker thread when awaited.\"\"\"

            def __init__(self, name):
                self.name = name
                self.model = None
                self.loads = 0
                self.loaded_in = None

            def load(self):
                self.loads += 1
                self.loaded_in = threading.current_thread().name
                self.model = len

            def unload(self):
                self.model = None

            def encode(self, text):
                return self.model(text)


        @stepfsm.stateful(guard=("agenerate",))
        class Client:
            \"\"\"An async step: its load runs on the kernel's own event loop.\"\"\"

            def __init__(self, name):
                self.name = name
                self.session = None
                self.loop = None

            async def load(self):
                await asyncio.sleep(0.01)  # imagine: open an HTTP session
                self.loop = asyncio.get_running_loop()
                self.session = str.upper

            async def unload(self):
                self.session = None

            async def agenerate(self, prompt):
                return self.session(prompt)


        step = Encoder("embed_0")
        client = Client("client_0")
        """
    ),
    "aload": "await stepfsm.aload(step)",
    "check": "print(stepfsm.state(step).value, step.loads, step.loaded_in, step.encode('four'))",
    "aensure_loaded": "await stepfsm.aensure_loaded(step)",
    "async step": textwrap.dedent(
        """\
        print(await stepfsm.aensure_loaded(client), client.loop is asyncio.get_running_loop())
        async with stepfsm.aloaded(client) as held:
            print(await held.agenerate("hi"))
        """
    ),
    "sync on async step": "stepfsm.ensure_loaded(client)",
    "aunload": (
        "await stepfsm.aunload(step)\nawait stepfsm.aunload(client)\nprint(stepfsm.status())"
    ),
}


def _importable(*names: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)


class Session:
    """A running kernel: ``session(name)`` runs the cell ``CELLS[name]``; returns its outputs.

    ``raised`` collects ``(ename, evalue)`` of every cell that raised, from the
    kernel's execute replies.
    """

    def __init__(self, client: Any, notebook: Any) -> None:
        self.client = client
        self.notebook = notebook
        self.index = {name: i for i, name in enumerate(CELLS)}
        self.raised: list[tuple[str, str]] = []

    def __call__(self, name: str) -> list[Any]:
        cell = self.notebook.cells[self.index[name]]
        self.client.execute_cell(cell, self.index[name])
        return copy.deepcopy(cell.outputs)

    def record(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        content = execute_reply["content"]
        self.raised.append((content["ename"], content["evalue"]))


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """A fresh kernel running this interpreter, with the CELLS notebook (shut down after)."""
    require(_importable("nbclient", "nbformat", "ipykernel"), "nbclient, nbformat and ipykernel")
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
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=60,
        startup_timeout=120,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    running = Session(client, notebook)
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


def test_rerunning_a_top_level_await_cell(session: Session) -> None:
    """``await stepfsm.aload(step)`` at the top of a cell: the first run loads (in a worker
    thread), each re-run raises AlreadyLoadedError and loads nothing; ``await
    stepfsm.aensure_loaded(step)`` is the idempotent spelling."""
    session("define")
    assert not session.raised, f"the 'define' cell raised {session.raised}"

    session("aload")
    assert not session.raised, f"the first top-level await raised {session.raised}"
    assert stdout(session("check")) == "loaded 1 stepfsm-async 4\n", (
        "the awaited load did not run once, in stepfsm's worker thread"
    )

    for rerun in (1, 2):
        outputs = session("aload")  # the cell, run again
        assert [name for name, _ in session.raised] == ["AlreadyLoadedError"], (
            f"re-run {rerun}: expected AlreadyLoadedError, got {session.raised}"
        )
        message = session.raised.pop()[1]
        assert message.startswith("Encoder 'embed_0' is already loaded (since "), message
        assert "Use ensure_loaded() to make this a no-op" in message, message
        assert "AlreadyLoadedError" in error_text(outputs), f"the cell shows no error: {outputs}"
        assert stdout(session("check")) == "loaded 1 stepfsm-async 4\n", (
            f"re-run {rerun} loaded again"
        )

    for rerun in (1, 2):
        outputs = session("aensure_loaded")
        assert not session.raised, f"aensure_loaded() raised {session.raised}"
        assert result(outputs) == "False", f"run {rerun}: {outputs}"
    assert stdout(session("check")) == "loaded 1 stepfsm-async 4\n"


def test_an_async_step_loads_on_the_kernels_loop(session: Session) -> None:
    """An async step (async def load/unload) loads on the kernel's loop, works under
    ``async with stepfsm.aloaded()``, and refuses a synchronous operation with a pointer
    to the awaited one."""
    session("define")
    outputs = session("async step")
    assert not session.raised, f"the async step's cell raised {session.raised}"
    assert stdout(outputs) == "True True\nHI\n", f"unexpected output: {outputs}"

    outputs = session("sync on async step")
    assert [name for name, _ in session.raised] == ["StepStateError"], session.raised
    message = session.raised.pop()[1]
    assert message.startswith("Client 'client_0' is an async step"), message
    assert "await stepfsm.aensure_loaded(step)" in message, message

    session("aload")
    outputs = session("aunload")
    assert not session.raised, f"the unload cell raised {session.raised}"
    table = stdout(outputs)
    assert "embed_0" in table, table
    assert "client_0" in table, table
    assert "loaded" not in table.replace("unloaded", ""), f"a step is still loaded:\n{table}"
