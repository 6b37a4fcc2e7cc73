"""Groups: load several steps at once, all or nothing (``docs/design.md``, section 12).

``group(*steps)`` loads the steps that are not loaded in a thread pool, each
with an ``acquire()`` by the group: the group holds what it loaded, and a
release by the group unloads a step only if that acquire did the load and no
other holder remains. A step that loads another inside its own load (a task
and its LLM) still loads a shared child once: that is the lifecycle's own
composition rule, whichever thread gets there first.

All or nothing: if a load fails, or the calling thread is interrupted while
it waits, the group first waits for every load it started to settle, then
releases, in reverse order, what this call loaded (steps loaded before the
call are never touched), and raises ``GroupLoadError`` with every failure, or
re-raises the interrupt unchanged. Steps whose load failed stay ``failed``,
as after a single failed load.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from types import TracebackType

from .errors import GroupLoadError, RepeatedLoadWarning, emit
from .machine import Lifecycle, lifecycle
from .states import State

__all__ = ["Group", "group"]


class Group:
    """Several steps loaded and unloaded together (see :func:`group`)."""

    __slots__ = ("_held", "_lifecycles", "_max_workers", "_steps")

    def __init__(self, steps: Iterable[object], max_workers: int | None = None) -> None:
        unique: dict[int, object] = {}
        for step in steps:
            unique.setdefault(id(step), step)
        self._steps: tuple[object, ...] = tuple(unique.values())
        if not self._steps:
            raise ValueError("group() needs at least one step, e.g. group(generator, judge)")
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(
                f"max_workers must be a whole number >= 1 or None, not {max_workers!r}"
            )
        self._lifecycles: tuple[Lifecycle, ...] = tuple(lifecycle(s) for s in self._steps)
        self._max_workers = max_workers
        #: the lifecycles this group's loads acquired and has not released, in group order
        self._held: list[Lifecycle] = []

    # ------------------------------------------------------------------ facts

    @property
    def steps(self) -> tuple[object, ...]:
        """The steps, in the order given (each once)."""
        return self._steps

    @property
    def states(self) -> tuple[State, ...]:
        """Each step's state, in the order of :attr:`steps`."""
        return tuple(lc.state for lc in self._lifecycles)

    @property
    def held(self) -> tuple[str, ...]:
        """The display names of the steps the group holds (it loaded them)."""
        return tuple(lc.name for lc in self._held)

    def __repr__(self) -> str:
        names = ", ".join(lc.name for lc in self._lifecycles)
        return f"<Group of {len(self._steps)} steps: {names}>"

    def __iter__(self) -> Iterator[object]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    # ------------------------------------------------------------- operations

    def load(self) -> None:
        """Load every step, concurrently; all or nothing.

        Each loaded step's ``on_repeat`` policy applies first, before anything
        starts: ``"raise"`` refuses the whole call with ``AlreadyLoadedError``,
        ``"warn"`` warns; a loaded step is then left as it is (not held).

        Raises:
            AlreadyLoadedError: a step is loaded and its ``on_repeat`` is ``"raise"``.
            GroupLoadError: loads failed (after the rollback); every failure is in it.
            KeyboardInterrupt: the caller was interrupted (after the rollback).
        """
        for lc in self._lifecycles:
            if lc.state is State.LOADED:
                policy = lc.on_repeat
                if policy == "raise":
                    lc.load()  # raises the step's own AlreadyLoadedError: nothing started
                elif policy == "warn":
                    emit(RepeatedLoadWarning(lc.name))
        self._load(lc for lc in self._lifecycles if lc.state is not State.LOADED)

    def ensure_loaded(self) -> tuple[str, ...]:
        """Load the steps that are not loaded, concurrently; all or nothing.

        Returns:
            The display names of the steps this call loaded.

        Raises:
            GroupLoadError, KeyboardInterrupt: as :meth:`load`.
        """
        return self._load(lc for lc in self._lifecycles if lc.state is not State.LOADED)

    def unload(self) -> tuple[str, ...]:
        """Release what the group loaded, in reverse order (unloaded unless others hold it).

        Returns:
            The display names of the steps released.

        Raises:
            UnloadError: the first unload that raised, after every release was tried.
        """
        released: list[str] = []
        first: BaseException | None = None
        while self._held:
            lc = self._held.pop()
            try:
                lc.release(self)
            except Exception as error:
                first = first or error
            else:
                released.append(lc.name)
        if first is not None:
            raise first
        return tuple(released)

    def __enter__(self) -> Group:
        self.ensure_loaded()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.unload()

    # --------------------------------------------------------------- internals

    def _load(self, todo: Iterable[Lifecycle]) -> tuple[str, ...]:
        """Acquire each of ``todo`` in a pool; roll back on any failure or interrupt."""
        pending = list(todo)
        if not pending:
            return ()
        workers = self._max_workers or len(pending)
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="stepfsm-group")
        futures: dict[concurrent.futures.Future[None], Lifecycle] = {}
        interrupt: BaseException | None = None
        try:
            for lc in pending:
                futures[pool.submit(lc.acquire, self)] = lc
        except BaseException as error:  # interrupted while starting them
            interrupt = error
        finally:
            interrupt = _settle(futures, interrupt)
            pool.shutdown(wait=False)
        acquired = [lc for future, lc in futures.items() if _succeeded(future)]
        failures: list[tuple[str, Exception]] = []
        for future, lc in futures.items():
            raised = future.exception() if future.done() and not future.cancelled() else None
            if raised is None:
                continue
            if isinstance(raised, Exception):
                failures.append((lc.name, raised))
            elif interrupt is None:
                interrupt = raised  # a KeyboardInterrupt (or the like) inside a load
        if failures or interrupt is not None:
            rolled_back, rollback_errors = self._roll_back(acquired)
            if interrupt is not None:
                raise interrupt
            raise GroupLoadError(failures, rolled_back, rollback_errors) from failures[0][1]
        ordered = [lc for lc in self._lifecycles if lc in acquired]
        # a step held before (its hold evicted by an unload(force=True)) is listed once
        self._held.extend(lc for lc in ordered if lc not in self._held)
        return tuple(lc.name for lc in ordered)

    def _roll_back(self, acquired: list[Lifecycle]) -> tuple[list[str], list[BaseException]]:
        """Release, in reverse group order, what this call acquired."""
        names: list[str] = []
        errors: list[BaseException] = []
        for lc in reversed([lc for lc in self._lifecycles if lc in acquired]):
            try:
                lc.release(self)
            except Exception as error:
                errors.append(error)
            names.append(lc.name)
        return names, errors


