"""distilabel's real ``OpenAILLM`` (the real ``openai`` client) against a real HTTP server.

The server is ``tests/integration/openai_server.py``: an OpenAI-compatible
echo server on 127.0.0.1, in a thread of its own, bounded in requests and
time. Nothing is mocked: every request goes through ``openai``'s HTTP
client to a socket. The lifecycle is driven from async code
(``await stepfsm.aensure_loaded(llm)``, ``await llm.agenerate(...)``,
``await stepfsm.aunload(llm)``) under ``install()``, and a ``TextGeneration``
task over the same LLM runs in a real ``Pipeline.run()``.

distilabel's ``OpenAILLM.load()`` only builds the clients: it never contacts
the server, so a server that is down would only show at the first request.
:class:`CheckedOpenAILLM` is what a careful user writes instead: its load
lists the server's models, so a dead server fails the load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.integration.distilabel import require

require("distilabel")
openai = require("openai")

from distilabel.models.llms import OpenAILLM  # noqa: E402
from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps import LoadDataFromDicts  # noqa: E402
from distilabel.steps.tasks import TextGeneration  # noqa: E402

import stepfsm  # noqa: E402
from tests.integration.openai_server import MODEL, OpenAIServer, free_port  # noqa: E402

CHAT = [{"role": "user", "content": "hello there"}]
INSTRUCTIONS = [f"q{i}" for i in range(5)]
#: every server of this module stops by itself after this many seconds
TIME_LIMIT = 120.0


class CheckedOpenAILLM(OpenAILLM):
    """``OpenAILLM`` whose load also checks that the server answers.

    Module level: distilabel pickles the task (with its LLM) into its workers.
    """

    check_timeout: float = 5.0

    def load(self) -> None:
        super().load()  # builds the clients, contacts nobody
        # one request, no retries, a short timeout: a dead server fails the load now
        self._client.with_options(max_retries=0, timeout=self.check_timeout).models.list()


StartServer = Callable[..., OpenAIServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """``start_server(port=0, **options)`` starts an :class:`OpenAIServer`; all stop after."""
    started: list[OpenAIServer] = []

    def start(port: int = 0, **options: Any) -> OpenAIServer:
        options = {"max_requests": 50, "time_limit": TIME_LIMIT, **options}
        server = OpenAIServer(port, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: StartServer) -> OpenAIServer:
    """A running echo server on a free port."""
    return start_server()


def test_the_server_stops_by_itself(start_server: StartServer) -> None:
    """The test server's bounds hold: it stops after max_requests, and after time_limit."""
    counted = start_server(max_requests=2)
    client = openai.OpenAI(base_url=counted.base_url, api_key="test", max_retries=0, timeout=5)
    assert [model.id for model in client.models.list().data] == [MODEL]
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, n=2)
    assert [choice.message.content for choice in reply.choices] == ["echo: hello there"] * 2
    deadline = time.monotonic() + 5
    while counted.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (counted.running, counted.stopped_because) == (False, "max requests")
    with pytest.raises(openai.APIConnectionError):
        client.models.list()

    timed = start_server(time_limit=0.2)
    time.sleep(0.1)
    assert timed.running, "stopped before its time limit"
    deadline = time.monotonic() + 5
    while timed.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (timed.running, timed.stopped_because) == (False, "time limit")


def llm_for(server_url: str, cls: type[OpenAILLM] = OpenAILLM) -> Any:
    """A real ``OpenAILLM`` (or subclass) pointed at ``server_url``, default client settings."""
    return cls(model=MODEL, base_url=server_url, api_key="test")


