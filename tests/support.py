"""Helpers shared by test modules: tools that CI installs must not be skipped there."""

from __future__ import annotations

import os
import shutil

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
