"""A small OpenAI-compatible HTTP server for the tests: stdlib ``asyncio`` only.

It answers what an OpenAI client asks a model server for, and nothing else:

* ``POST /v1/chat/completions``: a ``chat.completion`` whose every choice
  echoes the last message (``"echo: " + content``), ``n`` choices;
* ``GET /v1/models``: one model, :data:`MODEL`;
* anything else: ``404`` with an OpenAI-style error body.

Every response says ``Connection: close`` and the connection is closed after
it, so no client keeps a socket open (an event loop closed under an open
connection would warn about it later, in whichever test runs then).

It is bounded on every side: it binds to ``127.0.0.1`` only, serves at most
``max_requests`` requests and then stops by itself, stops by itself after
``time_limit`` seconds, gives up on a client that sends nothing for
:data:`READ_TIMEOUT` seconds, and refuses bodies over :data:`MAX_BODY` bytes.
It runs in its own thread with its own event loop::

    with OpenAIServer(max_requests=20, time_limit=60) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
    server.requests   # what it was asked, in order: [Request("GET", "/v1/models", ...), ...]

Pass ``port=`` to serve on a given port (``free_port()`` finds one), to
start a server where a client was pointed while nothing listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
#: The one model the server lists.
MODEL = "echo-model"
#: Seconds a connection may stay silent before the server closes it.
READ_TIMEOUT = 10.0
#: The largest request body accepted (bytes).
MAX_BODY = 1 << 20
#: The longest request head accepted (bytes).
MAX_HEAD = 64 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True)
class Request:
    """One request the server answered."""

    method: str
    path: str
    #: the decoded JSON body, ``None`` without one
    body: Any
    #: the ``Authorization`` header ("" when absent)
    authorization: str
    status: int


class OpenAIServer:
    """An OpenAI-compatible echo server on 127.0.0.1, in a thread of its own.

    Args:
        port: the port to listen on; ``0`` (the default) picks a free one.
        max_requests: stop after answering this many requests.
        time_limit: stop after this many seconds, whatever happens.
        prefix: what the echo puts before the last message's content.
        delay: seconds to wait before each answer (a slow server).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        max_requests: int = 100,
        time_limit: float = 60.0,
        prefix: str = "echo: ",
        delay: float = 0.0,
    ) -> None:
        self.port = port
        self.max_requests = max_requests
        self.time_limit = time_limit
        self.prefix = prefix
        self.delay = delay
        #: why the server stopped: "stopped", "max requests", "time limit" (None: running)
        self.stopped_because: str | None = None
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        #: what ended the server's thread with an exception, if anything did
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ------------------------------------------------------------ the test's side

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[Request]:
        """The requests answered so far, oldest first (a copy); each is recorded just before
        its answer is sent, so a client holding an answer finds its request here."""
        with self._lock:
            return list(self._requests)

    def paths(self) -> list[str]:
        """``"METHOD /path"`` of every request answered so far."""
        return [f"{request.method} {request.path}" for request in self.requests]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> OpenAIServer:
        """Start serving; returns once the port listens.

        Raises:
            OSError: the port could not be bound.
            RuntimeError: the server did not start within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise RuntimeError("this OpenAIServer was started already; make a new one")
        self._thread = threading.Thread(target=self._run, name="openai-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the test server did not start within {timeout} s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (closing every connection) and wait for the thread to end."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: stopped already
                loop.call_soon_threadsafe(self._finish, "stopped")
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the test server's thread did not end within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"the test server crashed: {self.error!r}") from self.error

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------- the server thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # start() (or stop()) raises it in the test's thread
            self.error = error
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, HOST, self.port)
        except OSError as error:  # the port is taken: start() raises it
            self.error = error
            return
        self.port = server.sockets[0].getsockname()[1]
        timer = loop.call_later(self.time_limit, self._finish, "time limit")
        self._ready.set()
        try:
            async with server:
                await self._done.wait()
        finally:
            timer.cancel()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0)  # let the handlers see their closed connections

    def _finish(self, why: str) -> None:
        if self.stopped_because is None:
            self.stopped_because = why
        if self._done is not None:
            self._done.set()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._answer(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass  # the client went away or stayed silent: drop the connection
        except (ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        if len(head) > MAX_HEAD:
            raise ValueError("request head too long")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or "0")
        if length > MAX_BODY:
            status, payload, body = 413, _error("request body too large"), None
        else:
            raw = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                status, payload, body = 400, _error("the body is not JSON"), None
            else:
                status, payload = self._route(method, target.split("?", 1)[0], body)
        if self.delay:
            await asyncio.sleep(self.delay)
        # recorded before the answer is sent: a client that has its answer finds it in requests
        request = Request(
            method, target.split("?", 1)[0], body, headers.get("authorization", ""), status
        )
        with self._lock:
            self._requests.append(request)
            count = len(self._requests)
        data = json.dumps(payload).encode("utf-8")
        writer.write(
            (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n"
                "Connection: close\r\n"
                "\r\n"
            ).encode("latin-1")
            + data
        )
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        if count >= self.max_requests:
            self._finish("max requests")

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/v1/models":
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "stepfsm-tests"}
            return 200, {"object": "list", "data": [model]}
        if method == "POST" and path == "/v1/chat/completions":
            if not isinstance(body, dict) or not body.get("messages"):
                return 400, _error("'messages' is required")
            return 200, self._completion(body)
        return 404, _error(f"no route {method} {path}")

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        content = body["messages"][-1].get("content", "")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        reply = self.prefix + str(content)
        n = int(body.get("n") or 1)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = len(reply.split())
        return {
            "id": f"chatcmpl-{len(self._requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MODEL),
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": reply},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for index in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * n,
                "total_tokens": prompt_tokens + completion_tokens * n,
            },
        }


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}