def test_agenerate_before_load_raises_not_loaded(
    installed: ModuleType, server: OpenAIServer
) -> None:
    """A guarded agenerate() before the load, and after the unload, refuses; nothing is sent."""
    llm = llm_for(server.base_url)

    async def main() -> None:
        with pytest.raises(
            stepfsm.NotLoadedError,
            match=r"OpenAILLM at 0x\w+ is not loaded \(state 'unloaded'\), so agenerate\(\)",
        ):
            await llm.agenerate(CHAT)
        assert await stepfsm.aensure_loaded(llm) is True, "the awaited load did not run"
        await stepfsm.aunload(llm)
        with pytest.raises(stepfsm.NotLoadedError, match=r"so agenerate\(\) cannot run"):
            await llm.agenerate(CHAT)

    asyncio.run(main())
    assert server.requests == [], f"a refused call reached the server: {server.paths()}"


def test_awaited_load_generate_unload_against_the_server(
    installed: ModuleType, start_server: StartServer
) -> None:
    """aensure_loaded (loop never blocked), agenerate (echo, concurrent), aunload: one load."""
    slow = start_server(delay=0.3)  # every answer takes 0.3 s, the load's check included
    llm = llm_for(slow.base_url, CheckedOpenAILLM)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    async def main() -> None:
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before, started = ticks, time.monotonic()
        assert await stepfsm.aensure_loaded(llm) is True, "the awaited load did not run"
        took, ticked = time.monotonic() - started, ticks - before
        ticking.cancel()
        assert took >= 0.3, f"the load took {took:.2f} s: it did not wait for the server"
        assert ticked >= 3, (
            f"the event loop ran {ticked} times during a {took:.2f} s load: the load blocked it"
        )
        assert stepfsm.state(llm) is stepfsm.State.LOADED
        assert await stepfsm.aensure_loaded(llm) is False, "a second awaited load ran"
        with pytest.raises(stepfsm.AlreadyLoadedError, match=r"CheckedOpenAILLM at 0x\w+ is"):
            await stepfsm.aload(llm)

        result = await llm.agenerate(CHAT)
        assert result["generations"] == ["echo: hello there"], f"not the echo: {result}"
        results = await asyncio.gather(
            *(llm.agenerate([{"role": "user", "content": q}]) for q in INSTRUCTIONS[:3])
        )
        assert [r["generations"] for r in results] == [[f"echo: {q}"] for q in INSTRUCTIONS[:3]]

        await stepfsm.aunload(llm)
        assert stepfsm.state(llm) is stepfsm.State.UNLOADED
        assert llm._aclient is None, "the unload left the async client in place"

    asyncio.run(main())
    assert slow.paths() == ["GET /v1/models"] + ["POST /v1/chat/completions"] * 4, (
        f"unexpected requests: {slow.paths()}"
    )
    assert {request.authorization for request in slow.requests} == {"Bearer test"}
    assert slow.requests[1].body["messages"] == CHAT, "the server was not sent the chat"


def test_load_fails_while_the_server_is_down_then_recovers(
    installed: ModuleType, start_server: StartServer
) -> None:
    """Server down: a LoadError naming the step and the connection error, step failed; server
    up: aensure_loaded cleans up, loads, and agenerate gets the echo."""
    port = free_port()  # nothing listens there yet
    llm = llm_for(f"http://127.0.0.1:{port}/v1", CheckedOpenAILLM)
    lc = stepfsm.lifecycle(llm)

    async def main() -> None:
        with pytest.raises(stepfsm.LoadError) as caught:
            await stepfsm.aensure_loaded(llm)
        message = str(caught.value)
        assert message.startswith("load() of CheckedOpenAILLM at 0x"), message
        assert "failed with APIConnectionError: Connection error." in message, message
        assert isinstance(caught.value.__cause__, openai.APIConnectionError)
        assert "Connection refused" in repr(caught.value.__cause__.__cause__), (
            f"not the refused connection: {caught.value.__cause__.__cause__!r}"
        )
        assert lc.state is stepfsm.State.FAILED, f"state {lc.state}, not failed"
        assert lc.error is caught.value.__cause__, "the lifecycle does not keep the cause"
        with pytest.raises(stepfsm.StepFailedError, match="APIConnectionError"):
            await llm.agenerate(CHAT)

        up = start_server(port)
        assert await stepfsm.aensure_loaded(llm) is True, "the second load did not run"
        assert lc.state is stepfsm.State.LOADED
        assert lc.error is None, "the recovered step still keeps the connection error"
        triggers = [record.trigger for record in lc.history]
        assert triggers == [
            "begin_load",
            "fail",
            "begin_unload",  # the clean-up of the failed load...
            "finish_unload",
            "begin_load",  # ...then the load
            "finish_load",
        ], triggers
        result = await llm.agenerate([{"role": "user", "content": "back up"}])
        assert result["generations"] == ["echo: back up"], result
        await stepfsm.aunload(llm)
        assert up.paths() == ["GET /v1/models", "POST /v1/chat/completions"], up.paths()

    asyncio.run(main())


