"""Budgets: pools with a capacity, a cost per step, eviction of idle steps (``docs/design.md`` §12).

``budget(name, capacity)`` declares a pool (say ``"gpu:0"``, in bytes). A step
whose class or instance sets ``cost=(name, amount)`` (or a callable returning
that) books its cost before its load begins (:func:`book`) and gives it back
when it ends ``unloaded`` or ``failed`` (:func:`give_back`): the sum of the
bookings of a pool, i.e. of its loading, loaded and unloading steps, never
exceeds its capacity. A load that does not fit first evicts idle steps of the
pool, least recently used first, then waits for room until the loading step's
``timeout``, then raises ``BudgetExceededError``.

Idle: loaded, no holders, no guarded call running, a synchronous step, no
operation running. Use: the load, and every guarded call. The guards of a
booked step read a ``registry.UsedToken`` as its loaded flag, whose truth
test (dict classes) or ``owner()`` call (slotted classes) notes the time;
steps without a cost keep the plain token and pay nothing. The least
recently used step is found with a heap of (last use seen, step), checked
lazily: the smallest entry whose step was not used since it was pushed is the
least recently used of all (every other entry's use is at least its pushed
value), so a choice costs
O(log n) per use since the last one, never a sort of the pool.

One lock guards every pool; the eviction itself (the victim's unload, user
code) runs outside it. An interrupt can land anywhere, the line that releases
the lock included (``docs/design.md`` §9): so each pool keeps only what one
assignment changes (``used`` is the sum of its bookings, computed when read),
and a lock held longer than any of its sections can take (1 s) is taken to be
one an interrupt left behind, and taken over.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from . import registry
from .errors import BudgetExceededError, DefinitionError, format_amount
from .registry import UsedToken
from .states import State

if TYPE_CHECKING:
    from .machine import Lifecycle

__all__ = [
    "Budget",
    "BudgetUse",
    "book",
    "budget",
    "budgets",
    "check_cost",
    "give_back",
    "loaded",
]

Cost = tuple[str, float]
CostSetting = Cost | Callable[[Any], Cost]

_monotonic: Final = time.monotonic
log: Final = logging.getLogger("stepfsm")
#: guards every pool (taken with :func:`_lock`, never ``with``)
_LOCK: Final = threading.Lock()
#: a section holds the lock for microseconds: held this long, an interrupt left it held
_STALE: Final = 1.0
#: set when room may have come free (a step unloaded, a capacity changed)
_ROOM: Final = threading.Event()
_POOLS: Final[dict[str, Budget]] = {}
_SEQUENCE: Final = itertools.count()
#: how often a load waiting for room looks again (a call ending notifies nobody)
_POLL: Final = 0.01


class BudgetUse(NamedTuple):
    """One step counted in a pool (``Budget.steps``)."""

    step: str
    cost: float
    state: str


class Budget:
    """A resource pool: a name, a capacity, and the steps counted in it (:func:`budget`)."""

    __slots__ = ("_heap", "_held", "capacity", "name")

    def __init__(self, name: str, capacity: float) -> None:
        self.name = name
        self.capacity = capacity
        self._held: dict[Lifecycle, tuple[float, int]] = {}  # step -> (cost, booking number)
        #: (last use seen, booking number, weak reference to the lifecycle)
        self._heap: list[tuple[float, int, weakref.ref[Lifecycle]]] = []

    @property
    def used(self) -> float:
        """The sum of the costs booked now (by loading, loaded and unloading steps)."""
        return sum(cost for cost, _ in tuple(self._held.values()))

    @property
    def free(self) -> float:
        """What is left of the capacity."""
        return self.capacity - self.used

    @property
    def steps(self) -> tuple[BudgetUse, ...]:
        """The steps counted in the pool, in the order they booked."""
        held = tuple(self._held.items())  # one C call: no lock needed for a snapshot
        return tuple(BudgetUse(lc.name, cost, lc.state.value) for lc, (cost, _) in held)

    def __repr__(self) -> str:
        count = len(self._held)
        used, capacity = format_amount(self.used), format_amount(self.capacity)
        return (
            f"<Budget {self.name!r}: {used} of {capacity} used, {count} step{'s' * (count != 1)}>"
        )


def budget(name: str, capacity: float) -> Budget:
    """Declare the pool ``name`` with ``capacity`` (or change its capacity); return it.

    Steps name it in their ``cost``. A lower capacity than what is used now
    evicts nothing at once: the next load that needs room does.

    Raises:
        TypeError: ``name`` is not a non-empty string, or ``capacity`` not a number.
        ValueError: ``capacity`` is negative or NaN.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a budget's name must be a non-empty string, not {name!r}")
    capacity = _check_amount(capacity, f"budget {name!r}'s capacity")
    _lock()
    try:
        pool = _POOLS.get(name)
        if pool is None:
            pool = _POOLS[name] = Budget(name, capacity)
        else:
            pool.capacity = capacity
    finally:
        _LOCK.release()
    _ROOM.set()
    return pool


