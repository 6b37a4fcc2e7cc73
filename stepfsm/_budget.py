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

No lock: an interrupt can land on any line (``docs/design.md`` §9), the one
that would release a lock included. Each pool changes only by single atomic
operations (a booking stored or popped, a heap push or pop), ``used`` is the
sum of the bookings when read, and a load books optimistically (:func:`book`).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Callable

from . import _aio, _drain, registry
from ._typing import TYPE_CHECKING, NamedTuple
from .errors import BudgetExceededError, DefinitionError, format_amount
from .registry import UsedToken
from .states import State

if TYPE_CHECKING:
    from typing import Any, Final

    from .machine import Lifecycle

    Cost = tuple[str, float]
    CostSetting = Cost | Callable[[Any], Cost]

__all__ = [
    "Budget",
    "BudgetUse",
    "book",
    "budget",
    "budgets",
    "check_cost",
    "give_back",
    "loaded",
    "watch_idle",
]


_monotonic: Final = time.monotonic
_INF: Final = float("inf")
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

    __slots__ = ("_heap", "_held", "_meta", "capacity", "name")

    def __init__(self, name: str, capacity: float) -> None:
        self.name = name
        self.capacity = capacity
        #: step -> cost: the bookings, decided or not. Its values are plain numbers, so
        #: that their sum, which every load reads, is one C loop (``_total``)
        self._held: dict[Lifecycle, float] = {}
        #: step -> (booking number, decided: it fit when its load read the sum). Only
        #: the steps in ``_held`` count; an entry left by an interrupted give-back is stale
        self._meta: dict[Lifecycle, tuple[int, bool]] = {}
        #: (last use seen, booking number, weak reference to the lifecycle)
        self._heap: list[tuple[float, int, weakref.ref[Lifecycle]]] = []

    @property
    def used(self) -> float:
        """The sum of the costs booked now (by loading, loaded and unloading steps)."""
        meta = self._meta
        return sum(cost for lc, cost in tuple(self._held.items()) if _decided(meta, lc))

    @property
    def free(self) -> float:
        """What is left of the capacity."""
        return self.capacity - self.used

    @property
    def steps(self) -> tuple[BudgetUse, ...]:
        """The steps counted in the pool, in the order they booked."""
        held, meta = tuple(self._held.items()), self._meta  # one C call: a snapshot, no lock
        return tuple(
            BudgetUse(lc.name, cost, lc.state.value) for lc, cost in held if _decided(meta, lc)
        )

    def __repr__(self) -> str:
        count = len(self._held)
        used, capacity = format_amount(self.used), format_amount(self.capacity)
        return (
            f"<Budget {self.name!r}: {used} of {capacity} used, {count} step{'s' * (count != 1)}>"
        )


def _decided(meta: dict[Lifecycle, tuple[int, bool]], lc: Lifecycle) -> bool:
    entry = meta.get(lc)
    return entry is not None and entry[1]


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
    pool = _POOLS.setdefault(name, Budget(name, capacity))  # atomic: one pool per name
    pool.capacity = capacity
    _ROOM.set()
    return pool


def budgets() -> tuple[Budget, ...]:
    """The pools declared in this process."""
    return tuple(_POOLS.values())


def _check_amount(value: object, what: str) -> float:
    import numbers  # here, not at import: read when a cost or a budget is set

    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy numbers too
        raise TypeError(f"{what} must be a number (bytes, say), not {value!r}")
    number = int(value) if isinstance(value, numbers.Integral) else float(value)
    if number != number or number < 0:
        raise ValueError(f"{what} must be >= 0, not {value!r}")
    return number


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
    name = getattr(setting, "__qualname__", repr(setting))
    try:
        value = setting(lc.step)
    except Exception as error:
        raise DefinitionError(
            f"The cost callable {name} of {lc.name} raised {type(error).__name__}: {error}"
        ) from error
    try:
        checked = check_cost(value)
    except (TypeError, ValueError):
        checked = None
    if checked is None or callable(checked):
        raise DefinitionError(
            f"The cost callable {name} of {lc.name} returned {value!r}, not (pool name, "
            "amount >= 0), e.g. ('gpu:0', 8 * 2**30)."
        )
    return checked


