"""Helpers shared by test modules: tools that CI installs must not be skipped there."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from stepfsm import Lifecycle


#: What the tests measured (timings, benchmark figures), one line each: pytest's own
#: output shows them under "stepfsm measurements" at the end of every run, a passing
#: one included (``pytest_terminal_summary`` in ``tests/conftest.py``), where a
#: ``print()`` would be captured.
MEASUREMENTS: list[str] = []


def measured(line: str) -> None:
    """Report ``line`` at the end of the run (and print it: a failing test's output shows it)."""
    MEASUREMENTS.append(line)
    print(line)


def require(available: bool, what: str) -> None:
    """Skip when ``what`` is missing locally; fail instead when ``CI=true``."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"required when CI=true, but not installed: {what}")
    pytest.skip(f"not installed: {what}")


def require_dot() -> None:
    """SVG and PNG need the Graphviz ``dot`` program and the ``graphviz`` package."""
    require(shutil.which("dot") is not None, "the Graphviz 'dot' program")
    try:
        import graphviz  # noqa: F401
    except ImportError:
        require(False, "the Python package 'graphviz'")


def stacks() -> str:
    """Every thread's stack, from faulthandler (C level: safe while other threads run).

    Never ``sys._current_frames()`` plus frame locals: on CPython 3.11 that can
    wedge the interpreter when a thread exits meanwhile.
    """
    with tempfile.TemporaryFile("w+") as out:
        faulthandler.dump_traceback(out, all_threads=True)
        out.seek(0)
        return out.read()


@contextlib.contextmanager
def holding(lc: Lifecycle) -> Iterator[None]:
    """Hold ``lc``'s claim from another thread for the ``with`` block.

    As an operation that never ends would: other operations wait, a fork
    sees it held. The one place where tests take a lifecycle's claim by hand
    (``Lifecycle._claim``/``_end``), so that no test reaches for a lock.
    """
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        claim = lc._claim("a test's hold")
        taken.set()
        done.wait(30)
        lc._end(claim)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10), "the hold was never taken"
    try:
        yield
    finally:
        done.set()
        thread.join(10)


T = TypeVar("T")


def under_claim(lc: Lifecycle, check: Callable[[], T]) -> T:
    """Run ``check()`` holding ``lc``'s claim on this thread: no operation on ``lc`` runs meanwhile.

    Waits for a running operation first, so ``check`` sees a settled state.
    """
    claim = lc._claim("a test's check")
    try:
        return check()
    finally:
        lc._end(claim)


def in_thread(fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``fn`` in another thread and return its result (re-raising what it raised).

    Fails unless it finishes within ``timeout`` seconds.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as error:  # re-raised below, in the caller's thread
            box["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the other thread did not finish within {timeout} s"
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result