def budgets() -> tuple[Budget, ...]:
    """The pools declared in this process."""
    return tuple(_POOLS.values())


def _check_amount(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number (bytes, say), not {value!r}")
    if value != value or value < 0:
        raise ValueError(f"{what} must be >= 0, not {value!r}")
    return value


def check_cost(value: object, what: str = "cost") -> CostSetting | None:
    """``value`` if it is a valid cost setting: ``(pool, amount)``, a callable, or ``None``.

    Raises:
        TypeError, ValueError: anything else (the pool need not be declared yet).
    """
    if value is None or callable(value):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str):
        if not value[0]:
            raise TypeError(f"{what}'s pool must be a non-empty string, not {value[0]!r}")
        return (value[0], _check_amount(value[1], f"{what}'s amount"))
    raise TypeError(
        f"{what} must be (pool name, amount), e.g. ('gpu:0', 8 * 2**30), or a callable "
        f"returning that, not {value!r}"
    )


def _cost_of(lc: Lifecycle, setting: CostSetting) -> Cost:
    """The ``(pool, amount)`` of ``lc``'s next load, calling a cost callable with the step."""
    if not callable(setting):
        return setting
    value = setting(lc.step)
    try:
        checked = check_cost(value)
    except (TypeError, ValueError):
        checked = None
    if checked is None or callable(checked):
        name = getattr(setting, "__qualname__", repr(setting))
        raise DefinitionError(
            f"The cost callable {name} of {lc.name} returned {value!r}, not (pool name, "
            "amount >= 0), e.g. ('gpu:0', 8 * 2**30)."
        )
    return checked


def book(lc: Lifecycle, setting: CostSetting, timeout: float | None) -> None:
    """Before ``lc``'s load begins: count its cost in its pool, evicting or waiting for room.

    Raises:
        DefinitionError: the cost names a pool nobody declared, or its callable
            returned something that is not a cost.
        BudgetExceededError: the cost alone exceeds the capacity, or no room
            came free within ``timeout``.
    """
    name, amount = _cost_of(lc, setting)
    deadline = None if timeout is None or timeout == math.inf else _monotonic() + timeout
    while True:
        _ROOM.clear()  # set again by whatever frees room from here on
        _lock()
        try:
            pool = _POOLS.get(name)
            if pool is None:
                declared = ", ".join(map(repr, _POOLS)) or "none"
                raise DefinitionError(
                    f"The cost of {lc.name} names the budget {name!r}, which is not declared in "
                    f"this process (declared: {declared}). Call stepfsm.budget({name!r}, "
                    "capacity) first."
                )
            if amount > pool.capacity:
                raise _exceeded(lc, pool, amount, timeout, alone=True)
            used = pool.used
            if used + amount <= pool.capacity:
                lc._booked = pool  # first: give_back() looks for a booking only if it is set
                pool._held[lc] = (amount, next(_SEQUENCE))
                return
            victims = _victims(pool, used + amount - pool.capacity)
        finally:
            _LOCK.release()
        if not victims:
            remaining = None if deadline is None else deadline - _monotonic()
            if remaining is not None and remaining <= 0:
                raise _exceeded(lc, pool, amount, timeout)
            _ROOM.wait(_POLL if remaining is None else min(_POLL, remaining))
            continue
        for victim in victims:  # outside the lock: an unload runs the step's own code
            victim._evict_for(f"budget {name!r} needed room for {lc.name}")


