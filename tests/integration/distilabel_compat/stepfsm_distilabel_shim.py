"""pytest plugin: run a third-party test suite with stepfsm's distilabel integration installed.

Load it with ``-p stepfsm_distilabel_shim`` (this directory on ``PYTHONPATH``).
``--stepfsm-install=MODE`` (or the environment variable ``STEPFSM_DISTILABEL_INSTALL``)
chooses what happens before any test module or conftest is imported:

- ``off`` (the default): nothing; the plugin only reports that it is inactive.
- ``raise`` / ``warn`` / ``ignore``: ``install(on_unloaded_use=MODE)``.

``--stepfsm-on-repeat=POLICY`` (or ``STEPFSM_DISTILABEL_ON_REPEAT``) also passes
``on_repeat=POLICY``; unset, the integration's own default applies.

With ``--stepfsm-report=PATH`` it writes, at the end of the session, a JSON
report to ``PATH``: the mode, whether the integration was really installed,
its policies, and every stepfsm warning seen, counted per test id.
It is not a conftest on purpose: pytest would load a conftest here into
stepfsm's own suite too.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

MODES = ("off", "raise", "warn", "ignore")
_ENV_MODE = "STEPFSM_DISTILABEL_INSTALL"
_ENV_ON_REPEAT = "STEPFSM_DISTILABEL_ON_REPEAT"

_state: dict[str, Any] = {"mode": "off", "on_repeat": None}
_warned: defaultdict[str, Counter[str]] = defaultdict(Counter)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the --stepfsm-* options."""
    group = parser.getgroup("stepfsm", "stepfsm distilabel integration")
    group.addoption(
        "--stepfsm-install",
        choices=MODES,
        default=os.environ.get(_ENV_MODE, "off") or "off",
        help=f"install(on_unloaded_use=MODE) before the tests (env {_ENV_MODE}).",
    )
    group.addoption(
        "--stepfsm-on-repeat",
        choices=("raise", "warn", "ignore"),
        default=os.environ.get(_ENV_ON_REPEAT) or None,
        help=f"also pass install(on_repeat=POLICY) (env {_ENV_ON_REPEAT}).",
    )
    group.addoption(
        "--stepfsm-report",
        default=None,
        help="write the mode, the policies and stepfsm's warnings per test to this JSON file.",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Install the integration before the suite's conftests define their distilabel classes."""
    namespace = early_config.known_args_namespace
    mode = getattr(namespace, "stepfsm_install", None) or os.environ.get(_ENV_MODE) or "off"
    on_repeat = getattr(namespace, "stepfsm_on_repeat", None) or os.environ.get(_ENV_ON_REPEAT)
    if mode not in MODES:
        raise pytest.UsageError(f"--stepfsm-install must be one of {MODES}, not {mode!r}")
    _state.update(mode=mode, on_repeat=on_repeat or None)
    if mode == "off":
        return
    import stepfsm.integrations.distilabel as sd

    sd.install(on_unloaded_use=mode, on_repeat=on_repeat or None)


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the header whether the integration is installed, and with which policies."""
    report = _report()
    if not report["installed"]:
        return "stepfsm: distilabel integration NOT installed"
    return (
        "stepfsm: distilabel integration installed "
        f"(on_unloaded_use={report['on_unloaded_use']}, on_repeat={report['on_repeat']})"
    )


def pytest_warning_recorded(
    warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any
) -> None:
    """Count stepfsm's own warnings per test."""
    category = warning_message.category
    if category.__module__.split(".")[0] == "stepfsm":
        _warned[nodeid or f"<{when}>"][category.__name__] += 1


def _report() -> dict[str, Any]:
    report: dict[str, Any] = {
        "mode": _state["mode"],
        "installed": False,
        "stepfsm_imported": "stepfsm" in sys.modules,
    }
    if _state["mode"] != "off":
        import stepfsm.integrations.distilabel as sd

        report.update(
            installed=sd.installed(),
            on_unloaded_use=sd.LAYER.on_unloaded_use,
            on_repeat=sd.LAYER.on_repeat,
        )
    report["warnings"] = {k: dict(v) for k, v in sorted(_warned.items())}
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the JSON report when asked to."""
    path = session.config.getoption("stepfsm_report")
    if path:
        Path(path).write_text(json.dumps(_report(), indent=1) + "\n")
