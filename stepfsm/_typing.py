"""What stepfsm takes from :mod:`typing`, without importing it at run time.

``import typing`` costs about 13 million instructions (~3 ms), a quarter of
what ``import stepfsm`` executed on top of ``import transitions``; nothing else
``import stepfsm`` loads imports it (on Python 3.11+; on 3.10 the
``exceptiongroup`` backport does). So stepfsm's modules import typing's names
under ``if TYPE_CHECKING:`` only, and take from here the two that run:

* :data:`TYPE_CHECKING`: ``False``; the type checker reads ``if TYPE_CHECKING:``
  as true by the name, as it does ``typing.TYPE_CHECKING``.
* :data:`NamedTuple`: for the records (``class StepStatus(NamedTuple): ...``).
  To a type checker it is :class:`typing.NamedTuple` itself. At run time it is
  the :func:`collections.namedtuple` that typing would build, with the class
  body's docstring, methods and properties, defaults and ``__annotations__``
  (kept as the strings they are under ``from __future__ import annotations``:
  :func:`typing.get_type_hints` reads them). typing would also compile each
  annotation into a ``ForwardRef``: for stepfsm's ten records, ~6 million
  instructions more. Generic records and the functional form
  (``NamedTuple("R", [...])``) are not needed here and not offered.

What this costs: ``typing.get_type_hints`` cannot resolve an annotation that
names something imported for the type checker only (``stateful``'s ``C``,
``aloaded``'s ``_T``); the public records resolve, but for ``StepStatus.since``
(a ``datetime``, imported when ``status()`` first runs). The run-time
``states.Trigger`` is ``str``, and ``typing.get_overloads(stateful)`` is empty.
``tests/unit/test_typing_at_runtime.py`` checks that ``import stepfsm`` imports
no typing, and reads every module for a checker-only name used at run time.
"""

from __future__ import annotations

__all__ = ["TYPE_CHECKING", "NamedTuple"]

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple

    #: What a record's class body may not set (namedtuple's own machinery).
    _RESERVED = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__"}
        | {"_fields", "_field_defaults", "_make", "_replace", "_asdict"}
    )
    _IGNORED = frozenset({"__module__", "__annotations__"})

    class _RecordMeta(type):
        def __new__(mcls, name, bases, ns):
            if bases != (_Record,):
                raise TypeError(f"record {name} must derive from NamedTuple alone")
            fields = ns.get("__annotations__", {})
            defaults = [ns[field] for field in fields if field in ns]
            if any(field not in ns for field in list(fields)[len(fields) - len(defaults) :]):
                raise TypeError(f"record {name}: a field without a default follows one with it")
            cls = namedtuple(name, fields, defaults=defaults, module=ns["__module__"])
            cls.__annotations__ = cls.__new__.__annotations__ = dict(fields)
            for key, value in ns.items():
                if key in _RESERVED:
                    raise AttributeError(f"record {name} cannot set {key}")
                if key not in _IGNORED and key not in fields:
                    setattr(cls, key, value)
            return cls

    _Record = type.__new__(_RecordMeta, "NamedTuple", (), {})

    def NamedTuple(*args, **kwargs):  # noqa: N802 (typing's name)
        raise TypeError("stepfsm's NamedTuple is a base class only: class R(NamedTuple): ...")

    NamedTuple.__mro_entries__ = lambda bases: (_Record,)