def book(lc: Lifecycle, setting: CostSetting, timeout: float | None) -> None:
    """Before ``lc``'s load begins: count its cost in its pool, evicting or waiting for room.

    Optimistic, without a lock: the booking goes in first (one atomic ``dict``
    store), then the pool's sum is read; over the capacity, the booking comes
    out again and the load evicts or waits. A booking that stays was counted
    with every booking made before its sum was read, and every later one
    counts it, so the bookings that stay never sum past the capacity.
    Two loads that back off from each other retry after a short, random pause.

    Raises:
        DefinitionError: the cost names a pool nobody declared, or its callable
            raised or returned something that is not a cost.
        BudgetExceededError: the cost alone exceeds the capacity, the room is
            pinned by this very thread's guarded calls, or no room came free
            within ``timeout``.
    """
    name, amount = _cost_of(lc, setting)
    pool = _POOLS.get(name)
    if pool is None:
        declared = ", ".join(map(repr, tuple(_POOLS))) or "none"
        raise DefinitionError(
            f"The cost of {lc.name} names the budget {name!r}, which is not declared in this "
            f"process (declared: {declared}). Call stepfsm.budget({name!r}, capacity) first."
        )
    held, meta = pool._held, pool._meta
    if lc._booked is pool and lc in held:
        return  # booked already: a reload keeps its room
    deadline = None if timeout is None or timeout == _INF else _monotonic() + timeout
    link = _aio.bridging()  # a worker of an aload(): its task may be cancelled meanwhile
    while True:
        if amount > pool.capacity:
            raise _exceeded(lc, pool, amount, timeout, alone=True)
        _ROOM.clear()  # set again by whatever frees room from here on
        lc._booked = pool  # first: give_back() looks for a booking only if it is set
        number = next(_SEQUENCE)
        meta[lc] = (number, False)  # undecided: counted by loads, not in ``used``
        held[lc] = amount  # counted from here on
        used = _total(pool)
        if used <= pool.capacity:
            meta[lc] = (number, True)
            return
        held.pop(lc, None)  # over: out again, then make room or wait
        meta.pop(lc, None)
        lc._booked = None
        victims = _victims(pool, used - pool.capacity)
        if victims:
            for victim in victims:  # an unload runs the step's own code
                victim._evict_for(f"budget {name!r} needed room for {lc.name}")
            continue
        # No victims: is the room pinned by this thread's own guarded calls? (Only now:
        # when it is, the idle steps cannot free enough, so there were no victims either.)
        if amount > pool.capacity - _pinned(pool):
            raise _exceeded(lc, pool, amount, None, pinned=True)
        remaining = None if deadline is None else deadline - _monotonic()
        if remaining is not None and remaining <= 0:
            raise _exceeded(lc, pool, amount, timeout)
        import random  # here, not at import: only two loads backing off need it

        pause = _POLL * (0.5 + random.random())  # apart from a load that backed off with us
        _ROOM.wait(pause if remaining is None else min(pause, remaining))
        if link is not None and link.cancelled:
            raise _aio.cancelled()  # its task gave up waiting: never start the load


def _total(pool: Budget) -> float:
    """Every booking of ``pool``, decided or not: what a load decides against."""
    # One C loop, so nothing changes the dict while it is read: no bytecode runs in it (no
    # other thread), and summing exact ints and floats allocates no object the garbage
    # collector tracks (no collection, so no finalizer giving a booking back). The view and
    # the iterator are allocated before the iterator notes the dict's size; a collection
    # then only changes what the sum starts from. (``sum(map(f, view))`` was not safe: the
    # map object is allocated after the view's iterator, and CI caught that collection.)
    total: float = sum(pool._held.values())
    return total


def _pinned(pool: Budget) -> float:
    """The costs of the steps of ``pool`` that guarded calls running on this thread hold.

    Waiting for them would wait for this thread itself.
    """
    tokens = _drain.held_here()  # one walk of this thread's stack
    if not tokens:
        return 0
    return sum(cost for lc, cost in tuple(pool._held.items()) if _holds_one(tokens, lc))