def test_cancelling_the_awaiting_task_does_not_interrupt_the_sync_load(
    installed: ModuleType, start_server: StartServer
) -> None:
    """The task awaiting a sync LLM's load is cancelled: it is released at once, the load runs
    to the end in its worker thread (one request), and a task waiting for it is unaffected."""
    slow = start_server(delay=0.8)  # the load's check waits 0.8 s for the server
    llm = llm_for(slow.base_url, CheckedOpenAILLM)

    async def main() -> None:
        loader = asyncio.create_task(stepfsm.aensure_loaded(llm))
        await asyncio.sleep(0.1)  # the load is waiting for the server's answer
        assert stepfsm.state(llm) is stepfsm.State.LOADING
        waiter = asyncio.create_task(stepfsm.aensure_loaded(llm))
        user = asyncio.create_task(llm.agenerate([{"role": "user", "content": "waited"}]))
        await asyncio.sleep(0.05)
        loader.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await loader
        assert time.monotonic() - started < 0.3, "the cancelled task waited for the load"
        assert stepfsm.state(llm) is stepfsm.State.LOADING, "the cancellation ended the load"
        assert await waiter is False, "the waiting task ran a second load"
        assert stepfsm.state(llm) is stepfsm.State.LOADED, "the sync load did not finish"
        result = await user
        assert result["generations"] == ["echo: waited"], f"the guarded call got {result}"
        await stepfsm.aunload(llm)

    asyncio.run(main())
    assert slow.paths() == ["GET /v1/models", "POST /v1/chat/completions"], slow.paths()


@pytest.mark.slow
def test_text_generation_over_the_llm_in_a_pipeline_run(
    installed: ModuleType, server: OpenAIServer, pipeline_cache: Path
) -> None:
    """TextGeneration over the async LLM in a real Pipeline.run(): every row gets its echo from
    the server; the LLM the test loaded (awaited) stays loaded in this process."""
    llm = llm_for(server.base_url, CheckedOpenAILLM)
    assert asyncio.run(stepfsm.aensure_loaded(llm)) is True
    with Pipeline(name="stepfsm-openai") as pipeline:
        data = LoadDataFromDicts(data=[{"instruction": q} for q in INSTRUCTIONS])
        data >> TextGeneration(llm=llm)
    distiset = pipeline.run(use_cache=False)
    generations = list(distiset["default"]["train"]["generation"])
    assert generations == [f"echo: {q}" for q in INSTRUCTIONS], f"lost generations: {generations}"
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "the run unloaded the test's LLM"
    assert stepfsm.lifecycle(llm).holders == (), "the run left a hold on the test's LLM"
    # this process's load, the worker's own load (its copy arrived unloaded), one chat per row
    paths = server.paths()
    assert paths.count("GET /v1/models") == 2, paths
    asked = [r.body["messages"][-1]["content"] for r in server.requests if r.method == "POST"]
    assert sorted(asked) == INSTRUCTIONS, f"the rows the server was asked: {asked}"
    asyncio.run(stepfsm.aunload(llm))
    assert stepfsm.state(llm) is stepfsm.State.UNLOADED
