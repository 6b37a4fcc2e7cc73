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
  any thread (:func:`wake`) when a claim is released; :func:`watch` is the
  one timer per future that resolves it early when the claim it waits out
  is abandoned (the waiting tasks do not poll, however many there are).
* :class:`Handoff` hands a result the worker produced (a hold) to the task,
  unless the task was cancelled first; :func:`detached` lets a worker whose
  task was cancelled still run clean-up code on the task's loop.

``asyncio`` is imported on first use: ``import stepfsm`` stays light.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator

from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
    import contextvars
    from typing import Any, Final, TypeVar

    R = TypeVar("R")

__all__ = [
    "Handoff",
    "Link",
    "bridging",
    "cancelled",
    "detached",
    "in_thread",
    "run_coroutine",
    "running",
    "wait",
    "wake",
    "watch",
]


#: The markers (``(lifecycle, operation)``) of the async user code the current
#: task runs, innermost last: the task-local twin of the registry's thread stack.
#: One context variable, made by the first async user code that runs
#: (:func:`_running`): ``contextvars`` is imported with ``asyncio``, not here.
_RUNNING: Final[list[contextvars.ContextVar[tuple[object, ...]]]] = []
_LOCAL: Final = threading.local()


def running() -> tuple[object, ...]:
    """The markers of the async user code the current task is running (none: ``()``)."""
    return _RUNNING[0].get() if _RUNNING else ()


def _running() -> contextvars.ContextVar[tuple[object, ...]]:
    """The context variable behind :func:`running`: the first one ever made.

    No lock (a fork could leave one held): two threads that both find none
    each append one, and both use the first.
    """
    if not _RUNNING:
        import contextvars

        _RUNNING.append(contextvars.ContextVar("stepfsm_running", default=()))
    return _RUNNING[0]


class Link:
    """A worker thread's tie to the task that awaits it."""

    __slots__ = ("cancelled", "inner", "lock", "loop", "origin", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: object = None) -> None:
        self.loop = loop
        #: the task that awaits the thread (its guarded calls must not hold up the thread)
        self.origin = origin
        self.lock = threading.Lock()
        self.cancelled = False
        #: the future of the async user code the thread runs on ``loop``, while it runs
        self.inner: concurrent.futures.Future[Any] | None = None
        #: the task on ``loop`` that runs that code, once it started (set on the loop)
        self.task: asyncio.Task[Any] | None = None

    def cancel(self) -> bool:
        """On the loop, the task was cancelled: cancel its async user code; ``False`` if none.

        The user code's task is cancelled, not the future the thread waits on:
        the thread (and with it the operation) goes on until that code has
        really ended, its ``finally`` blocks and ``await``-ed clean-up included.
        A task that has not started yet sees ``cancelled`` and never runs it.
        """
        with self.lock:
            self.cancelled = True
            inner = self.inner
        if inner is None:
            return False
        task = self.task
        if task is not None:
            task.cancel()
        return True


def on_loop_thread() -> bool:
    """Whether an event loop is running on the current thread."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return False
    try:
        aio.get_running_loop()
    except RuntimeError:
        return False
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
    import contextvars

    loop = asyncio.get_running_loop()
    link = Link(loop, asyncio.current_task(loop))
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
            if link.cancelled:  # the task was cancelled before this thread started: skip fn
                raise cancelled()
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
        done.add_done_callback(_dropped)  # nobody takes the outcome: never "not retrieved"
        if link.cancel() and settle:
            while not done.done():  # the coroutine's clean-up, then the state settles
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
        raise


def _dropped(future: asyncio.Future[Any]) -> None:
    """Mark an outcome nobody awaits any more as seen (asyncio logs unseen exceptions)."""
    if not future.cancelled():
        future.exception()


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
        inner = asyncio.run_coroutine_threadsafe(_marked(coro, marker, link), link.loop)
        link.inner = inner
    try:
        return inner.result()
    except concurrent.futures.CancelledError:
        raise asyncio.CancelledError from None
    finally:
        link.inner = None


async def _marked(coro: Coroutine[Any, Any, R], marker: object, link: Link) -> R:
    import asyncio

    if link.cancelled:  # cancelled between run_coroutine() and this task's start
        coro.close()
        raise asyncio.CancelledError
    markers = _running()
    markers.set((*markers.get(), marker))  # this task's own context: no reset needed
    link.task = asyncio.current_task()
    try:
        return await coro
    finally:
        link.task = None


def cancelled() -> BaseException:
    """The :class:`asyncio.CancelledError` a worker raises for a task that gave up."""
    import asyncio

    return asyncio.CancelledError()


@contextlib.contextmanager
def detached(always: bool = False) -> Iterator[None]:
    """In a worker: run the block with a fresh link to its loop, out of the task's reach.

    For clean-up that a cancellation of the task must not cut short (releasing
    the holds a failed load took, the hold of an ``async with`` block): the
    block does not give up waiting for the step, and async user code it runs
    goes ahead on the loop instead of being refused or cancelled. Without
    ``always``, only once the task has been cancelled. Outside a worker it
    does nothing.
    """
    link = bridging()
    if link is None or not (always or link.cancelled):
        yield
        return
    _LOCAL.link = Link(link.loop)
    try:
        yield
    finally:
        _LOCAL.link = link


class Handoff:
    """A result a worker hands to its task, unless the task left (was cancelled) first.

    Exactly one side ends up owning it: the worker if :meth:`give` returns
    ``False``, the task if :meth:`take_back` returns ``True``.
    """

    __slots__ = ("_lock", "_state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = ""  # "", "given" or "left"

    def give(self) -> bool:
        """In the worker, once the result exists: ``False`` if the task has left."""
        with self._lock:
            if self._state:
                return False
            self._state = "given"
            return True

    def take_back(self) -> bool:
        """In the task, leaving early: ``True`` if the worker had given the result already."""
        with self._lock:
            if self._state:
                return True
            self._state = "left"
            return False


async def wait(event: asyncio.Event, timeout: float | None) -> None:
    """Await the shared ``event`` (one future per waiting task, set in one pass).

    At most ``timeout`` seconds if given. A cancelled waiter drops only its own
    future: the event and the other waiters are untouched.
    """
    import asyncio

    if timeout is None:
        await event.wait()
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def watch(
    event: asyncio.Event, loop: asyncio.AbstractEventLoop, still: Callable[[], bool], every: float
) -> None:
    """On ``loop``, every ``every`` seconds: set ``event`` unless ``still()`` holds.

    One timer per shared event, so the tasks waiting on it need no timeout
    of their own (1,000 waiting tasks would otherwise wake up every
    ``every`` seconds and stall the loop). It stops once the event is set.
    """

    def check() -> None:
        if event.is_set():
            return
        if still():
            loop.call_later(every, check)
        else:
            event.set()

    loop.call_later(every, check)


def wake(events: dict[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
    """Set each loop's shared event, from any thread."""
    for loop, event in events.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: its waiters are gone
            loop.call_soon_threadsafe(event.set)
