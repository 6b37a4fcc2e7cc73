"""Random concurrent guarded calls and unloads: no guarded call ever runs while the unload does.

``docs/design.md`` §11. A hypothesis state machine starts guarded calls on
their own threads and holds each open on a gate, and starts loads, unloads,
reloads, ``unload_all()``, releases and short-drain unloads on other threads,
releasing gates in a random order. The step (``Probe``) checks the promise
itself, at every moment and not only between steps: the user's unload code
records a violation if it begins while a guarded call is inside its body, and
a guarded call records one if it begins, or ends, while the unload code runs
or without its resource. After every step hypothesis also checks that no
violation was recorded, that no thread failed unexpectedly, and that the
flags agree with the lifecycle; at the end every thread must finish.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import stepfsm
from stepfsm import State, StepInUseError, StepStateError

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
SETTINGS = settings(
    max_examples=150 if PROFILE == "ci" else 25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
WAIT = 10.0  # seconds any thread of an example may take before the example fails
#: a thread that has not finished (or entered its call) by then is taken to be waiting
SETTLE = 0.02


@stepfsm.stateful(guard=("call",))
class Probe:
    """A step that checks, from inside, that its unload and its guarded calls never overlap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0  # guarded calls inside their body now
        self.unloading = False  # the unload code runs now
        self.resource: object | None = None
        self.violations: list[str] = []

    def load(self) -> None:
        self.resource = object()

    def unload(self) -> None:
        with self.lock:
            if self.running:
                self.violations.append(f"the unload began while {self.running} call(s) ran")
            self.unloading = True
        time.sleep(0.001)  # a window in which a call could slip in
        with self.lock:
            self.resource = None
            self.unloading = False

    def call(self, entered: threading.Event, gate: threading.Event) -> None:
        with self.lock:
            if self.unloading or self.resource is None:
                self.violations.append("a call began during the unload or without its resource")
            self.running += 1
        entered.set()
        try:
            assert gate.wait(WAIT), "a gate was never opened"
            with self.lock:
                if self.unloading or self.resource is None:
                    self.violations.append("the unload ran while a call was inside its body")
        finally:
            with self.lock:
                self.running -= 1


#: what a thread of the machine may raise without that being a failure: refusals
#: (not loaded, in use, a release without a hold, a drain that expired, a wait)
ALLOWED = (StepStateError,)


class Worker:
    """One operation on its own thread."""

    def __init__(self, what: str, fn: Callable[[], object]) -> None:
        self.what = what
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except ALLOWED:
            pass
        except stepfsm.LoadError as error:
            # a load from 'failed' cleans up first, and that clean-up waits for the calls
            # too: with the short drain of another rule in force, it may give up
            if not isinstance(error.cause, StepInUseError):
                self.error = error
        except BaseException as error:  # reported by the invariant
            self.error = error

    def settle(self, entered: threading.Event | None = None) -> None:
        """Give the thread a moment to finish (or to enter its call) before the next step."""
        deadline = time.monotonic() + SETTLE
        while self.thread.is_alive() and time.monotonic() < deadline:
            if entered is not None and entered.is_set():
                return
            time.sleep(0.0005)


class DrainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.probe = Probe()
        self.lc = stepfsm.lifecycle(self.probe)
        self.lc.timeout = WAIT
        self.lc.on_leak = "ignore"
        self.gates: list[threading.Event] = []
        self.workers: list[Worker] = []

    def _start(self, what: str, fn: Callable[[], object]) -> Worker:
        worker = Worker(what, fn)
        self.workers.append(worker)
        return worker

    @rule()
    def call(self) -> None:
        entered, gate = threading.Event(), threading.Event()
        self.gates.append(gate)
        self._start("call", lambda: self.probe.call(entered, gate)).settle(entered)

    @rule(data=st.data())
    def open_a_gate(self, data: Any) -> None:
        closed = [gate for gate in self.gates if not gate.is_set()]
        if closed:
            data.draw(st.sampled_from(closed)).set()
            time.sleep(0.001)

    @rule(
        operation=st.sampled_from(
            ["load", "ensure_loaded", "unload", "reload", "unload_all", "acquire", "release"]
        )
    )
    def operate(self, operation: str) -> None:
        lc = self.lc
        fns: dict[str, Callable[[], object]] = {
            "load": lc.load,
            "ensure_loaded": lc.ensure_loaded,
            "unload": lc.unload,
            "reload": lc.reload,
            "unload_all": stepfsm.unload_all,
            "acquire": lambda: lc.acquire("machine"),
            "release": lambda: lc.release("machine"),
        }
        self._start(operation, fns[operation]).settle()

    @rule()
    def unload_with_a_short_drain(self) -> None:
        def unload() -> None:
            self.lc.drain_timeout = 0.005
            try:
                self.lc.unload()
            finally:
                self.lc.drain_timeout = None

        self._start("short unload", unload).settle()

    @invariant()
    def the_unload_never_overlaps_a_call(self) -> None:
        with self.probe.lock:
            assert not (self.probe.unloading and self.probe.running), "overlap right now"
            assert self.probe.violations == []
        for worker in self.workers:
            assert worker.error is None, f"{worker.what} raised {worker.error!r}"

    def teardown(self) -> None:
        for gate in self.gates:
            gate.set()
        deadline = time.monotonic() + WAIT
        for worker in self.workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [w.what for w in self.workers if w.thread.is_alive()]
        assert stuck == [], f"threads never finished: {stuck}"
        assert self.probe.violations == []
        assert self.probe.running == 0
        assert self.lc.state in (State.LOADED, State.UNLOADED, State.FAILED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stepfsm.StepFSMWarning)
            self.lc.unload(force=True)


@pytest.mark.usefixtures("quiet_log")
def test_no_guarded_call_runs_while_the_unload_runs() -> None:
    run_state_machine_as_test(DrainMachine, settings=SETTINGS)
