"""Every error and warning stepfsm raises or emits, and the text of each.

Two kinds of refusal are kept apart, as trio does with ``ClosedResourceError``
and ``BrokenResourceError``:

* :class:`StepStateError` and its subclasses: *your code* asked for something
  the step's current state does not allow (``generate()`` before ``load()``,
  ``load()`` twice). Nothing ran and nothing changed.
* :class:`TransitionError` and its subclasses: something *outside* stepfsm
  failed (the step's own ``load()`` or ``unload()`` raised). The step is now
  ``failed`` and the original exception is the ``__cause__``.

Each error and warning stores its facts as attributes and builds its message
from them, so the text and the data always agree, and each pickles with both
(a distilabel worker sends exceptions back to its parent process). The
functions at the end build the errors whose text depends on a class being
defined (:class:`DefinitionError`) and emit warnings (:func:`emit`).

This module also owns the ``stepfsm`` logger: every warning is logged there
too (``docs/design.md``, section 6).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence

from ._typing import TYPE_CHECKING
from .states import State

if TYPE_CHECKING:
    from typing import Any, Final

    from ._drain import RunningCall

__all__ = [
    "AlreadyLoadedError",
    "BudgetExceededError",
    "CleanupWarning",
    "DefinitionError",
    "DiagramError",
    "DuplicateLoadWarning",
    "GroupLoadError",
    "LeakWarning",
    "LoadError",
    "NotLoadedError",
    "RepeatedLoadWarning",
    "ResourceLeakError",
    "StepFSMError",
    "StepFSMWarning",
    "StepFailedError",
    "StepInUseError",
    "StepStateError",
    "TransitionError",
    "TransitionInProgressError",
    "UnloadError",
    "UnloadedUseWarning",
]

log: Final = logging.getLogger("stepfsm")
log.addHandler(logging.NullHandler())  # a library never prints by itself


def _rebuild(cls: Any, message: str, attrs: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    BaseException.__init__(error, message)
    error.__dict__.update(attrs)
    return error


def _clock(when: float | None) -> str:
    if when is None:
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(when))


def _since(when: float | None) -> str:
    return "" if when is None else f" since {_clock(when)}"


def format_bytes(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _leak_message(step: str, leaked: Sequence[Any], bytes_leaked: int) -> str:
    count = len(leaked)
    size = f", ~{format_bytes(bytes_leaked)}" if bytes_leaked else ""
    where = [str(item) for item in leaked]
    names = [ref for item in leaked for ref in item.referrers if " " not in ref]  # typeable
    hint = f", e.g. `del {names[0]}`" if names else ""
    many = count != 1
    what = (
        f"unload_all() returned, but {count} object{'s' if many else ''} the loads created"
        if step == "unload_all()"
        else f"unload of {step} returned, but {count} object{'s' if many else ''} its load created"
    )
    return (
        f"{what} {'are' if many else 'is'} still alive{size}: {'; '.join(where)}. The memory "
        f"comes back when the last reference goes: delete what still refers to it{hint}. "
        "lifecycle(step).last_release has the report; on_leak='ignore' turns this check off."
    )


def describe(error: BaseException) -> str:
    """``"Type: text"`` (or just ``"Type"`` when the text is empty)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class StepFSMError(Exception):
    """The root of every error stepfsm raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class StepStateError(StepFSMError):
    """An operation was refused because of the step's current state.

    You get this (or a subclass) when your code asks for something the state
    does not allow; nothing ran and the state did not change. You do not get
    it when the step's own load/unload raised: that is :class:`TransitionError`.

    Attributes:
        step: the step's display name, e.g. ``"TextGeneration 'gen_0'"``.
        state: the state the step was in when the operation was refused.
        operation: the refused operation, e.g. ``"load"`` or ``"generate"``.
    """

    def __init__(self, message: str, *, step: str, state: State, operation: str) -> None:
        self.step = step
        self.state = state
        self.operation = operation
        super().__init__(message)

    @classmethod
    def internal(cls, step: str, state: State, trigger: str) -> StepStateError:
        """The engine refused a trigger that stepfsm fired: a bug in stepfsm."""
        return cls(
            f"{step} cannot {trigger} from state '{state.value}' (an internal stepfsm error; "
            "please report it).",
            step=step,
            state=state,
            operation=trigger,
        )

    @classmethod
    def no_hold(
        cls, step: str, state: State, holder: str, holders: Sequence[str]
    ) -> StepStateError:
        """``release()`` named a holder that holds nothing."""
        return cls(
            f"{step} has no hold by {holder} to release (holders: "
            f"{', '.join(holders) or 'none'}). Call release() once per acquire(), with the "
            "same holder.",
            step=step,
            state=state,
            operation="release",
        )


class AlreadyLoadedError(StepStateError):
    """``load()`` was called on a step that is already loaded.

    You get this from a plain ``load()`` under the default ``on_repeat="raise"``
    policy. You do not get it from ``ensure_loaded()``, from a load made inside
    another step's load (that is an acquire), nor when ``load()`` itself fails
    (that is :class:`LoadError`).
    """

    def __init__(self, step: str, since: float | None, load_s: float | None) -> None:
        self.since = since
        self.load_s = load_s
        took = f", load took {load_s:.1f} s" if load_s is not None else ""
        super().__init__(
            f"{step} is already loaded ({_since(since).strip()}{took}). Use ensure_loaded() "
            "to make this a no-op, reload() to load again, or unload() first.",
            step=step,
            state=State.LOADED,
            operation="load",
        )


class NotLoadedError(StepStateError):
    """A method that needs the loaded resource was called on a step that is not loaded.

    You get this from a guarded method (``generate()``, ``process()``, any name
    in ``guard=``) or ``require_loaded()`` while the step is ``unloaded``, under
    the default ``on_unloaded_use="raise"`` policy. You do not get it while a
    load is running in another thread (the call waits), nor from inside the
    step's own load (the call passes through).
    """

    def __init__(
        self,
        step: str,
        state: State,
        operation: str,
        since: float | None = None,
        message: str | None = None,
    ) -> None:
        self.since = since
        if message is None:
            message = (
                f"{step} is not loaded (state '{state.value}'{_since(since)}), "
                f"so {operation}() cannot run. Call load() or ensure_loaded() first, "
                "or use `with stepfsm.loaded(step):`."
            )
        super().__init__(message, step=step, state=state, operation=operation)


class StepFailedError(NotLoadedError):
    """A method that needs the loaded resource was called on a ``failed`` step.

    The step's last load or unload raised; ``cause`` is that exception. You get
    this instead of a plain :class:`NotLoadedError` so the original error is not
    lost. Call ``load()`` again (it cleans up first) or ``unload()``.
    """

    def __init__(
        self, step: str, operation: str, cause: BaseException | None, since: float | None
    ) -> None:
        self.cause = cause
        what = describe(cause) if cause is not None else "an unknown error"
        super().__init__(
            step,
            State.FAILED,
            operation,
            since,
            message=(
                f"{step} is 'failed'{_since(since)} after {what}, so {operation}() "
                "cannot run. Fix the cause and call load() again (it cleans up first), "
                "or unload() to release what it holds."
            ),
        )


class StepInUseError(StepStateError):
    """The step is in use: held by others, or guarded calls were still running.

    Raised by ``unload()`` or ``reload()`` while other holders remain (holders
    come from ``acquire()``, ``with stepfsm.loaded(step):`` and from steps
    that loaded this one inside their own load); ``unload(force=True)`` and
    ``unload_all()`` evict holders instead. Also raised by an unload whose
    ``drain_timeout`` expired while guarded calls of the step were still
    running on other threads or tasks: the unload code did not run and the
    step is ``failed`` (``docs/design.md`` §11).

    Attributes:
        holders: the display names of the remaining holders.
        calls: the guarded calls still running (:class:`RunningCall`), when
            the drain expired; empty otherwise.
        waited: the seconds the unload waited for them (``None`` if it did not).
    """

    def __init__(
        self,
        step: str,
        state: State,
        operation: str,
        holders: Sequence[str],
        calls: Sequence[RunningCall] = (),
        waited: float | None = None,
    ) -> None:
        self.holders = tuple(holders)
        self.calls = tuple(calls)
        self.waited = waited
        if self.calls:
            count = len(self.calls)
            threads = sum(call.method is None for call in self.calls)
            parts = [str(call) for call in self.calls if call.method is not None]
            if threads:
                parts.append(f"{threads} on other thread{'s' if threads != 1 else ''}")
            message = (
                f"{step} cannot {operation}(): {count} guarded "
                f"call{'s' if count != 1 else ''} of it {'were' if count != 1 else 'was'} still "
                f"running after {waited or 0:.1f} s ({'; '.join(parts)}). Its unload code did "
                "not run, so what it holds is intact, and it is now 'failed'. Let the calls "
                "return, then unload() again; or raise drain_timeout; unload(force=True) does "
                "not wait."
            )
        else:
            count = len(self.holders)
            message = (
                f"{step} cannot {operation}(): it is held by {count} "
                f"holder{'s' if count != 1 else ''} ({', '.join(self.holders)}). Release them "
                f"first (release(), or leave the `with loaded()` block), or call "
                f"{operation}(force=True)."
            )
        super().__init__(message, step=step, state=state, operation=operation)


class BudgetExceededError(StepStateError):
    """A load that its budget cannot fit: nothing could be evicted in time (``docs/design.md`` §12).

    The load did not begin; the step's state is unchanged.

    Attributes:
        pool: the budget's name, e.g. ``"gpu:0"``.
        capacity: its capacity.
        used: what its loading, loaded and unloading steps had booked.
        needed: the cost of the refused load.
        held: each step counted in the pool: ``(name, cost, why it was kept)``.
        waited: the seconds the load waited for room (``None``: its cost alone
            exceeds the capacity, so it did not wait).
    """

    def __init__(
        self,
        step: str,
        state: State,
        pool: str,
        capacity: float,
        used: float,
        needed: float,
        held: Sequence[tuple[str, float, str]],
        waited: float | None,
    ) -> None:
        self.pool = pool
        self.capacity = capacity
        self.used = used
        self.needed = needed
        self.held = tuple(held)
        self.waited = waited
        amount = format_amount
        if waited is None:
            message = (
                f"Cannot load {step}: its cost ({amount(needed)}) alone exceeds the capacity "
                f"of budget {pool!r} ({amount(capacity)}). Raise the capacity "
                f"(stepfsm.budget({pool!r}, ...)) or lower the step's cost."
            )
        else:
            kept = "; ".join(f"{name} ({amount(cost)}, {why})" for name, cost, why in self.held)
            message = (
                f"Cannot load {step}: budget {pool!r} has {amount(capacity - used)} free of "
                f"{amount(capacity)} and the load needs {amount(needed)}; no step of it could be "
                f"evicted within {waited:g} s. Counted: {kept or 'none'}. Release a holder, "
                "unload a step, or raise the capacity or the timeout."
            )
        super().__init__(message, step=step, state=state, operation="load")


def format_amount(value: float) -> str:
    """A budget amount as text: bytes from 1 KiB up, else the plain number."""
    if value == float("inf"):
        return "unlimited"
    return format_bytes(int(value)) if value >= 1024 else f"{value:g}"


class ResourceLeakError(StepFSMError):
    """An unload returned but what its load created is still alive (``on_leak="raise"``).

    Raised after the step is ``unloaded``: the step's unload code ran and its
    state is final; what is left is a reference held elsewhere.

    Attributes:
        step: the step's display name (or ``"unload_all()"`` for the steps it unloaded).
        leaked: one ``ReleasedObject`` per object still alive (attribute, type,
            size and the paths that still refer to it).
        bytes_leaked: their estimated total size.
    """

    def __init__(self, step: str, leaked: Sequence[Any], bytes_leaked: int) -> None:
        self.step = step
        self.leaked = tuple(leaked)
        self.bytes_leaked = bytes_leaked
        super().__init__(_leak_message(step, self.leaked, bytes_leaked))


class TransitionInProgressError(StepStateError):
    """A load or unload of the step is running and the operation could not wait for it.

    You get this when waiting for another thread's transition took longer than
    the lifecycle's ``timeout``, or when code running on the thread of the
    step's own transition asks for a lifecycle operation on the same step that
    would have to wait for that transition (waiting would deadlock): a
    different operation from inside its load or unload, or any operation from
    a listener, log handler or finalizer that runs during it. Calls of
    ``load()`` and guarded methods inside the step's own load pass straight
    through instead (``unload()`` and guarded methods inside its unload).

    Attributes:
        timeout: the timeout that expired, or ``None`` for a same-thread re-entry.
    """

    def __init__(
        self,
        step: str,
        state: State,
        operation: str,
        timeout: float | None,
        *,
        listener: bool = False,
        on_loop: bool = False,
        draining: bool = False,
    ) -> None:
        self.timeout = timeout
        if timeout is None and draining:
            message = (
                f"{step} cannot {operation}() now: another thread's unload is waiting for "
                "the guarded call this thread is running to return, and waiting here for "
                "that unload would never end. Let the call return first."
            )
        elif timeout is None and on_loop:
            message = (
                f"{step} cannot {operation}() while it is '{state.value}': its async "
                "transition runs on this thread's event loop, which a synchronous wait here "
                "would block for good. Await instead: an async guarded method, or "
                "await stepfsm.aensure_loaded(step) before the call."
            )
        elif timeout is None and listener:
            message = (
                f"{step} cannot {operation}() from a listener (or log handler or finalizer) "
                f"running on the thread of its own transition (state '{state.value}'); "
                "waiting would deadlock. Do it after the operation returns, or from "
                "another thread."
            )
        elif timeout is None:
            if state is State.LOADING or state is State.UNLOADING:
                doing = "load" if state is State.LOADING else "unload"
                where = f"from inside its own {doing}"
            else:
                doing, where = "transition", "while its own transition runs"
            message = (
                f"{step} cannot {operation}() {where} on the same thread "
                f"(state '{state.value}'); waiting would deadlock. Move the call out of "
                f"{doing if doing != 'transition' else 'the listener or handler'}(), after it "
                "returns."
            )
        else:
            message = (
                f"{step} is still '{state.value}' after waiting {timeout:g} s, so "
                f"{operation}() gave up. Wait longer (raise the lifecycle's timeout) or find "
                "out why the load/unload in the other thread is slow (stepfsm.status())."
            )
        super().__init__(message, step=step, state=state, operation=operation)


class TransitionError(StepFSMError):
    """The step's own load or unload code raised; the step is now ``failed``.

    The original exception is ``__cause__`` (and ``cause``), its type and text
    are in the message, and the lifecycle keeps it as ``lifecycle.error``.

    Attributes:
        step: the step's display name.
        operation: ``"load"`` or ``"unload"``.
        cause: the exception the step's code raised.
    """

    def __init__(self, step: str, operation: str, cause: BaseException, detail: str = "") -> None:
        self.step = step
        self.operation = operation
        self.cause = cause
        self.state = State.FAILED
        if isinstance(cause, TransitionError):  # a child step's load failed inside ours
            what = f"because {cause.operation}() of {cause.step} failed with "
            root = cause.cause
            while isinstance(root, TransitionError):  # name the deepest cause once
                root = root.cause
            what += describe(root)
        else:
            what = f"with {describe(cause)}"
        super().__init__(
            f"{operation}() of {step} failed {what}{detail}; the step is now "
            "'failed'. Fix the cause and call load() again (it cleans up first), or unload() "
            "to release what it holds."
        )


class LoadError(TransitionError):
    """The step's own ``load()`` raised (or the clean-up before a retried load did).

    You do not get this for a ``KeyboardInterrupt`` or other non-``Exception``
    interruption: those leave the step ``failed`` and propagate unchanged.
    """

    @classmethod
    def in_cleanup(cls, step: str, cause: BaseException) -> LoadError:
        """The clean-up (unload) that runs before a retried load raised; the load did not run."""
        return cls(
            step,
            "load",
            cause,
            detail=" in the clean-up (unload) that runs before a retried load, so the "
            "load did not run",
        )


if sys.version_info >= (3, 11):
    import builtins

    _ExceptionGroup = builtins.ExceptionGroup
else:  # pragma: no cover - CI runs 3.11
    from exceptiongroup import ExceptionGroup as _ExceptionGroup


class GroupLoadError(LoadError, _ExceptionGroup):
    """Loading a group of steps failed; what the call had loaded was unloaded again.

    It is a :class:`LoadError` and an ``ExceptionGroup`` whose ``exceptions``
    are every step's load error (``except* LoadError`` works on it), raised
    once every load of the call has settled and the rollback has run.

    Attributes:
        failed: the display names of the steps whose load failed.
        rolled_back: the display names of the steps this call had loaded and
            unloaded again (reverse order); steps loaded before the call are left alone.
        rollback_errors: what unloading them raised (never in place of the load errors).
        cause: the first load error (``__cause__`` too).
    """

    failed: tuple[str, ...]
    rolled_back: tuple[str, ...]
    rollback_errors: tuple[BaseException, ...]

    def __new__(
        cls,
        failures: Sequence[tuple[str, Exception]],
        rolled_back: Sequence[str] = (),
        rollback_errors: Sequence[BaseException] = (),
    ) -> GroupLoadError:
        message = _group_message(failures, rolled_back, rollback_errors)
        error: GroupLoadError = super().__new__(cls, message, [e for _, e in failures])
        return error

    def __init__(
        self,
        failures: Sequence[tuple[str, Exception]],
        rolled_back: Sequence[str] = (),
        rollback_errors: Sequence[BaseException] = (),
    ) -> None:
        _ExceptionGroup.__init__(
            self,
            _group_message(failures, rolled_back, rollback_errors),
            [e for _, e in failures],
        )
        self.failed = tuple(name for name, _ in failures)
        self.rolled_back = tuple(rolled_back)
        self.rollback_errors = tuple(rollback_errors)
        self.step = f"a group of {len(failures)} failed step{'s' if len(failures) != 1 else ''}"
        self.operation = "load"
        self.cause = failures[0][1]
        self.state = State.FAILED

    def __reduce__(self) -> tuple[Any, ...]:
        failures = list(zip(self.failed, self.exceptions, strict=True))
        return (GroupLoadError, (failures, self.rolled_back, self.rollback_errors))

    def derive(self, excs: Sequence[Exception]) -> GroupLoadError:  # type: ignore[override]
        """What ``split()``, ``subgroup()`` and ``except*`` keep: a ``GroupLoadError`` of
        those failures (with their step names), so ``except LoadError`` still catches it."""
        kept = [
            (name, error)
            for name, error in zip(self.failed, self.exceptions, strict=True)
            if any(error is other for other in excs)
        ]
        return GroupLoadError(kept, self.rolled_back, self.rollback_errors)


def _group_message(
    failures: Sequence[tuple[str, Exception]],
    rolled_back: Sequence[str],
    rollback_errors: Sequence[BaseException],
) -> str:
    count = len(failures)
    first = "; ".join(f"{name}: {describe(_root(error))}" for name, error in failures)
    text = f"the group load failed: {count} step{'s' if count != 1 else ''} did not load ({first})"
    if rolled_back:
        text += f"; unloaded again what this call had loaded: {', '.join(rolled_back)}"
    if rollback_errors:
        text += (
            f"; {len(rollback_errors)} of those unloads raised "
            f"({'; '.join(describe(e) for e in rollback_errors)})"
        )
    return text + ". Fix the cause and load the group again."


def _root(error: BaseException) -> BaseException:
    while isinstance(error, TransitionError):
        error = error.cause
    return error


class UnloadError(TransitionError):
    """The step's own ``unload()`` raised while unloading a ``loaded`` step.

    You do not get this when the unload was a clean-up of an already ``failed``
    step: that emits a :class:`CleanupWarning` instead, so the first error is
    not masked.
    """


class DefinitionError(StepFSMError, TypeError):
    """A class or argument that cannot work, found when it is declared.

    Raised by ``@stateful``/``Stateful`` at class-creation time (no ``load``
    method, a ``load`` that is a coroutine or generator function, a ``guard``
    name that is not callable, an unknown policy or option), never while a
    step is being used.
    """


class DiagramError(StepFSMError):
    """A diagram could not be produced in the requested format (e.g. no Graphviz ``dot``)."""


# ------------------------------------------------------------------- warnings


class StepFSMWarning(UserWarning):
    """The root of every warning stepfsm emits.

    Attributes:
        step: the display name of the step the warning is about.
    """

    def __init__(self, message: str, *, step: str) -> None:
        self.step = step
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class RepeatedLoadWarning(StepFSMWarning):
    """``load()`` on a loaded step under ``on_repeat="warn"``; the call was a no-op."""

    def __init__(self, step: str) -> None:
        super().__init__(
            f"{step} is already loaded; load() did nothing. Use ensure_loaded() to say that "
            "on purpose, or reload() to load again.",
            step=step,
        )


class DuplicateLoadWarning(StepFSMWarning):
    """A second live object with the same class and configuration was loaded.

    Attributes:
        other: the display name of the first object, which is still loaded.
        other_since: when the first object was loaded (``time.time()``).
    """

    def __init__(self, step: str, other: str, other_since: float | None) -> None:
        self.other = other
        self.other_since = other_since
        super().__init__(
            f"{step} has the same configuration as {other}, which is still loaded"
            f"{f' (since {_clock(other_since)})' if other_since is not None else ''}: two "
            "copies now hold the resource. Reuse the first, or free it with "
            "stepfsm.lifecycle(old).unload() or stepfsm.unload_all() (stepfsm.status() "
            "lists both).",
            step=step,
        )


class UnloadedUseWarning(StepFSMWarning):
    """A guarded call on a step that is not loaded, under ``on_unloaded_use="warn"``.

    Attributes:
        state: the state the step was in.
        operation: the guarded method that ran anyway.
        cause: the error that made the step ``failed``, if it is.
    """

    def __init__(
        self, step: str, state: State, operation: str, cause: BaseException | None
    ) -> None:
        self.state = state
        self.operation = operation
        self.cause = cause
        refused = "StepFailedError" if state is State.FAILED else "NotLoadedError"
        super().__init__(
            f"{step} is not loaded (state '{state.value}'), but {operation}() runs anyway "
            "because on_unloaded_use='warn'. Call load() or ensure_loaded() first; under the "
            f"default policy this raises {refused}."
            + (f" The step failed with {describe(cause)}." if cause is not None else ""),
            step=step,
        )


class CleanupWarning(StepFSMWarning):
    """The clean-up (unload) of a ``failed`` step raised; the first error is kept.

    Attributes:
        cause: the exception the clean-up raised (also ``lifecycle.cleanup_error``).
    """

    def __init__(self, step: str, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(
            f"clean-up (unload) of failed {step} raised {describe(cause)}; the step stays "
            "'failed' and keeps its first error. See lifecycle(step).cleanup_error.",
            step=step,
        )


class LeakWarning(StepFSMWarning):
    """An unload returned but what its load created is still alive (``on_leak="warn"``).

    Attributes:
        leaked: one ``ReleasedObject`` per object still alive (attribute, type,
            size and the paths that still refer to it, e.g. ``Out[12]``).
        bytes_leaked: their estimated total size.
    """

    def __init__(self, step: str, leaked: Sequence[Any], bytes_leaked: int) -> None:
        self.leaked = tuple(leaked)
        self.bytes_leaked = bytes_leaked
        super().__init__(_leak_message(step, self.leaked, bytes_leaked), step=step)


# --------------------------------------------------- messages built elsewhere


def not_stateful(cls: type) -> TypeError:
    """``lifecycle(obj)`` (or any stepfsm operation) on an object whose class is not stateful."""
    hint = (
        " (or call stepfsm.integrations.distilabel.install() for distilabel steps)"
        if cls.__module__.startswith("distilabel")
        else ""
    )
    return TypeError(
        f"{cls.__qualname__} is not stateful: decorate the class with @stepfsm.stateful or "
        f"inherit stepfsm.Stateful{hint}."
    )


def ray_missing() -> ImportError:
    """``stepfsm.integrations.ray`` needs Ray, and it is not installed."""
    return ImportError(
        "stepfsm.integrations.ray needs Ray, which is not installed: pip install 'stepfsm[ray]' "
        "(or pip install ray)."
    )


def ray_not_started(what: str) -> RuntimeError:
    """A cluster-wide operation of the Ray integration before ``ray.init()``."""
    return RuntimeError(
        f"{what} needs this process connected to a Ray cluster, and Ray is not initialised "
        "here. Call ray.init() first: ray.init() starts a local cluster, "
        "ray.init(address='auto') joins the one `ray start --head` started on this machine, "
        "ray.init(address='HOST:6379') a remote one."
    )


def interrupted(step: str, operation: str) -> RuntimeError:
    """The stand-in error of a transition whose interruption stepfsm never saw.

    A transition abandoned by an exception that escaped before stepfsm could
    record it (a second interrupt inside the recovery from a first one) is
    settled by the next operation, which records this instead.
    """
    return RuntimeError(
        f"the {operation} of {step} was interrupted inside stepfsm's own code by an exception "
        "that escaped before it could be recorded (for example a second Ctrl-C)"
    )


def missing_method(cls: type, name: str, role: str, hint: str) -> DefinitionError:
    """The class has no load (or unload) method of that name."""
    return DefinitionError(
        f"{cls.__qualname__} has no {name}() method, so it cannot be stateful. "
        f"Define {name}(self) to {'acquire' if role == 'load' else 'release'} the "
        f"resource, or pass {role}='<method name>' to @stateful.{hint}"
    )


def bad_method(cls: type, name: str, role: str, kind: str) -> DefinitionError:
    """The load (or unload) method has a kind that cannot be a transition."""
    fixes = {
        "coroutine": (
            f"an async def while the class's other transition method is a plain def; an "
            f"async step needs both load() and unload() async def, a sync step neither. Make "
            f"{name}() match it"
        ),
        "generator": (
            f"a generator function; calling it only creates a generator, so its body would "
            f"never run. Remove the yield from {name}()"
        ),
        "async generator": (
            f"an async generator function; its body would never run. Make {name}() a plain "
            "def without yield"
        ),
        "staticmethod": (
            f"a staticmethod; a step's {role}() must act on the instance. Make it a plain "
            f"method taking self"
        ),
        "classmethod": (
            f"a classmethod; a step's {role}() must act on the instance, not the class. Make "
            f"it a plain method taking self"
        ),
    }
    return DefinitionError(
        f"{cls.__qualname__}.{name}() cannot be the {role} method: it is {fixes[kind]}."
    )


def sync_on_async(step: str, state: State, operation: str) -> StepStateError:
    """A synchronous operation asked of an async step (its load/unload are ``async def``)."""
    instead = {
        "acquire": "async with stepfsm.aloaded(step)",
        "release": "async with stepfsm.aloaded(step)",
        "loaded": "async with stepfsm.aloaded(step)",
    }.get(operation, f"await stepfsm.a{operation}(step)")
    return StepStateError(
        f"{step} is an async step (its load() and unload() are async def), so {operation}() "
        f"cannot run it from synchronous code. Use the async operation in async code "
        f"instead: {instead}.",
        step=step,
        state=state,
        operation=operation,
    )


def async_with_needed(step: str) -> TypeError:
    """``with stepfsm.aloaded(step):`` (the async context manager used with a plain ``with``)."""
    return TypeError(
        f"stepfsm.aloaded({step}) is an async context manager: write "
        "`async with stepfsm.aloaded(step):` inside async code, or `with stepfsm.loaded(step):` "
        "in synchronous code."
    )


def same_methods(cls: type, name: str) -> DefinitionError:
    """``load`` and ``unload`` name the same method."""
    return DefinitionError(
        f"{cls.__qualname__}: load and unload are both {name!r}; they must be two different "
        "methods."
    )


def guard_is_transition(cls: type, name: str) -> DefinitionError:
    """A ``guard`` name is the load or unload method itself."""
    return DefinitionError(
        f"{cls.__qualname__}: guard names {name!r}, which is the load/unload method itself; "
        "guard only the methods that use the loaded resource."
    )


def guard_not_method(cls: type, name: str, hint: str) -> DefinitionError:
    """A ``guard`` name is not a method of the class."""
    return DefinitionError(
        f"{cls.__qualname__}: guard names {name!r}, but that is not a method of the class. "
        f"Pass the names of methods that need the step loaded.{hint}"
    )


def not_weakrefable(cls: type, dataclass_slots: bool) -> DefinitionError:
    """Instances cannot be weakly referenced (``__slots__`` without ``__weakref__``)."""
    if dataclass_slots:
        fix = (
            "it is a @dataclass(slots=True) without a __weakref__ slot. Declare it with "
            "@dataclass(slots=True, weakref_slot=True) (Python 3.11+), or drop slots=True."
        )
    else:
        fix = "it defines __slots__ without '__weakref__'. Add '__weakref__' to its __slots__."
    return DefinitionError(
        f"{cls.__qualname__} cannot be stateful: its instances cannot be weakly referenced "
        f"({fix}" + ")"
    )


def not_a_class(target: object) -> DefinitionError:
    """``@stateful`` applied to something that is not a class."""
    return DefinitionError(
        f"@stateful decorates a class, not {type(target).__name__} {target!r}; put it above a "
        "`class ...:` statement."
    )


def unknown_options(cls: type, names: Sequence[str], accepted: Sequence[str]) -> DefinitionError:
    """Unknown keyword arguments for ``Stateful`` (class keywords) or ``@stateful``."""
    import difflib  # lazily: only definition errors need it

    parts = []
    for name in names:
        close = difflib.get_close_matches(name, accepted, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return DefinitionError(
        f"{cls.__qualname__}: unknown stepfsm option{'s' if len(names) != 1 else ''} "
        f"{', '.join(parts)}. The accepted options are {', '.join(accepted)}."
    )


def bad_option(cls: type, detail: str) -> DefinitionError:
    """A stepfsm option with a value that cannot work (a policy name, a timeout)."""
    return DefinitionError(f"{cls.__qualname__}: {detail}")


def bad_listener(fn: object, detail: str) -> TypeError:
    """``subscribe(fn)`` with something that cannot be called as ``fn(lifecycle, record)``."""
    return TypeError(
        f"subscribe() needs a function it can call as fn(lifecycle, record), but {fn!r} "
        f"{detail}. Define it as `def listener(lifecycle, record): ...`."
    )


# ------------------------------------------------------------------- emitting

#: Frames from these files are stepfsm's own (the last: generated guard wrappers).
_INTERNAL: Final = (os.path.dirname(os.path.abspath(__file__)), "<stepfsm ")


def emit(warning: StepFSMWarning) -> None:
    """Log ``warning`` and emit it, attributed to the first caller outside stepfsm."""
    log.warning("%s: %s", type(warning).__name__, warning)
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(warning, stacklevel=level)
