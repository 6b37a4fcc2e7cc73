"""stepfsm on a Ray cluster: stateful actors, ``cluster_status()``, ``cluster_unload_all()``.

::

    import ray
    import stepfsm.integrations.ray as sr

    ray.init()                                 # or ray.init(address="auto") on a cluster
    LLM = sr.remote(MyLLM)                     # a @stepfsm.stateful class as a Ray actor
    llm = LLM.remote("gen_0")
    ray.get(llm.generate.remote("hi"))         # NotLoadedError (a RayTaskError wrapping it)
    ray.get(llm.load.remote())
    print(sr.cluster_status())                 # every stateful step: node, pid, actor, state
    sr.cluster_unload_all()                    # unload them all, everywhere

How the cluster's table is kept (``docs/design.md``, section 13): a detached
named actor, the *board* (``"stepfsm-status"`` in namespace ``"stepfsm"``,
no CPU), holds one row per step. Each worker process that reports subscribes a
stepfsm listener and pushes the step's row after each of its transitions (a
settled one waits, up to a second, until the board has it, so a
``cluster_status()`` made after ``ray.get(actor.load.remote())`` shows it
``loaded``). ``cluster_status()`` is one call to the board, plus this
process's own ``status()``: no worker is asked anything. Each reporting
process also keeps one call to the board pending (renewed every
:data:`LEASE` seconds), which is how ``cluster_unload_all()`` reaches it and
how the board notices a process that died: its rows go within
``LEASE + GRACE`` seconds (at once when it exits normally).

A worker process reports once any of these happened in it:

* an actor of a class made with :func:`remote` was created in it;
* a stateful step pickled in a process that had imported this module
  arrived in it (a Ray task's or actor's argument, distilabel's
  ``RayPipeline``: its ``run()`` imports this module);
* its code called :func:`report_here`.

Ray itself is imported when first needed: importing this module does not
import it (so a process that unpickles a step and is not a Ray worker never
pays for it), and without Ray every function says how to install it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from .. import _travel, registry
from .._settings import class_config, subscribe
from ..errors import describe, ray_missing, ray_not_started
from ..machine import lifecycle
from ..registry import Status, StepStatus
from ..states import State

if TYPE_CHECKING:
    from types import ModuleType

    from ..machine import Lifecycle, TransitionRecord

__all__ = [
    "BOARD",
    "GRACE",
    "LEASE",
    "NAMESPACE",
    "ClusterStatus",
    "UnloadedStep",
    "arrive",
    "cluster_status",
    "cluster_unload_all",
    "remote",
    "report_here",
    "reporting",
]

#: The board's actor name, and its namespace (it is detached: one per cluster).
BOARD: Final = "stepfsm-status"
NAMESPACE: Final = "stepfsm"
#: Seconds a reporting process's pending call to the board lasts before it renews it.
LEASE: Final = 5.0
#: Seconds after its last call past which a silent process counts as gone.
GRACE: Final = 3.0
#: Seconds a settled transition waits for the board to have its row (the first
#: one, CONNECT_WAIT: the process may be connecting to the board, or creating it).
SETTLE_WAIT: Final = 1.0
CONNECT_WAIT: Final = 15.0

log: Final = logging.getLogger("stepfsm")

C = TypeVar("C", bound=type)

#: Transitions after which the reporting thread waits until the board has the row.
_SETTLED: Final = frozenset({"finish_load", "finish_unload", "fail"})


def _ray() -> ModuleType:
    """The ``ray`` module; ``ImportError`` saying how to install it when it is missing."""
    try:
        import ray
    except ImportError as error:
        raise ray_missing() from error
    return ray


def _connected(what: str) -> ModuleType:
    """``ray``, connected to a cluster; ``RuntimeError`` saying how to connect otherwise."""
    ray = _ray()
    if not ray.is_initialized():
        raise ray_not_started(what)
    return ray


class UnloadedStep(NamedTuple):
    """A step that :func:`cluster_unload_all` unloaded, and where it lives."""

    name: str
    node: str
    pid: int


class ClusterStatus(Status):
    """The rows of :func:`cluster_status`: a :class:`~stepfsm.Status` with node, pid and actor."""

    def __str__(self) -> str:
        if not self:
            return "no stateful steps are alive in this Ray cluster"
        return super().__str__()


# ---------------------------------------------------------------- the board


class _Board:
    """The detached actor that holds the cluster's rows (all methods run on one event loop)."""

    def __init__(self) -> None:
        #: process key -> {step key: (sequence number, row)}
        self.rows: dict[str, dict[int, tuple[int, StepStatus]]] = {}
        #: process key -> when it last called (time.monotonic())
        self.seen: dict[str, float] = {}
        #: process key -> how many of its calls are pending here
        self.pending: dict[str, int] = {}
        self.command = 0  # the number of the latest command (cluster_unload_all)
        self.changed = asyncio.Event()
        #: command number -> process key -> (unloaded rows, error or None)
        self.answers: dict[int, dict[str, tuple[list[UnloadedStep], BaseException | None]]] = {}
        self.expected: dict[int, set[str]] = {}

    def _alive(self, process: str, now: float) -> bool:
        return self.pending.get(process, 0) > 0 or now - self.seen.get(process, 0.0) < GRACE

    def _forget(self, process: str) -> None:
        self.rows.pop(process, None)
        self.seen.pop(process, None)
        self.pending.pop(process, None)

    async def update(
        self, process: str, rows: list[tuple[int, int, StepStatus | None]], full: bool
    ) -> None:
        """Rows ``(sequence, step key, row or None: gone)`` of ``process``; ``full``: all."""
        self.seen[process] = time.monotonic()
        table = {} if full else self.rows.setdefault(process, {})
        for sequence, key, row in rows:
            old = table.get(key)
            if old is not None and old[0] > sequence:
                continue  # an older row arrived late
            if row is None:
                table.pop(key, None)
            else:
                table[key] = (sequence, row)
        self.rows[process] = table

    async def listen(self, process: str, seen: int | None) -> int:
        """Wait (up to :data:`LEASE`) for a command newer than ``seen``; the latest number.

        ``seen=None`` (a process that just started listening): the latest
        number at once, so that it never carries out an earlier command.
        """
        self.seen[process] = time.monotonic()
        self.pending[process] = self.pending.get(process, 0) + 1
        try:
            if seen is not None and self.command <= seen:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), LEASE)
            return self.command
        finally:
            self.pending[process] -= 1
            self.seen[process] = time.monotonic()

    async def bye(self, process: str) -> None:
        """``process`` is exiting: forget its rows."""
        self._forget(process)

    async def status(self, exclude: str) -> list[StepStatus]:
        """Every row of every live process but ``exclude`` (the caller, which adds its own)."""
        now = time.monotonic()
        for process in [p for p in self.rows if not self._alive(p, now)]:
            self._forget(process)
        return [
            row
            for process, table in self.rows.items()
            if process != exclude
            for _, row in sorted(table.values(), key=lambda entry: entry[0])
        ]

    async def unload_all(self, exclude: str) -> int:
        """Ask every live process but ``exclude`` to unload all its steps; the command's number."""
        now = time.monotonic()
        self.command += 1
        self.expected[self.command] = {
            p for p in set(self.rows) | set(self.pending) if p != exclude and self._alive(p, now)
        }
        self.answers[self.command] = {}
        self.changed.set()
        self.changed = asyncio.Event()
        return self.command

    async def answer(
        self, process: str, command: int, unloaded: list[UnloadedStep], error: Any
    ) -> None:
        """``process`` carried out ``command``."""
        self.seen[process] = time.monotonic()
        if command in self.answers:
            self.answers[command][process] = (unloaded, error)

    async def answers_to(
        self, command: int, timeout: float
    ) -> tuple[list[tuple[list[UnloadedStep], Any]], list[str]]:
        """The answers to ``command`` once every expected process gave one (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            answers = self.answers.get(command, {})
            now = time.monotonic()
            expected = self.expected.get(command, ())
            missing = [p for p in expected if p not in answers and self._alive(p, now)]
            if not missing or now >= deadline:
                self.answers.pop(command, None)
                self.expected.pop(command, None)
                return list(answers.values()), missing
            await asyncio.sleep(0.02)

    async def ping(self) -> bool:
        return True


_board_class: Any = None


def _board(ray: ModuleType) -> Any:
    """A handle to the board, created (detached, no CPU) if it does not exist yet."""
    global _board_class
    if _board_class is None:
        _board_class = ray.remote(_Board)
    return _board_class.options(
        name=BOARD,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=10_000,
    ).remote()


# ------------------------------------------------------------ where we are


def _where(ray: ModuleType) -> tuple[str, str, int, str | None]:
    """``(process key, node, pid, actor)`` of this process."""
    context = ray.get_runtime_context()
    node = ray.util.get_node_ip_address()
    pid = os.getpid()
    actor = None
    if context.get_actor_id() is not None:
        actor = context.get_actor_name() or _actor_label(context)
    return f"{context.get_node_id()}:{pid}", node, pid, actor


def _actor_label(context: Any) -> str:
    actor_id = context.get_actor_id() or ""
    try:
        cls = context.current_actor._ray_actor_creation_function_descriptor.class_name
    except Exception:
        cls = "actor"
    return f"{cls.rpartition('.')[2]} {actor_id[:8]}"


# ------------------------------------------------------------- the reporter


class _Reporter:
    """This worker process's reporting: a listener, a sender thread and a command thread."""

    def __init__(self, ray: ModuleType) -> None:
        self.ray = ray
        self.process, self.node, self.pid, self.actor = _where(ray)
        self.sequence = itertools.count(1)
        #: (sequence, step key, row or None, an Event to set once the board has it, or None)
        self.outbox: queue.SimpleQueue[
            tuple[int, int, StepStatus | None, threading.Event | None] | None
        ] = queue.SimpleQueue()
        self.tracked: dict[int, weakref.ref[Any]] = {}
        self.board: Any = None
        self.connected = threading.Event()
        self.stopped = False  # the board cannot be reached: nothing waits for it
        self.unsubscribe = subscribe(self.on_transition)
        for lc in registry.live():  # the steps that exist already
            self.track_lifecycle(lc)
        threading.Thread(target=self.send, name="stepfsm-ray-report", daemon=True).start()
        threading.Thread(target=self.listen, name="stepfsm-ray-listen", daemon=True).start()
        atexit.register(self.bye)

    # -- rows in

    def track_lifecycle(self, lc: Lifecycle, done: threading.Event | None = None) -> None:
        owner = lc.step
        if owner is None:
            return
        key = id(owner)
        ref = self.tracked.get(key)
        if ref is None or ref() is not owner:
            self.tracked[key] = weakref.ref(owner, self._gone(key))
        self.outbox.put(
            (
                next(self.sequence),
                key,
                registry.status_row(lc, self.node, self.pid, self.actor),
                done,
            )
        )

    def _gone(self, key: int) -> Callable[[Any], None]:
        def gone(ref: Any) -> None:  # a weakref callback: SimpleQueue.put is reentrant
            if self.tracked.get(key) is ref:
                del self.tracked[key]
                self.outbox.put((next(self.sequence), key, None, None))

        return gone

    def on_transition(self, lc: Lifecycle, record: TransitionRecord) -> None:
        settled = record.trigger in _SETTLED and not self.stopped
        done = threading.Event() if settled else None
        self.track_lifecycle(lc, done)
        if done is not None:
            done.wait(SETTLE_WAIT if self.connected.is_set() else CONNECT_WAIT)

    # -- threads

    def send(self) -> None:
        """Push queued rows to the board; the first push is the whole table."""
        try:
            self.board = _board(self.ray)
            self.ray.get(self.board.ping.remote())
        except Exception:
            log.warning("stepfsm: cannot reach the Ray status board; not reporting", exc_info=True)
            self.stopped = True
            self.unsubscribe()
            while True:  # wake whoever waits for a row
                try:
                    item = self.outbox.get_nowait()
                except queue.Empty:
                    return
                if item is not None and item[3] is not None:
                    item[3].set()
        self.connected.set()
        full = True
        while True:
            first = self.outbox.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    item = self.outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                batch.append(item)
            rows = [(sequence, key, row) for sequence, key, row, _ in batch]
            try:
                self.ray.get(self.board.update.remote(self.process, rows, full))
                full = False
            except Exception:
                log.debug("stepfsm: a report to the Ray status board failed", exc_info=True)
            for *_, done in batch:
                if done is not None:
                    done.set()

    def listen(self) -> None:
        """Keep a call pending at the board; carry out each command it answers with."""
        if not self.connected.wait(60):
            return
        seen: int | None = None
        while True:
            try:
                command = self.ray.get(self.board.listen.remote(self.process, seen))
            except Exception:
                if not self.ray.is_initialized():
                    return
                time.sleep(1.0)
                continue
            if seen is not None and command > seen:
                self.unload_all(command)
            seen = command

    def unload_all(self, command: int) -> None:
        names_before = {lc.name for lc in registry.live()}
        error: BaseException | None = None
        try:
            names: tuple[str, ...] = registry.unload_all()
        except Exception as failure:
            error = _portable(failure)
            names = tuple(
                lc.name
                for lc in registry.live()
                if lc.name in names_before and lc.state is State.UNLOADED
            )
        unloaded = [UnloadedStep(name, self.node, self.pid) for name in names]
        try:
            self.ray.get(self.board.answer.remote(self.process, command, unloaded, error))
        except Exception:
            log.debug("stepfsm: an answer to the Ray status board failed", exc_info=True)

    def bye(self) -> None:
        """At exit (an actor that ends, a worker shut down): the board forgets this process."""
        try:
            if self.board is not None and self.ray.is_initialized():
                self.ray.get(self.board.bye.remote(self.process), timeout=2.0)
        except Exception:  # the interpreter is exiting; the lease runs out instead
            pass


