"""Shared test doubles and settings.

``FakeStep`` is a stateful step whose resource is a fake ``Resource`` counted
in ``HANDLES`` while it is open, so a test can ask "is a resource held?" without
trusting stepfsm's own state. Its load/unload can be told to fail, to be
interrupted, to take time, or to wait on an event.

Hypothesis profiles: ``dev`` (fast, the default) and ``ci`` (many examples, no
deadline), chosen with ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stepfsm
from stepfsm import _budget, _settings, registry
from tests.fakes import Resource, Resources
from tests.support import MEASUREMENTS, stacks

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    settings.register_profile("dev", max_examples=60, deadline=None)
    settings.register_profile(
        "ci",
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


#: Every open resource of every FakeStep (a test counts only those it opens).
HANDLES = Resources()


@stepfsm.stateful(guard=("use",))
class FakeStep:
    """A step that opens a fake Resource in load() and closes it in unload()."""

    def __init__(self, name: str = "fake", delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.handle: Resource | None = None
        self.loads = 0
        self.unloads = 0
        self.fail_load: BaseException | None = None
        self.fail_unload: BaseException | None = None
        self.gate: threading.Event | None = None  # load/unload wait on it when set

    def load(self) -> None:
        self.loads += 1
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        if self.fail_load is not None:
            raise self.fail_load
        self.handle = HANDLES.open(self.name)

    def unload(self) -> None:
        self.unloads += 1
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail_unload is not None:
            raise self.fail_unload
        if self.handle is not None:
            self.handle.close()
        self.handle = None

    def use(self, x: int = 1, *, twice: bool = False) -> int:
        assert self.handle is not None, "use() ran without a handle"
        return x * 2 if twice else x

    @property
    def held(self) -> bool:
        return self.handle is not None and not self.handle.closed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """distilabel's own test suite (``distilabel_compat``) runs last.

    ``dev.py test`` runs the property tests beside this process for their first
    minutes; some of distilabel's tests depend on timing and failed on the
    starved CPU (docs/decisions.md, "distilabel's suite"). Last, they run alone.
    """
    last = [item for item in items if "distilabel_compat" in item.nodeid]
    if last:
        items[:] = [item for item in items if "distilabel_compat" not in item.nodeid] + last


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The lines the tests measured (``tests.support.measured``), passing or failing."""
    if MEASUREMENTS:
        terminalreporter.section("stepfsm measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.fixture
def quiet_log() -> Iterator[None]:
    """Planned failures log at WARNING; keep them out of the captured log."""
    logger = logging.getLogger("stepfsm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Make the interpreter switch threads every few microseconds, so interleavings happen."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


@pytest.fixture(autouse=True)
def _clean_stepfsm() -> Iterator[None]:
    """Each test starts with default settings and leaves no step loaded."""
    previous = _settings.snapshot()
    listeners = _settings.LISTENERS
    pools = dict(_budget._POOLS)
    HANDLES.drop()  # count only the handles this test opens
    yield
    previous.restore()
    _settings.restore_listeners(listeners)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lc in registry.live():
            if lc.state in (stepfsm.State.LOADED, stepfsm.State.FAILED):
                step = lc.step
                if isinstance(step, FakeStep):
                    step.fail_unload = None
                    step.gate = None
                with contextlib.suppress(Exception):
                    lc.unload(force=True)
            if lc.state is not stepfsm.State.UNLOADED:  # beyond repair: forget it
                registry.forget_where(lambda step, lc=lc: step is lc.step)
    _budget._POOLS.clear()  # the budgets this test declared go (their steps are unloaded)
    _budget._POOLS.update(pools)


@pytest.fixture
def step() -> FakeStep:
    """A fresh FakeStep named 'gen_0'."""
    return FakeStep("gen_0")


def held_count() -> int:
    return len(HANDLES.held())


def run_threads(n: int, target: Any, timeout: float = 30.0) -> list[BaseException]:
    """Start ``n`` threads together (a Barrier), join them, return their exceptions."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as error:  # collected and asserted by the caller
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    if alive:
        raise AssertionError(
            f"{len(alive)} threads still running after {timeout} s: deadlock? Stacks:\n{stacks()}"
        )
    return errors


@pytest.fixture
def no_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with a PATH that holds no ``dot`` program; returns that (empty) folder."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None
    return empty
