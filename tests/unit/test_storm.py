"""A storm of real SIGINTs during loads and unloads: every step ends settled and usable.

The deterministic sweep (``test_interrupt_sweep.py``) puts one interrupt at
each library event. Real signals differ: Python delivers them where it checks
for them (function entries, loop jumps, after C calls), several can land in
one operation, and one can land inside the recovery from another. Here a
second thread sends SIGINT to the main thread every few hundred microseconds
while the main thread loads, unloads, reloads and uses steps that another
thread uses too. Interrupts are delivered only while the main thread is
inside an operation (the test's handler drops the rest), so the loop itself
survives. Afterwards every step must be settled (abandoned claims are taken
over), agree with ``status()``, load from another thread within seconds, and
unload.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

import stepfsm
from stepfsm import State, StepFSMError, registry
from tests.conftest import FakeStep

STORM_SECONDS = 3.0


class Storm:
    """Sends SIGINT to the main thread at random short intervals while ``running``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.running = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        main = threading.main_thread().ident or 0
        while not self.stop.is_set():
            if self.running.wait(0.05):
                signal.pthread_kill(main, signal.SIGINT)
                self.sent += 1
            time.sleep(self.rng.uniform(0.00005, 0.0008))


def _inside(frame: FrameType | None, code: Any) -> bool:
    """Whether ``code`` is running in ``frame`` or one of its callers."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def operate(fn: Callable[[], object]) -> None:
    """Run one operation: the only place the storm's interrupts are delivered."""
    fn()


@pytest.fixture
def storm_handler() -> Iterator[list[int]]:
    """A SIGINT handler that raises KeyboardInterrupt only inside :func:`operate`.

    An interrupt that lands in a weakref callback run by the garbage collector
    is "unraisable": a minimal hook counts those, and the handler never
    interrupts the hook itself (pytest's own hook, interrupted, fails the test).
    """
    delivered = [0]
    unraisable: list[type[BaseException]] = []

    def hook(report: Any) -> None:
        unraisable.append(report.exc_type)

    def handler(signum: int, frame: FrameType | None) -> None:
        if _inside(frame, operate.__code__) and not _inside(frame, hook.__code__):
            delivered[0] += 1
            raise KeyboardInterrupt
        # elsewhere (the test's own loop): dropped, so the loop itself survives

    previous, previous_hook = signal.signal(signal.SIGINT, handler), sys.unraisablehook
    sys.unraisablehook = hook
    try:
        yield delivered
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
    assert set(unraisable) <= {KeyboardInterrupt}, unraisable


def _ops(step: FakeStep) -> list[Callable[[], object]]:
    lc = stepfsm.lifecycle(step)
    return [
        step.load,
        step.unload,
        lambda: stepfsm.ensure_loaded(step),
        lambda: stepfsm.reload(step),
        lambda: step.use(1),
        lambda: lc.unload(force=True),
        lambda: _with_loaded(step),
        stepfsm.status,
    ]


def _hold(step: FakeStep) -> None:
    with stepfsm.loaded(step):
        pass


def _with_loaded(step: FakeStep) -> None:
    with stepfsm.loaded(step):
        step.use(1)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="pthread_kill")
def test_sigint_storm_leaves_every_step_settled_and_usable(
    storm_handler: list[int], quiet_log: None, busy_switching: None
) -> None:
    """Thousands of real SIGINTs, in library and user code alike, never leave a step stuck."""
    steps = [FakeStep(f"storm_{i}") for i in range(3)]
    for step in steps:
        stepfsm.lifecycle(step).timeout = 5.0
        # an interrupt's traceback may keep what a load made alive for a while: not a
        # leak this test is about (and the helper outlives the warnings filter below)
        stepfsm.lifecycle(step).on_leak = "ignore"
    storm = Storm(seed=7)
    storm.thread.start()
    stop_helper = threading.Event()
    helper_errors: list[BaseException] = []

    def helper() -> None:  # another thread, never interrupted, using the same steps
        rng = random.Random(11)
        while not stop_helper.is_set():
            step = rng.choice(steps)
            try:
                # no guarded calls: one racing an unload is the drain's business
                rng.choice((stepfsm.ensure_loaded, _hold))(step)
            except StepFSMError:
                pass  # refusals, timeouts and failures of steps the storm hit are expected
            except BaseException as error:  # anything else fails the test
                helper_errors.append(error)
                return

    helper_thread = threading.Thread(target=helper, daemon=True)
    helper_thread.start()
    rng = random.Random(3)
    operations = interrupted = 0
    deadline = time.monotonic() + STORM_SECONDS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stepfsm.StepFSMWarning)
        storm.running.set()
        while time.monotonic() < deadline:
            step = rng.choice(steps)
            try:
                operate(rng.choice(_ops(step)))
            except KeyboardInterrupt:
                interrupted += 1
            except StepFSMError:
                pass  # a refusal or a failure the storm caused: allowed
            operations += 1
        storm.running.clear()
        storm.stop.set()
        storm.thread.join(5)
    stop_helper.set()
    helper_thread.join(10)
    assert not helper_thread.is_alive(), "the helper thread is stuck"
    assert helper_errors == []
    print(
        f"{storm.sent} SIGINTs sent, {storm_handler[0]} delivered inside operations, "
        f"{interrupted} operations interrupted out of {operations}"
    )
    assert interrupted > 50, "the storm hardly hit anything: is the handler installed?"

    for step in steps:
        lc = stepfsm.lifecycle(step)
        state = lc.state
        assert state not in (State.LOADING, State.UNLOADING), f"{lc.name} stuck {state.value}"
        row = next(r for r in stepfsm.status() if r.name == lc.name)
        assert row.state is state
        assert (id(step) in registry.loaded_table()) == (state is State.LOADED)
        box: dict[str, Any] = {}
        loader = threading.Thread(
            target=lambda lc=lc, box=box: box.setdefault("ran", lc.ensure_loaded()), daemon=True
        )
        loader.start()
        loader.join(10)
        assert not loader.is_alive(), f"{lc.name}: another thread could not load it"
        assert lc.state is State.LOADED
        assert step.use(1) == 1
        lc.unload(force=True)
        assert (lc.state, lc.statistics().owner) == (State.UNLOADED, None)
        assert step.handle is None