def _holds_one(tokens: list[object], lc: Lifecycle) -> bool:
    """Whether ``tokens`` (from ``_drain.held_here()``) include ``lc``'s load's token."""
    return any(token is lc._token for token in tokens)


def _victims(pool: Budget, needed: float) -> list[Lifecycle]:
    """The idle steps, least recently used first, whose costs free
    ``needed``; empty if all the idle steps together would not (then nothing is evicted).

    When the heap has fewer entries than the pool has bookings it is made again
    first: an interrupt (or another thread's reading) may have taken entries out.
    Each heap operation is atomic; two loads reading at once can only miss a
    candidate for a moment (they then wait one poll), never count one twice.
    """
    heap = pool._heap
    held = pool._held
    if len(heap) < len(held) or len(heap) > 2 * len(held) + 64:
        _rebuild(pool)
    return _scan(pool, needed)


def _rebuild(pool: Budget) -> None:
    import heapq  # imported where used (``import stepfsm`` stays light)

    meta = pool._meta
    for lc in tuple(meta):
        if lc not in pool._held:
            meta.pop(lc, None)  # left by an interrupted give-back
    entries = [
        (_last_use(lc), entry[0], weakref.ref(lc))
        for lc in tuple(pool._held)
        if lc._state is State.LOADED and (entry := meta.get(lc)) is not None
    ]
    heapq.heapify(entries)
    pool._heap[:] = entries  # one assignment: an interrupt leaves the old heap or this one


def _scan(pool: Budget, needed: float) -> list[Lifecycle]:
    import heapq  # imported where used (``import stepfsm`` stays light)

    heap, held, meta = pool._heap, pool._held, pool._meta
    taken: list[tuple[float, int, weakref.ref[Lifecycle]]] = []
    victims: list[Lifecycle] = []
    freed = 0.0
    while heap and freed < needed:
        entry = heapq.heappop(heap)
        other = entry[2]()
        if other is None or not _current(entry, held, meta):
            continue  # its step unloaded (or booked again: a newer entry stands for it)
        used = _last_use(other)
        if used > entry[0]:  # used since this entry was pushed: push it as it is now
            heapq.heappush(heap, (used, entry[1], entry[2]))
            continue
        taken.append(entry)
        cost = held.get(other)
        if cost is not None and other._idle() and other not in victims:
            victims.append(other)
            freed += cost
    for entry in taken:  # they stay candidates (an eviction's unload drops its entry)
        heapq.heappush(heap, entry)
    return victims if freed >= needed else []


def _current(
    entry: tuple[float, int, weakref.ref[Lifecycle]],
    held: dict[Lifecycle, float],
    meta: dict[Lifecycle, tuple[int, bool]],
) -> bool:
    other = entry[2]()
    booking = meta.get(other) if other is not None and other in held else None
    return booking is not None and booking[0] == entry[1]


def _last_use(lc: Lifecycle) -> float:
    token = lc._token
    return token.used if isinstance(token, UsedToken) else 0.0


def loaded(lc: Lifecycle) -> None:
    """``lc`` became ``loaded``: list it as a candidate for eviction (its load is a use)."""
    pool = lc._booked
    if pool is None:
        return
    import heapq  # imported where used (``import stepfsm`` stays light)

    booking = pool._meta.get(lc)
    if booking is not None and lc in pool._held:
        pool._meta[lc] = (booking[0], True)  # decided, whatever cut the load short
        heapq.heappush(pool._heap, (_last_use(lc), booking[0], weakref.ref(lc)))


def give_back(lc: Lifecycle) -> None:
    """``lc`` ended ``unloaded`` or ``failed`` (or never began its load): return its cost.

    Idempotent; one ``pop`` changes the count, so an interrupt leaves it
    either given back or not, and a later call finishes the job (a stale
    ``_meta`` entry counts nothing; the next booking or heap rebuild drops it).
    """
    _forget(lc)
    _ROOM.set()


