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

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.kernel import Session, error_text, kernel, result, stdout

pytestmark = pytest.mark.slow


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


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    """A fresh kernel running this interpreter, with the CELLS notebook (shut down after)."""
    with kernel(tmp_path, monkeypatch, CELLS) as running:
        yield running


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