def _lock() -> None:
    """Take the pools' lock; one held for longer than any section takes is taken over."""
    if not _LOCK.acquire(timeout=_STALE):
        log.warning("stepfsm: the budgets' lock was left held (an interrupt?); taking it over")
        with contextlib.suppress(RuntimeError):  # another waiter took it over first
            _LOCK.release()
        _LOCK.acquire()


def _victims(pool: Budget, needed: float) -> list[Lifecycle]:
    """With the lock held: the idle steps, least recently used first, whose costs free
    ``needed``; empty if all the idle steps together would not (then nothing is evicted).

    When the heap does not find enough it is made again from the bookings and
    read once more: an interrupt may have cut a reading short and lost an entry.
    """
    heap = pool._heap
    held = pool._held
    if len(heap) > 2 * len(held) + 64:  # entries of steps gone: rebuild now and then
        _rebuild(pool)
    victims = _scan(pool, needed)
    if victims:
        return victims
    _rebuild(pool)
    return _scan(pool, needed)


def _rebuild(pool: Budget) -> None:
    entries = [
        (_last_use(lc), number, weakref.ref(lc))
        for lc, (_, number) in tuple(pool._held.items())
        if lc._state is State.LOADED
    ]
    heapq.heapify(entries)
    pool._heap[:] = entries  # one assignment: an interrupt leaves the old heap or this one


def _scan(pool: Budget, needed: float) -> list[Lifecycle]:
    heap = pool._heap
    held = pool._held
    taken: list[tuple[float, int, weakref.ref[Lifecycle]]] = []
    victims: list[Lifecycle] = []
    freed = 0.0
    while heap and freed < needed:
        entry = heapq.heappop(heap)
        other = entry[2]()
        if other is None or not _current(entry, held):
            continue  # its step unloaded (or booked again: a newer entry stands for it)
        used = _last_use(other)
        if used > entry[0]:  # used since this entry was pushed: push it as it is now
            heapq.heappush(heap, (used, entry[1], entry[2]))
            continue
        taken.append(entry)
        if other._idle():
            victims.append(other)
            freed += held[other][0]
    for entry in taken:  # they stay candidates (an eviction's unload drops its entry)
        heapq.heappush(heap, entry)
    return victims if freed >= needed else []


def _current(entry: tuple[float, int, weakref.ref[Lifecycle]], held: dict[Any, Any]) -> bool:
    other = entry[2]()
    booking = held.get(other) if other is not None else None
    return booking is not None and booking[1] == entry[1]


def _last_use(lc: Lifecycle) -> float:
    token = lc._token
    return token.used if isinstance(token, UsedToken) else 0.0


def loaded(lc: Lifecycle) -> None:
    """``lc`` became ``loaded``: list it as a candidate for eviction (its load is a use)."""
    pool = lc._booked
    if pool is None:
        return
    _lock()
    try:
        booking = pool._held.get(lc)
        if booking is not None:
            heapq.heappush(pool._heap, (_last_use(lc), booking[1], weakref.ref(lc)))
    finally:
        _LOCK.release()


def give_back(lc: Lifecycle) -> None:
    """``lc`` ended ``unloaded`` or ``failed`` (or never began its load): return its cost.

    Idempotent; one ``pop`` changes the count, so an interrupt leaves it
    either given back or not, and a later call finishes the job.
    """
    pool = lc._booked
    if pool is not None:
        pool._held.pop(lc, None)  # atomic: no lock needed
        lc._booked = None
    _ROOM.set()


def _exceeded(
    lc: Lifecycle, pool: Budget, amount: float, timeout: float | None, alone: bool = False
) -> BudgetExceededError:
    held = [(other.name, cost, other._why_kept()) for other, (cost, _) in pool._held.items()]
    waited = None if alone else timeout
    return BudgetExceededError(
        lc.name, lc.state, pool.name, pool.capacity, pool.used, amount, held, waited
    )


def _view() -> tuple[registry.PoolStatus, ...]:
    return tuple(
        registry.PoolStatus(pool.name, pool.capacity, pool.used, len(pool._held))
        for pool in tuple(_POOLS.values())
    )


registry.show_pools(_view)
