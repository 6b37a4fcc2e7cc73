"""Event-loop plumbing for the async operations; it knows nothing of lifecycles.

The async operations (``Lifecycle.aload()`` and friends, in ``machine``) run
the synchronous engine in a worker thread, so the event loop never blocks on
a claim, a long synchronous load or a listener:

* :func:`in_thread` runs a function in a new worker thread that is *linked*
  to the calling task: the task awaits the result, and a cancelled task
  cancels the async user code that the thread runs for it.
* :func:`run_coroutine` is called in such a thread by the engine when the
  user's load/unload is ``async def``: the coroutine runs on the task's own
  loop (where the step's clients live), marked in its context as running that
  lifecycle's operation (:func:`running`), and the thread waits for it.
* :func:`wait` awaits a shared future per loop that the engine resolves from
  any thread (:func:`wake`) when a claim is released.

``asyncio`` is imported on first use: ``import stepfsm`` stays light.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures

__all__ = ["Link", "bridging", "in_thread", "run_coroutine", "running", "wait", "wake"]

R = TypeVar("R")

#: The markers (``(lifecycle, operation)``) of the async user code the current
#: task runs, innermost last: the task-local twin of the registry's thread stack.
_RUNNING: Final[contextvars.ContextVar[tuple[object, ...]]] = contextvars.ContextVar(
    "stepfsm_running", default=()
)
_LOCAL: Final = threading.local()


def running() -> tuple[object, ...]:
    """The markers of the async user code the current task is running (none: ``()``)."""
    return _RUNNING.get()


class Link:
    """A worker thread's tie to the task that awaits it."""

    __slots__ = ("cancelled", "inner", "lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.cancelled = False
        #: the future of the async user code the thread runs on ``loop``, while it runs
        self.inner: concurrent.futures.Future[Any] | None = None

    def cancel(self) -> bool:
        """The task was cancelled: cancel its async user code; ``False`` if none runs."""
        with self.lock:
            self.cancelled = True
            inner = self.inner
        if inner is None:
            return False
        inner.cancel()
        return True


def bridging() -> Link | None:
    """The link of the current thread, if it is a worker serving an async operation."""
    link: Link | None = getattr(_LOCAL, "link", None)
    return link


async def in_thread(fn: Callable[[], R], settle: bool = True) -> R:
    """Run ``fn()`` in a new worker thread linked to the calling task; return its result.

    The loop keeps running meanwhile. If the task is cancelled, the async user
    code the thread runs for it (if any) is cancelled too and, with ``settle``,
    the task waits for the thread to finish (the operation settles its state)
    before the cancellation goes on. Synchronous user code cannot be
    interrupted: the task is released at once and the thread finishes alone.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    link = Link(loop)
    done: asyncio.Future[R] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(outcome: tuple[bool, Any]) -> None:
        if done.cancelled():
            return
        if outcome[0]:
            done.set_result(outcome[1])
        else:
            done.set_exception(outcome[1])

    def work() -> None:
        _LOCAL.link = link
        try:
            outcome: tuple[bool, Any] = (True, context.run(fn))
        except BaseException as error:  # handed to the awaiting task
            outcome = (False, error)
        finally:
            _LOCAL.link = None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the result
            loop.call_soon_threadsafe(deliver, outcome)

    threading.Thread(target=work, name="stepfsm-async", daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        if link.cancel() and settle:
            while not done.done():  # the coroutine's clean-up, then the state settles
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
        raise


def run_coroutine(coro: Coroutine[Any, Any, R], marker: object) -> R:
    """In a linked worker thread: run ``coro`` on the linked task's loop; wait for it.

    ``marker`` goes on the coroutine's task-local :func:`running` stack. A
    cancellation arrives as :class:`asyncio.CancelledError`.

    Raises:
        RuntimeError: this thread is not a linked worker (``coro`` is closed).
    """
    import asyncio
    import concurrent.futures

    link = bridging()
    if link is None:
        coro.close()
        raise RuntimeError("stepfsm: async user code outside an async operation")
    with link.lock:
        if link.cancelled:
            coro.close()
            raise asyncio.CancelledError
        inner = asyncio.run_coroutine_threadsafe(_marked(coro, marker), link.loop)
        link.inner = inner
    try:
        return inner.result()
    except concurrent.futures.CancelledError:
        raise asyncio.CancelledError from None
    finally:
        link.inner = None


async def _marked(coro: Coroutine[Any, Any, R], marker: object) -> R:
    _RUNNING.set((*_RUNNING.get(), marker))  # this task's own context: no reset needed
    return await coro


async def wait(future: asyncio.Future[None], timeout: float) -> None:
    """Await the shared ``future`` for at most ``timeout`` seconds (never cancelling it)."""
    import asyncio

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(future), timeout)


def wake(futures: dict[asyncio.AbstractEventLoop, asyncio.Future[None]]) -> None:
    """Resolve each loop's shared future, from any thread."""
    for loop, future in futures.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: its waiters are gone
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
