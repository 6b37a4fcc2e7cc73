"""Observing real calls: run an operation on a stateful object and judge it by the model.

:func:`perform` runs one operation and returns what happened (never raises),
:func:`aperform` the same for an awaited operation; :func:`caller` tells whose
call the current code serves; :func:`ran_from` reads the step's own code that
ran from lifecycle history; :func:`mismatches` says how an observed call
differs from the model's result. :class:`LoopThread` is an event loop running
in a thread of its own, for issuing awaited calls from synchronous code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import itertools
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from ..errors import DuplicateLoadWarning, LeakWarning
from ..machine import TransitionRecord, lifecycle
from ._ops import OPS, AnyOp, Behaviour, Kind, Op, Ran, model_op

if TYPE_CHECKING:
    import asyncio

    from .model import Result

__all__ = [
    "LoopThread",
    "Observed",
    "aperform",
    "caller",
    "default_ause",
    "default_use",
    "is_async_step",
    "mismatches",
    "new_caller",
    "perform",
    "ran_from",
    "records_after",
]

R = TypeVar("R")

#: The id of the awaited call the current code serves (set by :func:`aperform`).
_CALLER: Final[contextvars.ContextVar[int | None]] = contextvars.ContextVar(
    "stepfsm_testing_caller", default=None
)
#: Ids of awaited calls: negative, so they never equal a thread's ident.
_CALL_IDS: Final = itertools.count(-1, -1)


def caller() -> int:
    """Whose call the code running now serves: an id for each call.

    Inside an awaited call made by :func:`aperform` (in the calling task, in
    the worker thread stepfsm runs a sync step's operation in, and in an async
    step's own code) it is that call's id, a negative number
    (:attr:`Observed.caller`); anywhere else, the current thread's ident.
    A fake step that records which call ran its code records this.
    """
    ident = _CALLER.get()
    return threading.get_ident() if ident is None else ident


def new_caller() -> int:
    """A fresh id for an awaited call (for :func:`aperform`'s ``call_id``)."""
    return next(_CALL_IDS)


def is_async_step(obj: object) -> bool:
    """Whether ``obj`` is an async step (``async def`` load and unload, docs/design.md §10)."""
    # Known only to the class's stepfsm configuration, which has no public reader.
    return bool(getattr(getattr(type(obj), "__stepfsm__", None), "is_async", False))


class Observed(NamedTuple):
    """What one real call did.

    Attributes:
        error: the exception it raised, or ``None``.
        returned: what it returned (compared only for ``ensure_loaded``).
        warnings: the classes of the warnings it emitted.
        ran: the step's own code that ran, with how each call ended
            (``None`` when unknown).
        caller: who made the call (:func:`caller`): the thread's ident, or
            the awaited call's own id.
    """

    error: BaseException | None
    returned: object
    warnings: tuple[type[Warning], ...] = ()
    ran: Ran | None = None
    caller: int | None = None


def default_use(obj: object) -> object:
    """The default ``use`` of a step: ``lifecycle(obj).require_loaded("use")``."""
    lifecycle(obj).require_loaded("use")
    return None


async def default_ause(obj: object) -> object:
    """The default ``ause`` of a step: ``await lifecycle(obj).arequire_loaded("use")``."""
    await lifecycle(obj).arequire_loaded("use")
    return None


def perform(
    obj: object,
    op: Op,
    *,
    use: Callable[[object], object] = default_use,
    record_warnings: bool = True,
) -> Observed:
    """Run ``op`` on a real stateful object and return what happened (never raises).

    ``load``/``unload`` go through the object's own wrapped methods, the
    others through its :class:`~stepfsm.Lifecycle`; ``use`` calls ``use(obj)``.
    Any exception the call raises, ``KeyboardInterrupt`` included, is returned.
    """
    lc = lifecycle(obj)
    # The names of the wrapped load/unload methods (``@stateful(load=..., unload=...)``)
    # are known only to the class's stepfsm configuration, which has no public reader.
    names = getattr(type(obj), "__stepfsm__", None)
    error: BaseException | None = None
    returned: object = None
    with warnings.catch_warnings(record=True) as caught:
        if record_warnings:
            warnings.simplefilter("always")
        try:
            if op == "load":
                getattr(obj, names.load if names else "load")()
            elif op == "unload":
                getattr(obj, names.unload if names else "unload")()
            elif op == "unload_force":
                lc.unload(force=True)
            elif op == "ensure_loaded":
                returned = lc.ensure_loaded()
            elif op == "reload":
                lc.reload()
            elif op == "reload_force":
                lc.reload(force=True)
            elif op == "acquire":
                lc.acquire()
            elif op == "release":
                lc.release()
            elif op == "use":
                returned = use(obj)
            elif op != "copy":
                raise ValueError(f"unknown operation {op!r}")
        except BaseException as raised:  # returned to the caller, which judges it
            error = raised
    return Observed(error, returned, tuple(w.category for w in caught), None, threading.get_ident())


async def aperform(
    obj: object,
    op: AnyOp,
    *,
    ause: Callable[[object], Awaitable[object]] = default_ause,
    use: Callable[[object], object] = default_use,
    record_warnings: bool = True,
    blocks: list[Any] | None = None,
    call_id: int | None = None,
) -> Observed:
    """Await ``op`` on a real stateful object and return what happened (never raises).

    An awaited operation (``aload``...) of an async step goes through the
    object's own wrapped ``async def`` methods, of a sync step through its
    :class:`~stepfsm.Lifecycle` (``aload()``...); ``ause`` awaits
    ``ause(obj)``; a synchronous ``op`` runs as :func:`perform` would (it
    blocks the loop). ``aenter`` enters a new ``lifecycle(obj).aloaded()``
    block and pushes it on ``blocks``; ``aexit`` leaves the last block on
    ``blocks`` (with none, a block never entered, which holds nothing: it is
    refused like a ``release()`` without an ``acquire()``). The call runs
    under the :func:`caller` id ``call_id`` (by default a new one; a negative
    number), which :attr:`Observed.caller` reports. Any exception,
    ``KeyboardInterrupt`` and ``CancelledError`` included, is returned.
    """
    if op in OPS:
        return perform(obj, op, use=use, record_warnings=record_warnings)
    lc = lifecycle(obj)
    names = getattr(type(obj), "__stepfsm__", None)
    own = is_async_step(obj) and names is not None
    ident = new_caller() if call_id is None else call_id
    token = _CALLER.set(ident)
    error: BaseException | None = None
    returned: object = None
    recording = warnings.catch_warnings(record=True) if record_warnings else _not_recording()
    with recording as caught:
        if record_warnings:
            warnings.simplefilter("always")
        try:
            if op == "aload":
                returned = await (getattr(obj, names.load)() if own else lc.aload())  # type: ignore[union-attr]
            elif op == "aunload":
                returned = await (getattr(obj, names.unload)() if own else lc.aunload())  # type: ignore[union-attr]
            elif op == "aunload_force":
                returned = await lc.aunload(force=True)
            elif op == "aensure_loaded":
                returned = await lc.aensure_loaded()
            elif op == "areload":
                returned = await lc.areload()
            elif op == "areload_force":
                returned = await lc.areload(force=True)
            elif op == "aenter":
                block = lc.aloaded()
                await block.__aenter__()
                if blocks is not None:
                    blocks.append(block)
            elif op == "aexit":  # a block never entered holds nothing: refused like release()
                block = blocks.pop() if blocks else lc.aloaded()
                await block.__aexit__(None, None, None)
            elif op == "ause":
                returned = await ause(obj)
            else:
                raise ValueError(f"unknown operation {op!r}")
        except BaseException as raised:  # returned to the caller, which judges it
            error = raised
        finally:
            _CALLER.reset(token)
    return Observed(error, returned, tuple(w.category for w in caught or ()), None, ident)


@contextlib.contextmanager
def _not_recording() -> Iterator[None]:
    """In place of ``catch_warnings``, which is not safe while other threads or tasks warn."""
    yield None


def ran_from(records: Sequence[TransitionRecord]) -> Ran:
    """The user calls a run of transition records shows (``begin_*`` then its end)."""
    ran: list[tuple[Kind, Behaviour]] = []
    kind: Kind | None = None
    for record in records:
        if record.trigger in ("begin_load", "begin_unload"):
            kind = "load" if record.trigger == "begin_load" else "unload"
        elif kind is not None:
            how: Behaviour = "ok"
            if record.trigger == "fail":
                how = "error" if isinstance(record.error, Exception) else "interrupt"
            ran.append((kind, how))
            kind = None
    return tuple(ran)


def records_after(history: Sequence[TransitionRecord], mark: object) -> list[TransitionRecord]:
    """The records of ``history`` after ``mark`` (its last record before a call; all if gone)."""
    records = list(history)
    for index in range(len(records) - 1, -1, -1):
        if records[index] is mark:
            return records[index + 1 :]
    return records


def _name(error: type[BaseException] | None) -> str:
    return "nothing" if error is None else error.__name__


def mismatches(result: Result, op: AnyOp, observed: Observed) -> list[str]:
    """How a real call (``observed``) differs from the model's ``result``; empty when it matches.

    Compares the error class, ``ensure_loaded()``'s return value, the
    warnings (``DuplicateLoadWarning`` aside) and, when known, the step's own
    code that ran.
    """
    problems: list[str] = []
    op = model_op(op)
    got = type(observed.error) if observed.error is not None else None
    if got is not result.error:
        detail = f" ({observed.error})" if observed.error is not None else ""
        problems.append(f"it raised {_name(got)}{detail}, expected {_name(result.error)}")
    if op == "ensure_loaded" and result.error is None and observed.returned != result.returned:
        problems.append(f"it returned {observed.returned!r}, expected {result.returned!r}")
    # a duplicate load and a leak are not outcomes of the docs/design.md §2 table (a leak may
    # be the kit's own frames holding a value while it observes): checked by their own tests
    warned = {
        w for w in observed.warnings if not issubclass(w, (DuplicateLoadWarning, LeakWarning))
    }
    expected = {result.warning} if result.warning is not None else set()
    if warned != expected:
        shown = ", ".join(sorted(w.__name__ for w in warned)) or "none"
        problems.append(f"it warned {shown}, expected {_name(result.warning)}")
    if observed.ran is not None and observed.ran != result.ran:
        problems.append(
            f"the step's own code ran {_calls(observed.ran)}, expected {_calls(result.ran)}"
        )
    return problems


def _calls(ran: Ran) -> str:
    if not ran:
        return "not at all"
    return "[" + ", ".join(kind + ("" if how == "ok" else f" ({how})") for kind, how in ran) + "]"


class LoopThread:
    """An event loop that runs in a daemon thread of its own until :meth:`close`.

    :meth:`submit` and :meth:`run` hand it coroutines from any thread. A
    ``KeyboardInterrupt`` that a task lets escape stops a loop's
    ``run_forever()`` (as in ``asyncio.run``); this one goes on serving.
    """

    def __init__(self, name: str = "stepfsm-testing-loop") -> None:
        import asyncio

        self.loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        self.escaped: list[BaseException] = []
        self._closing = False
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        while not self._closing:
            try:
                self.loop.run_forever()
            except BaseException as escaped:  # a task's KeyboardInterrupt: keep serving
                self.escaped.append(escaped)

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        """Run ``coro`` as a task on the loop; its future."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        """Run ``coro`` as a task on the loop and wait for its result.

        Raises:
            TimeoutError: it did not finish within ``timeout`` seconds (it is cancelled).
        """
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"an awaited call did not finish within {timeout:g} s") from None

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what still runs, stop the loop, join its thread and close it."""
        import asyncio

        if self._closing:
            return
        self._closing = True

        def stop() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)  # after the cancellations are delivered

        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()
