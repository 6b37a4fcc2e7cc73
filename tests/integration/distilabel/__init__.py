"""Integration tests against real distilabel components (``pip install stepfsm[distilabel]``).

Every test module starts with ``require("distilabel")`` (and the notebook
tests also require nbclient, nbformat and ipykernel): without them the module
is skipped locally, and fails when ``CI=true`` (CI installs them).
"""

from __future__ import annotations

import importlib
import os
import types

import pytest


def require(name: str) -> types.ModuleType:
    """``pytest.importorskip(name)``, except that with ``CI=true`` a missing module fails."""
    if os.environ.get("CI") != "true":
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as error:
        pytest.fail(f"{name} is required when CI=true, but: {error}", pytrace=False)
