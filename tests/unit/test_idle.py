"""idle_timeout: a loaded step nobody holds unloads after that long unused (docs/design.md §12)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import stepfsm
from stepfsm import DefinitionError, State

IDLE = 0.2  # seconds
PATIENCE = 5.0  # how long a test waits for the timer thread on a busy machine


@stepfsm.stateful(guard=("run",), idle_timeout=IDLE)
class Idler:
    def __init__(self, name: str) -> None:
        self.name = name
        self.model: object | None = None

    def load(self) -> None:
        self.model = object()

    def unload(self) -> None:
        self.model = None

    def run(self, seconds: float = 0.0) -> str:
        time.sleep(seconds)
        return self.name


def eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def unloaded(step: object) -> Callable[[], bool]:
    return lambda: stepfsm.state(step) is State.UNLOADED


def test_an_idle_step_unloads_by_itself_and_says_why() -> None:
    step = Idler("a")
    started = time.monotonic()
    step.load()
    assert eventually(unloaded(step))
    assert time.monotonic() - started >= IDLE
    assert step.model is None
    record = stepfsm.lifecycle(step).history[-1]
    assert (record.trigger, record.reason) == ("finish_unload", f"idle for {IDLE:g} s")
    step.load()  # and it loads again as usual
    assert step.run() == "a"


def test_use_keeps_it_loaded() -> None:
    step = Idler("used")
    step.load()
    until = time.monotonic() + 3 * IDLE
    while time.monotonic() < until:
        step.run()
        time.sleep(IDLE / 4)
        assert stepfsm.state(step) is State.LOADED
    assert eventually(unloaded(step))


def test_a_held_step_stays_loaded_and_goes_after_its_release() -> None:
    step = Idler("held")
    lc = stepfsm.lifecycle(step)
    lc.acquire("notebook")
    time.sleep(3 * IDLE)
    assert lc.state is State.LOADED
    lc.release("notebook")  # the acquire loaded it: the release unloads it at once
    assert lc.state is State.UNLOADED
    step.load()
    lc.acquire("notebook")  # held, but the acquire did not load it
    time.sleep(3 * IDLE)
    assert lc.state is State.LOADED
    lc.release("notebook")
    assert lc.state is State.LOADED
    assert eventually(unloaded(step))


def test_a_running_guarded_call_keeps_it_loaded() -> None:
    step = Idler("busy")
    step.load()
    call = threading.Thread(target=step.run, args=(4 * IDLE,), daemon=True)
    call.start()
    time.sleep(3 * IDLE)
    assert stepfsm.state(step) is State.LOADED
    call.join(PATIENCE)
    assert eventually(unloaded(step))


def test_one_timer_thread_serves_every_step() -> None:
    steps = [Idler(f"s{i}") for i in range(20)]
    for step in steps:
        step.load()
    timers = [t for t in threading.enumerate() if t.name == "stepfsm-idle"]
    assert len(timers) == 1
    assert eventually(lambda: all(stepfsm.state(s) is State.UNLOADED for s in steps))


def test_off_by_default_and_set_at_every_level() -> None:
    @stepfsm.stateful
    class Plain:
        def load(self) -> None:
            pass

        def unload(self) -> None:
            pass

    plain, other = Plain(), Plain()
    assert stepfsm.lifecycle(plain).idle_timeout is None
    plain.load()
    time.sleep(3 * IDLE)
    assert stepfsm.state(plain) is State.LOADED  # off by default
    plain.unload()
    with stepfsm.configure(idle_timeout=IDLE):
        assert stepfsm.lifecycle(plain).idle_timeout == IDLE
        stepfsm.lifecycle(other).idle_timeout = 60  # the instance wins
        plain.load()
        other.load()
        assert eventually(unloaded(plain))
        assert stepfsm.state(other) is State.LOADED
    assert stepfsm.lifecycle(Idler("x")).idle_timeout == IDLE  # the class's


def test_a_change_applies_from_the_next_load() -> None:
    step = Idler("late")
    lc = stepfsm.lifecycle(step)
    lc.idle_timeout = None  # the class says IDLE; None means "no instance setting"
    assert lc.idle_timeout == IDLE
    lc.idle_timeout = 60
    step.load()
    lc.idle_timeout = IDLE  # this load was scheduled for a look in 60 s
    time.sleep(3 * IDLE)
    assert lc.state is State.LOADED
    step.unload()
    step.load()
    assert eventually(unloaded(step))


@pytest.mark.parametrize("value", [-1, "soon", True, float("nan")])
def test_bad_idle_timeouts_are_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="idle_timeout"):
        stepfsm.configure(idle_timeout=value)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="idle_timeout"):
        stepfsm.stateful(idle_timeout=value)(type("Bad", (), {"load": id, "unload": id}))  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match="idle_timeout"):
        stepfsm.lifecycle(Idler("x")).idle_timeout = value  # type: ignore[assignment]