def _forget(lc: Lifecycle) -> None:
    """Return ``lc``'s cost without waking anyone: a step died (``registry.ON_FORGET``).

    A weakref callback runs wherever the garbage collector does, inside
    ``_ROOM.set()`` on this very thread too, so it must take no lock (setting
    ``_ROOM`` there deadlocked). A load waiting for room looks again within
    ``1.5 * _POLL`` seconds anyway.
    """
    pool = lc._booked
    if pool is not None:
        pool._held.pop(lc, None)  # atomic: no lock needed
        pool._meta.pop(lc, None)
        lc._booked = None


def _exceeded(
    lc: Lifecycle,
    pool: Budget,
    amount: float,
    timeout: float | None,
    alone: bool = False,
    pinned: bool = False,
) -> BudgetExceededError:
    mine = _drain.held_here() if pinned else []  # one walk of this thread's stack
    held = [
        (
            other.name,
            cost,
            "a guarded call on this thread" if _holds_one(mine, other) else other._why_kept(),
        )
        for other, cost in tuple(pool._held.items())
    ]
    waited = None if alone else (0.0 if pinned else timeout)
    return BudgetExceededError(
        lc.name, lc.state, pool.name, pool.capacity, pool.used, amount, held, waited
    )


def _after_fork() -> None:
    """In a forked child: no step is loaded, so no pool counts anything; no timer runs."""
    for pool in tuple(_POOLS.values()):
        pool._held.clear()
        pool._meta.clear()
        pool._heap.clear()
    _IDLE.clear()
    _IDLE_THREAD.clear()


# ------------------------------------------------------------- idle unloading

#: steps with an idle timeout, as (when to look, booking number, step, its load's token id)
_IDLE: Final[list[tuple[float, int, weakref.ref[Lifecycle], int]]] = []
_IDLE_WAKE: Final = threading.Event()
_IDLE_THREAD: Final[list[threading.Thread]] = []  # the timer thread of this process


def watch_idle(lc: Lifecycle) -> None:
    """``lc`` finished a load and has an idle timeout: the timer thread looks at it when due."""
    timeout = lc.idle_timeout
    if timeout is None:
        return
    import heapq  # imported where used (``import stepfsm`` stays light)

    entry = (_last_use(lc) + timeout, next(_SEQUENCE), weakref.ref(lc), id(lc._token))
    heapq.heappush(_IDLE, entry)
    _IDLE_WAKE.set()
    threads = _IDLE_THREAD
    if not threads or not threads[0].is_alive():  # the first, or a forked child's
        thread = threading.Thread(target=_idle_loop, name="stepfsm-idle", daemon=True)
        threads[:] = [thread]
        thread.start()


def _idle_loop() -> None:
    """The timer thread: unload each step whose idle timeout passed, when it is idle."""
    while True:
        _IDLE_WAKE.clear()
        wait = _idle_due(_monotonic())
        _IDLE_WAKE.wait(wait)


def _idle_due(now: float) -> float | None:
    """Unload the steps due by ``now``; the seconds until the next one is (``None``: none)."""
    import heapq  # imported where used (``import stepfsm`` stays light)

    while _IDLE:
        entry = heapq.heappop(_IDLE)
        if entry[0] > now:  # not yet: put it back
            heapq.heappush(_IDLE, entry)
            return entry[0] - now
        lc = entry[2]()
        if lc is None or lc._state is not State.LOADED or id(lc._token) != entry[3]:
            continue  # unloaded, or loaded again since: that load has an entry of its own
        timeout = lc.idle_timeout
        if timeout is None:
            continue
        due = _last_use(lc) + timeout
        if due > now or not lc._idle():  # used since, or held, busy, in an operation
            later = due if due > now else now + timeout
            heapq.heappush(_IDLE, (later, entry[1], entry[2], entry[3]))
            continue
        if not lc._evict_for(f"idle for {timeout:g} s") and lc._state is State.LOADED:
            heapq.heappush(_IDLE, (now + timeout, entry[1], entry[2], entry[3]))  # busy now
    return None


def _view() -> tuple[registry.PoolStatus, ...]:
    return tuple(
        registry.PoolStatus(pool.name, pool.capacity, pool.used, len(pool._held))
        for pool in tuple(_POOLS.values())
    )


registry.show_pools(_view)
registry.ON_FORGET.append(_forget)  # a step that died while loaded
registry.at_fork(_after_fork)