def _settle(
    futures: dict[concurrent.futures.Future[None], Lifecycle], interrupt: BaseException | None
) -> BaseException | None:
    """Wait until every started load has ended (an interrupt meanwhile is kept, not obeyed).

    Loads not started yet are cancelled once an interrupt arrived. Returns the
    first interrupt (``None`` if none came).
    """
    while True:
        try:
            if interrupt is not None:
                for future in futures:
                    future.cancel()  # not started: never start it
            concurrent.futures.wait(futures)
            return interrupt
        except BaseException as error:  # Ctrl-C while waiting: the loads still settle first
            if interrupt is None:
                interrupt = error


def _succeeded(future: concurrent.futures.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def group(*steps: object, max_workers: int | None = None) -> Group:
    """Several steps, loaded and unloaded together.

    Example::

        with stepfsm.group(generator, judge, embedder):
            pipeline.run()      # all three loaded, in parallel; unloaded at the end

    ``load()`` loads them concurrently (a thread pool of ``max_workers``,
    default one per step); if any load fails, or the caller is interrupted,
    what the call loaded is unloaded again and ``GroupLoadError`` (or the
    interrupt) is raised. See :class:`Group`.

    Raises:
        TypeError: a step is not stateful.
        ValueError: no steps, or ``max_workers`` is not a whole number >= 1.
    """
    return Group(steps, max_workers)