def _portable(error: BaseException) -> BaseException:
    """``error``, or a ``RuntimeError`` with its text when it does not pickle."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(describe(error))
    return error


_reporter: _Reporter | None = None
_reporter_lock: Final = threading.Lock()


def _in_worker(ray: ModuleType) -> bool:
    return bool(ray.is_initialized()) and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def reporting() -> bool:
    """Whether this process reports its steps' transitions to the cluster's board."""
    return _reporter is not None


def report_here() -> bool:
    """Report this process's steps to ``cluster_status()`` from now on (a Ray worker only).

    A Ray worker starts reporting by itself when it creates an actor made with
    :func:`remote` or unpickles a stateful step; call this in a worker that
    only builds steps of its own (a Ray task, a plain ``ray.remote`` actor).
    In the driver it does nothing (``cluster_status()`` reads the driver's
    steps directly) and returns ``False``.

    Raises:
        ImportError: Ray is not installed.
        RuntimeError: Ray is not initialised in this process.
    """
    global _reporter
    ray = _connected("report_here()")
    if not _in_worker(ray):
        return False
    with _reporter_lock:
        if _reporter is None:
            _reporter = _Reporter(ray)
    return True


def arrive(settings: dict[str, Any]) -> None:
    """Where a step pickled after this module was imported arrives: report, if a Ray worker.

    Called by stepfsm before the step is rebuilt (``docs/design.md``, section
    13). Outside a Ray worker (``spawn``, dask) it does nothing and imports nothing.
    """
    ray = sys.modules.get("ray")
    if _reporter is not None or ray is None or not hasattr(ray, "is_initialized"):
        return
    if _in_worker(ray):
        report_here()


def _track(step: object) -> None:
    reporter = _reporter
    if reporter is not None:
        reporter.track_lifecycle(lifecycle(step))


# ------------------------------------------------------------------ actors


def remote(cls: C | None = None, /, **options: Any) -> Any:
    """``ray.remote`` for a stateful class: its actors report to :func:`cluster_status`.

    Use it as ``sr.remote(MyLLM)``, ``@sr.remote`` or ``sr.remote(num_gpus=1)(MyLLM)``;
    ``options`` are ``ray.remote``'s. The actor is an instance of a subclass
    of ``cls`` (same name) that starts reporting in its process before it is
    constructed. Its methods behave as in your process: a guarded method
    before ``load()`` raises ``NotLoadedError``, which ``ray.get`` raises as a
    ``RayTaskError`` that is also a ``NotLoadedError`` (with ``.step``,
    ``.state``; Ray's ``.cause`` is the stepfsm error itself).
    Plain ``ray.remote(cls)`` works as well, without the reporting.

    Raises:
        TypeError: ``cls`` is not stateful.
        ImportError: Ray is not installed.
    """

    def make(target: C) -> Any:
        if not isinstance(target, type) or class_config(target) is None:
            raise TypeError(
                f"sr.remote() makes Ray actors of stateful classes, and {target!r} is not one: "
                "decorate it with @stepfsm.stateful (or inherit stepfsm.Stateful) first."
            )
        ray = _ray()
        actor_class = _reporting_class(target)
        return ray.remote(**options)(actor_class) if options else ray.remote(actor_class)

    return make(cls) if cls is not None else make


def _reporting_class(target: type) -> type:
    init: Callable[..., None] = target.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        report_here()
        init(self, *args, **kwargs)
        _track(self)

    namespace = {
        "__init__": __init__,
        "__module__": target.__module__,
        "__qualname__": target.__qualname__,
        "__doc__": target.__doc__,
    }
    return type(target.__name__, (target,), namespace)


# ------------------------------------------------------------- the driver


def _own_rows(ray: ModuleType) -> list[StepStatus]:
    _, node, pid, actor = _where(ray)
    return [row._replace(node=node, pid=pid, actor=actor) for row in registry.status()]


def cluster_status(timeout: float = 30.0) -> ClusterStatus:
    """Every live stateful step in the Ray cluster: this process's, then the workers'.

    A :class:`~stepfsm.Status` whose rows also say ``node`` (its IP address),
    ``pid`` and ``actor`` (the actor's name, or class and id; ``None`` for a
    driver or task). One call to the cluster's board; no worker is asked.

    Raises:
        ImportError: Ray is not installed (``pip install 'stepfsm[ray]'``).
        RuntimeError: Ray is not initialised in this process (call ``ray.init()``).
    """
    ray = _connected("cluster_status()")
    process = _where(ray)[0]
    board = _board(ray)
    rows = ray.get(board.status.remote(process), timeout=timeout)
    return ClusterStatus([*_own_rows(ray), *rows])


def cluster_unload_all(timeout: float = 60.0) -> tuple[UnloadedStep, ...]:
    """Unload every loaded (or failed) step in the Ray cluster: here, and in each reporting worker.

    Like ``stepfsm.unload_all()`` in every process (forcing past holders,
    newest load first): every step is tried even if one fails, and the
    first error is raised at the end.

    Returns:
        The steps that are now unloaded, with their node and pid.

    Raises:
        ImportError: Ray is not installed.
        RuntimeError: Ray is not initialised in this process.
        TimeoutError: a worker did not answer within ``timeout`` seconds
            (after the others' steps were unloaded).
        UnloadError: the first unload that raised, in any process.
    """
    ray = _connected("cluster_unload_all()")
    process, node, pid, _ = _where(ray)
    board = _board(ray)
    command = ray.get(board.unload_all.remote(process), timeout=timeout)
    first: BaseException | None = None
    try:
        done = [UnloadedStep(name, node, pid) for name in registry.unload_all()]
    except Exception as failure:
        first, done = failure, []
    answers, missing = ray.get(board.answers_to.remote(command, timeout), timeout=timeout + 10)
    for unloaded, remote_error in answers:
        done.extend(unloaded)
        first = first or remote_error
    if first is not None:
        raise first
    if missing:
        raise TimeoutError(
            f"cluster_unload_all(): {len(missing)} process(es) did not answer within "
            f"{timeout:g} s ({', '.join(missing)}); the others' steps were unloaded."
        )
    return tuple(done)


_travel.require("ray", __name__, "arrive", {})
