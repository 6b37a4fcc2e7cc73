"""Observing real calls: run an operation on a stateful object and judge it by the model.

:func:`perform` runs one operation and returns what happened (never raises);
:func:`ran_from` reads the step's own code that ran from lifecycle history;
:func:`mismatches` says how an observed call differs from the model's result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..errors import DuplicateLoadWarning
from ..machine import TransitionRecord, lifecycle
from ._ops import Behaviour, Kind, Op, Ran
from .model import Result

__all__ = ["Observed", "default_use", "mismatches", "perform", "ran_from", "records_after"]


class Observed(NamedTuple):
    """What one real call did.

    Attributes:
        error: the exception it raised, or ``None``.
        returned: what it returned (compared only for ``ensure_loaded``).
        warnings: the classes of the warnings it emitted.
        ran: the step's own code that ran, with how each call ended
            (``None`` when unknown).
    """

    error: BaseException | None
    returned: object
    warnings: tuple[type[Warning], ...] = ()
    ran: Ran | None = None


def default_use(obj: object) -> object:
    """The default ``use`` of a step: ``lifecycle(obj).require_loaded("use")``."""
    lifecycle(obj).require_loaded("use")
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
    return Observed(error, returned, tuple(w.category for w in caught))


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


def mismatches(result: Result, op: Op, observed: Observed) -> list[str]:
    """How a real call (``observed``) differs from the model's ``result``; empty when it matches.

    Compares the error class, ``ensure_loaded()``'s return value, the
    warnings (``DuplicateLoadWarning`` aside) and, when known, the step's own
    code that ran.
    """
    problems: list[str] = []
    got = type(observed.error) if observed.error is not None else None
    if got is not result.error:
        detail = f" ({observed.error})" if observed.error is not None else ""
        problems.append(f"it raised {_name(got)}{detail}, expected {_name(result.error)}")
    if op == "ensure_loaded" and result.error is None and observed.returned != result.returned:
        problems.append(f"it returned {observed.returned!r}, expected {result.returned!r}")
    warned = {w for w in observed.warnings if not issubclass(w, DuplicateLoadWarning)}
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
