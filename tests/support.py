"""Helpers shared by test modules: tools that CI installs must not be skipped there."""

from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile

import pytest


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
