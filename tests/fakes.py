"""Fakes shared by the test suites: resources a test can count, and a minimal step.

A :class:`Resource` stands in for model weights on a device or a client: it is
open from creation until :meth:`Resource.close`, and while open it sits in the
:class:`Resources` table that made it, so a test can ask "what is held?"
without trusting stepfsm's own bookkeeping. Each suite keeps its own table
(unit tests' handles, the property tests' resources, the distilabel fakes'
weights), so one suite's leftovers never change another's counts.

Resources pickle (a distilabel pipeline pickles its steps), and after a fork
the child sees the parent's open resources: :meth:`Resources.held` counts only
the current process's.
"""

from __future__ import annotations

import os
import threading

import stepfsm

_LOCK = threading.Lock()


class Boom(Exception):
    """The error a fake step raises when told to fail."""


class Resource:
    """One fake resource; ``size`` bytes of real memory while open."""

    def __init__(self, table: dict[int, Resource], owner: object, size: int = 0) -> None:
        self.owner = owner
        self.pid = os.getpid()
        self.buffer: bytearray | None = bytearray(size) if size else None
        self.closed = False
        self._table = table
        with _LOCK:
            table[id(self)] = self

    def close(self) -> None:
        self.closed = True
        self.buffer = None
        with _LOCK:
            self._table.pop(id(self), None)

    def __repr__(self) -> str:
        return f"<Resource of {self.owner!r} in pid {self.pid}>"


class Resources:
    """A table of open fake resources."""

    def __init__(self) -> None:
        self.table: dict[int, Resource] = {}

    def open(self, owner: object, size: int = 0) -> Resource:
        """A new open resource of ``owner`` (a label or an id), in this table."""
        return Resource(self.table, owner, size)

    def held(self, owner: object = None) -> list[Resource]:
        """This process's open resources (of ``owner`` only, when given), oldest first."""
        pid = os.getpid()
        with _LOCK:
            found = list(self.table.values())
        return [r for r in found if r.pid == pid and (owner is None or r.owner == owner)]

    def drop(self, owner: object = None) -> None:
        """Forget the open resources (of ``owner`` only, when given) without closing them."""
        with _LOCK:
            for key in [k for k, r in self.table.items() if owner is None or r.owner == owner]:
                del self.table[key]


@stepfsm.stateful
class Step:
    """A minimal stateful step holding nothing; its load raises when ``fail`` is set."""

    def __init__(self, name: str = "gen_0", fail: bool = False) -> None:
        self.name = name
        self.fail = fail

    def load(self) -> None:
        if self.fail:
            raise RuntimeError("CUDA out of memory")

    def unload(self) -> None:
        pass
