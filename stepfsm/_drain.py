"""Drain: before an unload's code runs, wait for the guarded calls still running elsewhere.

``docs/design.md`` §11 and ``docs/decisions.md``, "Drain counts calls by
reference count". How the running calls are known:

* A synchronous guarded call reads the step's loaded flag, whose value while
  the step is loaded is the load's ``registry.Token``, into a local variable
  (``_stepfsm_t``) and clears that variable when it returns (a ``finally``).
  The token's reference count is then the number of calls running, at the
  cost of one store per call. An unload first takes the flag away (the state
  is ``unloading``), then waits for the count to come down: a call that read
  the token before holds a reference, one that reads the flag after finds it
  gone and takes the slow path, which waits for the unload to end. (Each step
  is one bytecode under the GIL.) A guarded generator holds the token only
  while it runs (``_guard``'s delegation), so a suspended one never holds an
  unload up.
* An ``async def`` guarded call holds the token the same way, in its
  coroutine's variable, for as long as it runs, suspended or not: it is
  counted like the others. A coroutine shows its variables to the garbage
  collector, so :func:`stale` leaves unfinished coroutines out, and only
  when an unload gives up does :func:`coroutines` name them (method and task).
* Calls on the unloading thread itself (found on its own stack: frames of
  guarded code holding the token; a task's running coroutines are on it too)
  or suspended in the task an ``aunload()`` serves (:func:`held_in_task`)
  never count: waiting for them would never end.

Nothing here looks at another thread's stack: on CPython 3.11 walking
``sys._current_frames()`` crashed the interpreter (a segmentation fault in
``frame.f_back``, seen in this project's tests) and can hang it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import sys
import time
import weakref
from collections.abc import Callable
from types import CodeType, CoroutineType, FrameType, GeneratorType

from ._typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "HOLDER",
    "RunningCall",
    "coroutines",
    "held_here",
    "held_in_task",
    "holds",
    "register",
    "stale",
    "wait",
]

#: The local variable in which a guarded call holds the step's token.
HOLDER: Final = "_stepfsm_t"
_getframe: Final = sys._getframe
_CO_COROUTINE: Final = inspect.CO_COROUTINE


class RunningCall(NamedTuple):
    """A guarded call that was still running when an unload gave up waiting for it.

    For an ``async def`` method: ``method`` is its name and ``where`` the task
    (``"task 'Task-3'"``). A synchronous call is counted, not recorded (that
    keeps it free): ``method`` and ``where`` are ``None``. ``since`` is when
    the unload began to wait (the call started before).
    """

    method: str | None
    where: str | None
    since: float

    def __str__(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.since))
        if self.method is None:
            return f"a guarded call on another thread (running at {clock})"
        return f"{self.method}() in {self.where} (running at {clock})"


#: ``id(code)`` -> a weak reference to the code of a guarded call (inline guard,
#: wrapper, generator delegation), whose frames hold the token in :data:`HOLDER`.
_CODES: Final[dict[int, weakref.ref[CodeType]]] = {}


def register(code: CodeType) -> None:
    """Frames running ``code`` hold the token of a guarded call in :data:`HOLDER`."""
    key = id(code)
    _CODES[key] = weakref.ref(code, functools.partial(_forget, key))


def _forget(key: int, ref: weakref.ref[CodeType]) -> None:
    if _CODES.get(key) is ref:  # not a newer code object at the same address
        with contextlib.suppress(KeyError):
            del _CODES[key]


def holds(token: object) -> int:
    """How many guarded calls on this thread's stack hold ``token``."""
    if token is None:  # no load's token: a frame whose variable is None holds nothing
        return 0
    return sum(held is token for held in held_here())


def held_here() -> list[object]:
    """The tokens the guarded calls on this thread's stack hold, one per call.

    Reading a running frame's locals makes a snapshot dict that the frame
    keeps (CPython before 3.13): its entry is set to ``None``, or it would be
    one more reference to the token.
    """
    found: list[object] = []
    frame: FrameType | None = _getframe(1)
    while frame is not None:
        if _guarded(frame.f_code):
            values = frame.f_locals
            token = values.get(HOLDER)
            if token is not None:
                found.append(token)
                if type(values) is dict:  # a snapshot, not the frame's own variables
                    values[HOLDER] = None
        frame = frame.f_back
    return found


def _guarded(code: object) -> bool:
    ref = _CODES.get(id(code))
    return ref is not None and ref() is code


def _holds_token(coroutine: Any, token: object) -> bool:
    """Whether the variables of ``coroutine`` include ``token``.

    Read through the garbage collector's view, which makes no copy: reading
    ``cr_frame.f_locals`` would store one more reference in the frame. (Python
    3.10 keeps the variables in the frame object, 3.11 in the coroutine.)
    """
    frame = coroutine.cr_frame
    for holder in (coroutine,) if frame is None else (coroutine, frame):
        for value in gc.get_referents(holder):  # a loop: a closure's cell would refer to it
            if value is token:
                return True
    return False


