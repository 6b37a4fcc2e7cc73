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
* An ``async def`` guarded call is suspended most of the time it runs, and
  the task that runs it may be the one that unloads: it puts a :class:`Call`
  (method, task, start) on the lifecycle's list on entry, before it reads
  the state, and takes it off on exit.
* Calls on the unloading thread itself (found on its own stack: frames of
  guarded code holding the token) or of the task it serves never count:
  waiting for them would never end.

Nothing here looks at another thread's stack: on CPython 3.11 walking
``sys._current_frames()`` crashed the interpreter (a segmentation fault in
``frame.f_back``, seen in this project's tests) and can hang it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import time
import weakref
from collections.abc import Callable
from types import CodeType, FrameType, GeneratorType
from typing import Any, Final, NamedTuple

__all__ = ["HOLDER", "Call", "RunningCall", "held_here", "holds", "register", "stale", "wait"]

#: The local variable in which a guarded call holds the step's token.
HOLDER: Final = "_stepfsm_t"
_getframe: Final = sys._getframe
_time: Final = time.time


class RunningCall(NamedTuple):
    """A guarded call that was still running when an unload gave up waiting for it.

    For an ``async def`` method: ``method`` is its name, ``where`` the task
    (``"task 'Task-3'"``) and ``since`` when the call started. A synchronous
    call is counted, not recorded (that keeps it free): ``method`` and
    ``where`` are ``None`` and ``since`` is when the unload began to wait.
    """

    method: str | None
    where: str | None
    since: float

    def __str__(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.since))
        if self.method is None:
            return f"a guarded call on another thread (running at {clock})"
        return f"{self.method}() in {self.where} (since {clock})"


#: A guarded ``async def`` call in flight: (method, task, start as ``time.time()``, the
#: list it is on). A tuple: the async guard makes one per call, and a tuple costs a
#: fraction of a class instance.
Call = tuple[str, object, float, list[Any]]


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
    codes = _CODES
    while frame is not None:
        code = frame.f_code
        ref = codes.get(id(code))
        if ref is not None and ref() is code:
            values = frame.f_locals
            token = values.get(HOLDER)
            if token is not None:
                found.append(token)
                if type(values) is dict:  # a snapshot, not the frame's own variables
                    values[HOLDER] = None
        frame = frame.f_back
    return found


def stale(token: object, owner: object) -> int:
    """How many references to ``token`` are held by something other than a running call.

    The running calls' frames do not show their variables to the garbage
    collector; everything that does is not a running call: a finished frame
    still holding it (an interrupt landed between a guard's last bytecodes,
    and a traceback keeps the frame), a suspended generator, a dict copied
    from the step's ``__dict__`` or made by ``locals()``. Only ``owner``
    (the lifecycle) and a generator running now hold it for real. Scans the
    heap: called only while calls seem to run.
    """
    count = 0
    for holder in gc.get_referrers(token):
        if holder is owner or (isinstance(holder, GeneratorType) and holder.gi_running):
            continue
        count += sum(1 for value in gc.get_referents(holder) if value is token)
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
