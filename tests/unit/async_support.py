"""Helpers for the async lifecycle tests (``test_async_*.py``).

* :class:`Gate`: an event that threads and tasks on any event loop can wait
  on, opened from anywhere; every wait on it is bounded.
* :class:`SyncStep` and :class:`AsyncStep`: the same fake step twice, with
  ``def`` and with ``async def`` load/unload. Each opens a counted resource
  (``tests.conftest.HANDLES``), returns a value from its load and unload,
  can be told to fail (once, or every time), to wait on a gate, and signals
  when its load/unload code starts. ``use`` (sync) and ``ause`` (async) are
  guarded.
* :func:`run`: ``asyncio.run`` with an overall bound, so a broken library
  fails a test instead of hanging it; :func:`bounded` for one await.
* :data:`OPS`: every async operation as a call on a step; :func:`loading`:
  a task of this loop held inside a step's load.

Tests synchronise on gates, events and listeners, never on sleeps; every
wait is bounded (:data:`BOUND` seconds). Two conditions nothing signals are
polled, bounded: no operation holds a step (:func:`settled`) and no worker
thread is alive (:func:`workers_done`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import stepfsm
from stepfsm import State
from tests.conftest import HANDLES
from tests.fakes import Resource

T = TypeVar("T")

#: Seconds any single wait in these tests may take before the test fails.
BOUND = 10.0

#: The two kinds of step every row is checked for.
KINDS = ("sync", "async")


class Gate:
    """A one-shot event for threads (:meth:`wait`) and tasks on any loop (:meth:`until`)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self) -> None:
        with self._lock:
            self._event.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_resolve, future)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float = BOUND) -> None:
        """Block this thread until the gate opens (fail after ``timeout`` seconds)."""
        assert self._event.wait(timeout), f"gate not opened within {timeout} s"

    async def until(self, timeout: float = BOUND) -> None:
        """Await the gate on the running loop (fail after ``timeout`` seconds)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            self._futures.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"gate not opened within {timeout} s") from None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Knobs:
    """What both fake steps share: counters, failures, gates, signals."""

    def __init__(self, name: str = "gen_0") -> None:
        self.name = name
        self.handle: Resource | None = None
        self.loads = 0
        self.unloads = 0
        #: raised by the next load (then forgotten); ``fail_every_load`` by every load
        self.fail_load: BaseException | None = None
        self.fail_every_load: BaseException | None = None
        self.fail_unload: BaseException | None = None  # raised by the next unload
        #: when set, load and unload wait until it opens
        self.gate: Gate | None = None
        #: opened when the step's own load/unload code starts (replace to re-arm)
        self.started = {"load": Gate(), "unload": Gate()}
        self.hook: Callable[[], Any] | None = None  # called (awaited if async) inside load
        self.running = 0  # user load/unload code running now, and the most ever at once
        self.most_running = 0
        self._lock = threading.Lock()

    def _begin(self, op: str) -> None:
        with self._lock:
            if op == "load":
                self.loads += 1
            else:
                self.unloads += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.started[op].set()

    def _end(self) -> None:
        with self._lock:
            self.running -= 1

    def _finish_load(self) -> tuple[str, int]:
        error, self.fail_load = self.fail_load, None
        error = error or self.fail_every_load
        if error is not None:
            raise error
        self.handle = HANDLES.open(self.name)
        return ("loaded", self.loads)

    def _finish_unload(self) -> tuple[str, int]:
        error, self.fail_unload = self.fail_unload, None
        if error is not None:
            raise error
        if self.handle is not None:
            self.handle.close()
        self.handle = None
        return ("unloaded", self.unloads)

    @property
    def held(self) -> bool:
        return self.handle is not None and not self.handle.closed

    def use(self, x: int = 1) -> int:
        assert self.handle is not None, "use() ran without a handle"
        return x * 2

    async def ause(self, x: int = 1) -> int:
        await asyncio.sleep(0)
        assert self.handle is not None, "ause() ran without a handle"
        return x * 3


@stepfsm.stateful(guard=("use", "ause"))
class SyncStep(Knobs):
    """A sync step: ``def load``/``def unload`` (run in a worker thread by ``aload()``)."""

    def load(self) -> tuple[str, int]:
        self._begin("load")
        try:
            if self.gate is not None:
                self.gate.wait()
            if self.hook is not None:
                self.hook()
            return self._finish_load()
        finally:
            self._end()

    def unload(self) -> tuple[str, int]:
        self._begin("unload")
        try:
            if self.gate is not None:
                self.gate.wait()
            return self._finish_unload()
        finally:
            self._end()


@stepfsm.stateful(guard=("use", "ause"))
class AsyncStep(Knobs):
    """An async step: ``async def load``/``async def unload`` (run on the caller's loop)."""

    async def load(self) -> tuple[str, int]:
        self._begin("load")
        try:
            if self.gate is not None:
                await self.gate.until()
            await asyncio.sleep(0)  # really async: the loop runs other tasks here
            if self.hook is not None:
                await self.hook()
            return self._finish_load()
        finally:
            self._end()

    async def unload(self) -> tuple[str, int]:
        self._begin("unload")
        try:
            if self.gate is not None:
                await self.gate.until()
            await asyncio.sleep(0)
            return self._finish_unload()
        finally:
            self._end()


Step = SyncStep | AsyncStep


def make(kind: str, name: str = "gen_0") -> SyncStep | AsyncStep:
    """A fresh unloaded step of ``kind`` (``"sync"`` or ``"async"``)."""
    return SyncStep(name) if kind == "sync" else AsyncStep(name)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` in a new event loop; fail (not hang) after ``timeout`` seconds."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"the test did not finish within {timeout} s") from None

    return asyncio.run(bounded())


async def bounded(awaitable: Any, timeout: float = BOUND) -> Any:
    """Await ``awaitable``; fail (not hang) after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"not done within {timeout} s") from None


async def still_pending(task: asyncio.Future[Any], for_s: float = 0.05) -> None:
    """Assert that ``task`` does not finish within ``for_s`` seconds (it waits, as it should)."""
    done, _ = await asyncio.wait({task}, timeout=for_s)
    if done:
        task.result()  # raises what the task raised, if anything
        raise AssertionError("the call returned instead of waiting for the transition")


async def fail_load(step: SyncStep | AsyncStep, error: BaseException) -> None:
    """Put ``step`` into ``failed`` through a load (awaited) that raises ``error``."""
    step.fail_load = error
    with pytest.raises(stepfsm.LoadError):
        await stepfsm.aload(step)
    assert stepfsm.state(step) is State.FAILED


async def put(step: SyncStep | AsyncStep, state: State, error: BaseException) -> None:
    """Bring an unloaded ``step`` into ``state`` (``unloaded``, ``loaded`` or ``failed``)."""
    if state is State.LOADED:
        await stepfsm.aload(step)
    elif state is State.FAILED:
        await fail_load(step, error)
    assert stepfsm.state(step) is state


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``fn`` in a daemon thread; the dict gets its ``result`` or ``error``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as error:  # inspected by the test
            box["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, box


def join(thread: threading.Thread, timeout: float = BOUND) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), f"thread still running after {timeout} s"


async def settled(step: object, timeout: float = BOUND) -> None:
    """Wait (polling the loop, bounded) until no operation holds ``step``'s claim."""
    lc = stepfsm.lifecycle(step)
    deadline = time.monotonic() + timeout
    while lc.statistics().owner is not None:
        assert time.monotonic() < deadline, f"an operation still holds {lc.name}"
        await asyncio.sleep(0.005)


async def workers_done(timeout: float = BOUND) -> None:
    """Wait (polling the loop, bounded) until no stepfsm worker thread is alive."""
    deadline = time.monotonic() + timeout
    while any(t.name == "stepfsm-async" and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a stepfsm worker thread is still running"
        await asyncio.sleep(0.005)


async def _block(step: Step) -> None:
    async with stepfsm.aloaded(step):
        pass


#: Every async operation, as a call on a step (the guarded method is ``ause``).
OPS: dict[str, Callable[[Step], Awaitable[Any]]] = {
    "aload": stepfsm.aload,
    "aensure_loaded": stepfsm.aensure_loaded,
    "aunload": stepfsm.aunload,
    "areload": stepfsm.areload,
    "aloaded": _block,
    "guarded": lambda step: step.ause(),
    "arequire_loaded": lambda step: stepfsm.lifecycle(step).arequire_loaded(),
}


async def loading(step: Step) -> tuple[asyncio.Future[Any], Gate]:
    """A task of this loop inside ``step``'s load, held there by a gate (open it to finish)."""
    gate = step.gate = Gate()
    loader = asyncio.ensure_future(stepfsm.aload(step))
    await step.started["load"].until()
    assert stepfsm.state(step) is State.LOADING
    return loader, gate


def unloaded_gate(lc: stepfsm.Lifecycle) -> Gate:
    """A gate that opens at the step's next finish_unload (listeners run after the release)."""
    gate = Gate()
    lc.subscribe(lambda _, record: gate.set() if record.trigger == "finish_unload" else None)
    return gate
