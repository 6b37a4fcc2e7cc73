"""Groups: load several steps at once, all or nothing (``docs/design.md``, section 12).

``group(*steps)`` loads the steps that are not loaded in worker threads, each
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

import threading
from collections.abc import Iterable, Iterator
from types import TracebackType

from . import _aio
from .errors import GroupLoadError, RepeatedLoadWarning, emit
from .machine import Lifecycle, lifecycle
from .states import State

__all__ = ["Group", "group"]


class Group:
    """Several steps loaded and unloaded together (see :func:`group`)."""

    __slots__ = ("_held", "_lifecycles", "_lock", "_max_workers", "_steps")

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
        #: every hold the group's loads took and it has not released (one entry per hold)
        self._held: list[Lifecycle] = []
        self._lock = threading.Lock()

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
        """The display names of the steps the group holds (it loaded them), in group order."""
        with self._lock:
            held = set(self._held)
        return tuple(lc.name for lc in self._lifecycles if lc in held)

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
        self._load(self._repeat_policies())

    def _repeat_policies(self) -> list[Lifecycle]:
        """Apply each loaded step's ``on_repeat``; return the steps still to load."""
        for lc in self._lifecycles:
            if lc.state is State.LOADED:
                policy = lc.on_repeat
                if policy == "raise":  # the step's own AlreadyLoadedError: nothing started
                    raise lc._already_loaded()
                if policy == "warn":
                    emit(RepeatedLoadWarning(lc.name))
        return self._to_load()

    def _to_load(self) -> list[Lifecycle]:
        """The steps that are not loaded, in group order."""
        return [lc for lc in self._lifecycles if lc.state is not State.LOADED]

    def ensure_loaded(self) -> tuple[str, ...]:
        """Load the steps that are not loaded, concurrently; all or nothing.

        Returns:
            The display names of the steps this call loaded.

        Raises:
            GroupLoadError, KeyboardInterrupt: as :meth:`load`.
        """
        return self._load(self._to_load())

    def unload(self) -> tuple[str, ...]:
        """Release what the group loaded, in reverse order (unloaded unless others hold it).

        Returns:
            The display names of the steps released.

        Raises:
            UnloadError: the first unload that raised, after every release was tried.
        """
        with self._lock:  # taken at once: two threads never release one hold twice
            holds, self._held[:] = list(self._held), []
        released, _unloaded, errors, interrupt = self._release(holds)
        if interrupt is not None:
            raise interrupt
        if errors:
            raise errors[0]
        return tuple(released)

    def __enter__(self) -> Group:
        self.ensure_loaded()
        return self

    # ---------------------------------------------------------------- awaited

    async def aload(self) -> None:
        """:meth:`load`, awaited: the loads run while the event loop keeps running.

        Each load is an ``acquire()`` by the group in a worker thread linked to
        this task (an async step's own ``async def load`` runs on this loop), at
        most ``max_workers`` at once. If this task is cancelled meanwhile, the
        loads already started settle first, what the call loaded is released,
        then ``CancelledError`` goes on.

        Raises:
            AlreadyLoadedError, GroupLoadError: as :meth:`load`.
        """
        await self._aload(self._repeat_policies())

    async def aensure_loaded(self) -> tuple[str, ...]:
        """:meth:`ensure_loaded`, awaited (see :meth:`aload`)."""
        return await self._aload(self._to_load())

    async def aunload(self) -> tuple[str, ...]:
        """:meth:`unload`, awaited: the releases run in a worker thread linked to this task."""
        return await _aio.in_thread(self.unload)

    async def __aenter__(self) -> Group:
        await self.aensure_loaded()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aunload()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.unload()

    # --------------------------------------------------------------- internals

    def _load(self, todo: Iterable[Lifecycle]) -> tuple[str, ...]:
        """Acquire each of ``todo`` in worker threads; roll back on any failure or interrupt.

        The workers record what they acquired (in ``_held`` at once, so a hold
        is never unlisted, whatever interrupts the caller) and what failed; a
        failure or an interrupt stops the loads not started yet. The caller
        then waits until every load has ended or been skipped, whatever
        interrupts it meanwhile.
        """
        run = _Run(list(todo))
        if not run.total:
            return ()

        def work() -> None:
            while True:
                with run.lock:
                    if not run.queue:
                        return
                    lc = run.queue.pop(0)
                    skip = run.stop  # a load failed or the caller was interrupted
                try:
                    if not skip:
                        lc.acquire(self)
                except BaseException as error:  # recorded; the caller raises after the rollback
                    with run.lock:
                        run.stop = True
                        run.failures.append((lc, error))
                else:
                    if not skip:
                        with self._lock:
                            self._held.append(lc)
                        with run.lock:
                            run.acquired.append(lc)
                finally:
                    with run.lock:
                        run.done += 1
                        run.lock.notify_all()

        interrupt: BaseException | None = None
        try:
            for index in range(min(self._max_workers or run.total, run.total)):
                threading.Thread(target=work, name=f"stepfsm-group-{index}", daemon=True).start()
        except BaseException as error:  # interrupted while starting them
            interrupt = error
        finally:
            interrupt = _finish(run, interrupt)
        if run.failures or interrupt is not None:
            self._raise(run, interrupt, self._release(run.acquired))
        return tuple(lc.name for lc in self._lifecycles if lc in run.acquired)

    async def _aload(self, todo: list[Lifecycle]) -> tuple[str, ...]:
        """:meth:`_load` on an event loop: one linked worker thread per load, as tasks.

        The loads run shielded from this task's cancellation: a cancellation
        stops the loads not started yet, the started ones settle, then the
        rollback runs and the cancellation goes on.
        """
        import asyncio

        run = _Run(todo)
        if not run.total:
            return ()
        slots = asyncio.Semaphore(self._max_workers or run.total)

        async def one(lc: Lifecycle) -> None:
            async with slots:
                if run.stop:  # a load failed or the caller was cancelled
                    return
                try:
                    await _aio.in_thread(lambda: lc.acquire(self))
                except BaseException as error:  # recorded; the caller raises after the rollback
                    run.stop = True
                    run.failures.append((lc, error))
                    return
                with self._lock:
                    self._held.append(lc)
                run.acquired.append(lc)

        loads = asyncio.gather(*(one(lc) for lc in todo))
        interrupt: BaseException | None = None
        while not loads.done():
            try:
                await asyncio.shield(loads)
            except BaseException as error:  # cancelled (or interrupted) while they run
                if loads.done():
                    break
                interrupt = interrupt or error
                run.stop = True
        if run.failures or interrupt is not None:
            outcome = await asyncio.shield(_aio.in_thread(lambda: self._release(run.acquired)))
            self._raise(run, interrupt, outcome)
        return tuple(lc.name for lc in self._lifecycles if lc in run.acquired)

    @staticmethod
    def _raise(
        run: _Run,
        interrupt: BaseException | None,
        rollback: tuple[list[str], list[str], list[BaseException], BaseException | None],
    ) -> None:
        """After the rollback of a failed or interrupted group load: raise what ends it."""
        failures = [(lc.name, e) for lc, e in run.failures if isinstance(e, Exception)]
        if interrupt is None:
            interrupt = next((e for _, e in run.failures if not isinstance(e, Exception)), None)
        _released, rolled_back, rollback_errors, interrupted = rollback
        interrupt = interrupt or interrupted
        if interrupt is not None:
            raise interrupt
        raise GroupLoadError(failures, rolled_back, rollback_errors) from failures[0][1]

    def _release(
        self, holds: list[Lifecycle]
    ) -> tuple[list[str], list[str], list[BaseException], BaseException | None]:
        """Release ``holds`` in reverse group order; each leaves ``_held`` once tried.

        Returns the names released, the names of those now unloaded (another
        holder may keep one loaded), what the releases raised, and the first
        interrupt raised inside one (the other releases still run).
        """
        order = {lc: index for index, lc in enumerate(self._lifecycles)}
        released: list[str] = []
        unloaded: list[str] = []
        errors: list[BaseException] = []
        interrupt: BaseException | None = None
        for lc in sorted(holds, key=order.__getitem__, reverse=True):
            try:
                lc.release(self)
            except Exception as error:
                errors.append(error)
                continue
            except BaseException as error:  # Ctrl-C in an unload: the others still run
                interrupt = interrupt or error
                continue
            finally:
                with self._lock:
                    if lc in self._held:
                        self._held.remove(lc)
            if lc.name not in released:
                released.append(lc.name)
            if lc.state is not State.LOADED and lc.name not in unloaded:
                unloaded.append(lc.name)
        return released, unloaded, errors, interrupt


class _Run:
    """One group load: the loads still to start, and what the workers report."""

    __slots__ = ("acquired", "done", "failures", "lock", "queue", "stop", "total")

    def __init__(self, queue: list[Lifecycle]) -> None:
        self.lock = threading.Condition()
        self.queue = queue
        self.total = len(queue)
        self.done = 0  # loads ended (or skipped)
        self.stop = False
        self.acquired: list[Lifecycle] = []
        self.failures: list[tuple[Lifecycle, BaseException]] = []


def _finish(run: _Run, interrupt: BaseException | None) -> BaseException | None:
    """Wait until every load has ended or been skipped; return the first interrupt.

    An interrupt meanwhile is kept, not obeyed: the loads not started yet are
    skipped (also those no worker thread was started for), and the wait goes
    on until the started ones have ended.
    """
    while True:
        try:
            with run.lock:
                if interrupt is not None:
                    run.stop = True
                if run.stop:  # nobody starts these now
                    run.done += len(run.queue)
                    run.queue.clear()
                while run.done < run.total:
                    run.lock.wait()
            return interrupt
        except BaseException as error:  # Ctrl-C while waiting
            interrupt = interrupt or error


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
