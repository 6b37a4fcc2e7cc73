"""An interrupt at every point of stepfsm's own code: the step always ends settled and usable.

A ``KeyboardInterrupt`` may arrive at any bytecode, including inside stepfsm
and inside ``transitions``' trigger (``docs/design.md``, section 9). These
tests do not sample: with ``sys.settrace`` they raise the interrupt at the
1st, 2nd, 3rd, ... trace event (``call``, ``line``, ``return``) in a frame of
stepfsm's or ``transitions``' code during one operation, until an operation
completes with no event left to hit. After every single run they check:

* the state is settled (never ``loading``/``unloading``) without any help:
  one interrupt is always handled by the operation it hit;
* ``loaded`` only if the user's load returned; ``failed`` carries the
  interrupt itself as ``error``;
* ``status()``, the table of loaded steps and the guards' flag agree;
* a guarded call works exactly when the step is ``loaded``;
* another thread's ``ensure_loaded()`` succeeds within seconds (an abandoned
  claim is taken over);
* ``unload()`` then works and releases the resource.

The user's own load/unload code lives in this file, so it is never hit: the
interrupt lands only in the library. ``test_storm.py`` sends real SIGINTs.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import pytest
import transitions

import stepfsm
from stepfsm import NotLoadedError, State, StepFailedError, registry
from tests.conftest import HANDLES
from tests.fakes import Boom, Resource
from tests.support import in_thread

STEPFSM_DIR = os.path.dirname(os.path.abspath(stepfsm.__file__))
TRANSITIONS_DIR = os.path.dirname(os.path.abspath(transitions.__file__))
LIBRARY = (STEPFSM_DIR, TRANSITIONS_DIR, "<stepfsm ")
FLAG = "__stepfsm_loaded__"
NAMES = itertools.count()


class Injected(KeyboardInterrupt):
    """The interrupt the sweep raises (a KeyboardInterrupt, told apart from a real one)."""


@stepfsm.stateful(guard=("use", "use_for"))
class SweepStep:
    """A step whose load/unload record whether their code returned."""

    def __init__(self, name: str, child: SweepStep | None = None) -> None:
        self.name = name
        self.child = child
        self.handle: Resource | None = None
        self.load_returned = False
        self.unload_returned = False
        self.fail_load = False

    def load(self) -> str:
        self.load_returned = False
        if self.child is not None:
            self.child.load()  # an acquire of the child
        if self.fail_load:
            raise Boom("load failed")
        self.handle = HANDLES.open(self.name)
        self.load_returned = True
        return "loaded"

    def unload(self) -> str:
        self.unload_returned = False
        if self.handle is not None:
            self.handle.close()
        self.handle = None
        if self.child is not None:
            self.child.unload()  # lets go of the parent's hold
        self.unload_returned = True
        return "unloaded"

    def use(self) -> int:
        assert self.handle is not None, "use() ran without a handle"
        return 1

    def use_for(self, seconds: float, started: threading.Event) -> None:
        """A guarded call that runs a while: an unload meanwhile must wait for it."""
        started.set()
        time.sleep(seconds)
        assert self.handle is not None, "unloaded under a call"
        assert not self.handle.closed, "unloaded under a call"


@dataclass
class Injector:
    """Raises :class:`Injected` at the ``target``-th library trace event, once."""

    target: int
    seen: int = 0
    fired: Injected | None = None
    where: str = ""
    events: list[str] = field(default_factory=list)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.fired is not None:
            return None
        if not frame.f_code.co_filename.startswith(LIBRARY):
            return None  # user code (this file), threading, logging...: never hit
        if event in ("call", "line", "return"):
            self.seen += 1
            if self.seen == self.target:
                self.where = (
                    f"{event} {os.path.basename(frame.f_code.co_filename)}:"
                    f"{frame.f_lineno} in {frame.f_code.co_name}"
                )
                self.fired = Injected(self.where)
                raise self.fired
        return self


def run_injected(target: int, operation: Callable[[], object]) -> Injector:
    """Run ``operation`` with an interrupt at library event ``target``; return what happened."""
    injector = Injector(target)
    sys.settrace(injector)
    caught: BaseException | None = None
    try:
        operation()
    except Injected as error:
        caught = error
    finally:
        sys.settrace(None)
    # (one fired inside a weakref callback is reported as unraisable, not raised)
    assert caught in (None, injector.fired), "the injected interrupt was replaced"
    return injector


def check_settled(step: SweepStep, injector: Injector) -> None:
    """The invariants after one interrupted (or completed) operation."""
    lc = stepfsm.lifecycle(step)
    where = injector.where or "nowhere (the operation completed)"
    assert gc.isenabled(), f"the garbage collector was left off ({where})"
    raw = lc.statistics().state  # no repair: the interrupted operation settled it itself
    assert raw not in (State.LOADING, State.UNLOADING), (
        f"left {raw.value} after an interrupt at {where}"
    )
    state = lc.state
    assert state is raw
    if state is State.LOADED:
        assert step.load_returned, f"loaded, but the user's load never returned ({where})"
    if state is State.FAILED:  # the interrupt itself, or what the user's code raised
        for error in (lc.error, lc.cleanup_error):
            assert error is None or error is injector.fired or isinstance(error, Boom), (
                f"failed with {error!r}, neither the interrupt nor the step's own error ({where})"
            )
    row = next(r for r in stepfsm.status() if r.name == lc.name)
    assert row.state is state, f"status() says {row.state.value}, the lifecycle {state.value}"
    loaded = state is State.LOADED
    assert (id(step) in registry.loaded_table()) == loaded, f"loaded table disagrees ({where})"
    flag = vars(step).get(FLAG)
    assert (isinstance(flag, registry.Token) and flag is lc._token) == loaded, (
        f"the guards' flag disagrees ({where})"
    )
    if loaded:
        assert step.use() == 1
    else:
        with pytest.raises(NotLoadedError) as refused:
            step.use()
        assert isinstance(refused.value, StepFailedError) == (state is State.FAILED)
    for pool in stepfsm.budgets():  # a budget counts exactly its loaded steps
        counted = set(pool._held)
        booked = {lc for lc in registry.live() if lc._booked is pool and lc.state is State.LOADED}
        assert counted == booked, (
            f"budget {pool.name!r} counts {counted}, loaded {booked} ({where})"
        )
        assert pool.used <= pool.capacity, where
        assert pool.used == sum(pool._held.values()), (
            f"a loaded step's booking is undecided ({where})"
        )


def check_recovers(step: SweepStep, injector: Injector) -> None:
    """Another thread can load the step at once, and unload() then works."""
    lc = stepfsm.lifecycle(step)
    lc.timeout = 5.0
    in_thread(lc.ensure_loaded)
    assert lc.state is State.LOADED, injector.where
    assert step.use() == 1
    lc.unload(force=True)
    assert (lc.state, step.handle) == (State.UNLOADED, None), injector.where
    if step.child is not None:
        child = stepfsm.lifecycle(step.child)
        assert child.state is State.UNLOADED or child.holders == (), injector.where
        child.unload(force=True)
        assert child.state is State.UNLOADED


Setup = Callable[[SweepStep], None]


def _loaded(step: SweepStep) -> None:
    step.load()


def _failed(step: SweepStep) -> None:
    step.fail_load = True
    with pytest.raises(stepfsm.LoadError):
        step.load()
    step.fail_load = False


def _nothing(step: SweepStep) -> None:
    pass


CALLS: list[threading.Thread] = []


def _calling(step: SweepStep) -> None:
    """Loaded, with a guarded call running on another thread for 10 ms (the drain waits)."""
    step.load()
    started = threading.Event()
    thread = threading.Thread(target=step.use_for, args=(0.01, started), daemon=True)
    CALLS.append(thread)
    thread.start()
    assert started.wait(5)


CROWD: list[SweepStep] = []


def _crowded(step: SweepStep) -> None:
    """The step books all of a budget that an idle loaded step fills: its load evicts that one."""
    stepfsm.budget("sweep", 1)
    other = SweepStep(f"crowd_{next(NAMES)}")
    stepfsm.lifecycle(other).cost = ("sweep", 1)
    stepfsm.lifecycle(other).on_leak = "ignore"  # its release check is swept in "unload"
    other.load()  # evicts whatever an earlier run left loaded in the budget
    CROWD[:] = [other]  # alive until the next run (earlier ones go: the registry stays small)
    stepfsm.lifecycle(step).cost = ("sweep", 1)


#: (name, how the step starts, the operation under the sweep)
OPERATIONS: list[tuple[str, Setup, Callable[[SweepStep], object]]] = [
    ("load", _nothing, lambda s: s.load()),
    ("lifecycle.load", _nothing, lambda s: stepfsm.lifecycle(s).load()),
    ("ensure_loaded", _nothing, stepfsm.ensure_loaded),
    ("unload", _loaded, lambda s: s.unload()),
    ("unload while a call runs", _calling, lambda s: s.unload()),
    ("lifecycle.unload(force)", _loaded, lambda s: stepfsm.lifecycle(s).unload(force=True)),
    ("reload", _loaded, stepfsm.reload),
    ("load after failure", _failed, lambda s: s.load()),
    ("unload after failure", _failed, lambda s: s.unload()),
    ("failing load", lambda s: setattr(s, "fail_load", True), lambda s: _failing_load(s)),
    ("guarded call", _loaded, lambda s: s.use()),
    ("guarded call before load", _nothing, lambda s: _refused_use(s)),
    ("acquire", _nothing, lambda s: stepfsm.lifecycle(s).acquire("sweep")),
    ("with loaded()", _nothing, lambda s: _with_loaded(s)),
    ("unload_all", _loaded, lambda s: stepfsm.unload_all()),
    ("status", _loaded, lambda s: stepfsm.status()),
    ("load that evicts", _crowded, lambda s: s.load()),
]


def _failing_load(step: SweepStep) -> None:
    with pytest.raises(stepfsm.LoadError):
        step.load()


def _refused_use(step: SweepStep) -> None:
    with pytest.raises(NotLoadedError):
        step.use()


def _with_loaded(step: SweepStep) -> None:
    with stepfsm.loaded(step):
        step.use()


def sweep(setup: Setup, operation: Callable[[SweepStep], object], child: bool = False) -> int:
    """Interrupt ``operation`` at every library event in turn; return how many there were."""
    target = 0
    while True:
        target += 1
        n = next(NAMES)  # unique: steps of earlier sweeps may still wait for the gc
        step = SweepStep(f"sweep_{n}", SweepStep(f"child_{n}") if child else None)
        setup(step)
        injector = run_injected(target, lambda step=step: operation(step))
        while CALLS:  # a guarded call of the setup: it ends by itself, unharmed
            CALLS.pop().join(5)
        step.fail_load = False
        try:
            check_settled(step, injector)
            if injector.fired is not None:
                # its traceback holds the frames it went through, and one of the load's
                # holds what the load set: a leak the release check would report
                injector.fired.__traceback__ = injector.fired.__context__ = None
            check_recovers(step, injector)
        except BaseException as error:
            raise AssertionError(
                f"after an interrupt at library event {target} ({injector.where}): {error}"
            ) from error
        if injector.fired is None:
            assert target > 1, "the sweep hit no library event: is tracing working?"
            return target - 1


@pytest.fixture(autouse=True)
def _quiet(quiet_log: None) -> Iterator[None]:
    """Clean-ups that fail after an interrupt warn; that is expected here.

    So do leaks: an interrupt's traceback holds the frames it went through, and
    their locals hold what the load set. The test drops the traceback of the
    interrupt it caught, but one injected into a weakref callback (run by a gc
    pass inside any frame, e.g. the release check's) is reported as unraisable
    and its traceback kept. The release check still runs, and is swept.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stepfsm.CleanupWarning)
        warnings.simplefilter("ignore", stepfsm.LeakWarning)
        yield


# An interrupt inside a weakref callback of an earlier sweep's dead step (the
# registry's clean-up) is swallowed by Python with an "Exception ignored" report.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("setup", "operation"),
    [pytest.param(setup, op, id=name) for name, setup, op in OPERATIONS],
)
def test_interrupt_at_every_library_event(
    setup: Setup, operation: Callable[[SweepStep], object]
) -> None:
    """Whatever library event the interrupt hits, the step ends settled, consistent and usable."""
    points = sweep(setup, operation)
    print(f"{points} interrupt points checked")


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("setup", "operation"),
    [
        pytest.param(_nothing, lambda s: s.load(), id="parent load"),
        pytest.param(_loaded, lambda s: s.unload(), id="parent unload"),
    ],
)
def test_interrupt_at_every_event_of_a_nested_load(
    setup: Setup, operation: Callable[[SweepStep], object]
) -> None:
    """A parent loading its child (an acquire) survives an interrupt anywhere; so does the child."""
    points = sweep(setup, operation, child=True)
    print(f"{points} interrupt points checked")