def _running_call(holder: object) -> bool:
    """Whether ``holder`` is (the variables of) a guarded ``async def`` call that runs."""
    coroutine = _coroutine_of(holder)
    return coroutine is not None and _guarded(coroutine.cr_code)


def _coroutine_of(holder: object) -> Any:
    """The unfinished coroutine whose variables ``holder`` is, or ``None``."""
    if isinstance(holder, CoroutineType):
        return holder if holder.cr_frame is not None else None
    if isinstance(holder, FrameType) and holder.f_code.co_flags & _CO_COROUTINE:
        for referrer in gc.get_referrers(holder):  # Python 3.10: the frame holds them
            if isinstance(referrer, CoroutineType) and referrer.cr_frame is holder:
                return referrer
    return None


def held_in_task(task: object, token: object) -> int:
    """How many guarded coroutines in ``task``'s chain of awaits hold ``token``.

    ``task`` awaits the unload this thread runs for it: once it is suspended
    (it starts this thread a moment before it awaits it: waited for, up to a
    second), its chain stands still while it is read.
    """
    get_coro = getattr(task, "get_coro", None)
    awaited: Any = get_coro() if callable(get_coro) else None
    deadline = time.monotonic() + 1.0
    while getattr(awaited, "cr_running", False) and time.monotonic() < deadline:
        time.sleep(0.0001)
    count = 0
    for _ in range(10_000):  # a chain of awaits, not a cycle; bounded all the same
        if isinstance(awaited, CoroutineType):
            if (
                _guarded(awaited.cr_code)
                and awaited.cr_frame is not None
                and _holds_token(awaited, token)
            ):
                count += 1
            awaited = awaited.cr_await
        elif isinstance(awaited, GeneratorType):  # an ``__await__`` written as a generator
            awaited = awaited.gi_yieldfrom
        else:  # a future, or an async generator's step (which does not show its generator)
            return count
    return count


def coroutines(token: object, skip: object = None) -> list[tuple[str, str]]:
    """(method, task) of each unfinished guarded coroutine holding ``token``, but ``skip``'s.

    Scans the heap (once per coroutine and level of awaits): only for the
    error of an unload that gave up waiting.
    """
    found: list[tuple[str, str]] = []
    for holder in gc.get_referrers(token):
        coroutine = _coroutine_of(holder)
        if coroutine is not None and _guarded(coroutine.cr_code):
            task = _task_of(coroutine)
            if task is None or task is not skip:
                found.append((coroutine.cr_code.co_name, _task_name(task)))
    return found


def _task_of(coroutine: object) -> object:
    """The task whose chain of awaits includes ``coroutine``, or ``None``."""
    current = coroutine
    for _ in range(100):
        outer = None
        for referrer in gc.get_referrers(current):
            get_coro = getattr(referrer, "get_coro", None)
            if callable(get_coro) and get_coro() is current:
                return referrer
            if getattr(referrer, "cr_await", None) is current:
                outer = referrer
        if outer is None:
            return None
        current = outer
    return None


def _task_name(task: object) -> str:
    name = getattr(task, "get_name", None)
    return f"task {name()!r}" if callable(name) else "a coroutine outside any task"


def stale(token: object, owner: object) -> int:
    """How many references to ``token`` are held by something other than a running call.

    The running calls' frames do not show their variables to the garbage
    collector; everything that does is not a running call: a finished frame
    still holding it (an interrupt landed between a guard's last bytecodes,
    and a traceback keeps the frame), a suspended generator, a dict copied
    from the step's ``__dict__`` or made by ``locals()``. Only ``owner``
    (the lifecycle), a generator running now and an unfinished coroutine (a
    guarded ``async def`` call, suspended or running) hold it for real. Scans
    the heap: called only while calls seem to run.
    """
    # No generator expression or closure over ``token`` here (nor in what runs while
    # the referrers are read): its cell would be one more referrer, counted as stale.
    count = 0
    for holder in gc.get_referrers(token):
        if (
            holder is owner
            or (isinstance(holder, GeneratorType) and holder.gi_running)
            or _running_call(holder)
        ):
            continue
        for value in gc.get_referents(holder):
            if value is token:
                count += 1
    return count


def wait(
    find: Callable[[float], list[RunningCall]],
    timeout: float | None,
    sleep: Callable[[float], Any] = time.sleep,
) -> tuple[list[RunningCall], float]:
    """Poll ``find(began)`` until it finds nothing or ``timeout`` expires.

    Returns ``(the calls still running, seconds waited)``. The calls do not
    announce their return (the hot path stays free), so the wait polls, from
    0.5 ms up to 50 ms between looks.
    """
    start = time.monotonic()
    began = time.time()
    pause = 0.0005
    while True:
        still = find(began)
        waited = time.monotonic() - start
        if not still or (timeout is not None and waited >= timeout):
            return still, waited
        if timeout is not None:
            pause = min(pause, timeout - waited)
        sleep(pause)
        pause = min(pause * 2, 0.05)
