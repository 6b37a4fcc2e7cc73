"""Fixtures for the distilabel integration tests.

Caches: ``datasets`` reads ``HF_DATASETS_CACHE``/``HF_HOME`` once, when it is
imported (distilabel imports it), so they are pointed at a temporary
directory here, before any test module of this directory imports
distilabel; in case something imported datasets earlier, the
``pipeline_cache`` fixture also patches ``datasets.config`` per test, and
sets ``DISTILABEL_CACHE_DIR`` (read when a ``Pipeline`` is built).
Subprocesses get a temporary ``HOME`` as well. Nothing is written outside
temporary directories.

Process state: ``install()`` is process-global, and distilabel's
``Pipeline.run`` replaces the root logger's handlers. The autouse
``restore_process`` fixture puts both back after every test, unloads the
distilabel objects a test left loaded, and forgets the offline models'
counters, so each test starts as the previous one found the process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]

_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="stepfsm-distilabel-"))
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
if "datasets" not in sys.modules:  # read at import: too late once datasets is imported
    os.environ["HF_HOME"] = str(_SESSION_CACHE / "hf")
    os.environ["HF_DATASETS_CACHE"] = str(_SESSION_CACHE / "hf" / "datasets")
os.environ.setdefault("DISTILABEL_CACHE_DIR", str(_SESSION_CACHE / "distilabel"))


def _integration() -> ModuleType:
    import stepfsm.integrations.distilabel as integration

    return integration


@pytest.fixture(autouse=True)
def restore_process() -> Iterator[None]:
    """Leave the install state, the root logger and the offline models as they were."""
    integration = _integration()
    was_installed = integration.installed()
    policies = (integration.LAYER.on_repeat, integration.LAYER.on_unloaded_use)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    from stepfsm import registry

    from . import offline

    for handler in root.handlers:  # first: distilabel's leftover log queue is closed
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clean-up warnings of objects a test left failed
        for lc in registry.live():
            if isinstance(lc.step, tuple(integration.BASES)):
                with contextlib.suppress(Exception):  # the test is over; its own business
                    lc.unload(force=True)
    if was_installed:
        integration.install()
        integration.LAYER.on_repeat, integration.LAYER.on_unloaded_use = policies
    else:
        integration.uninstall()
    offline.WEIGHTS.drop()
    offline.COUNTS.clear()


@pytest.fixture
def installed() -> ModuleType:
    """``stepfsm.integrations.distilabel``, installed for this test (undone after it)."""
    integration = _integration()
    integration.install()
    return integration


@pytest.fixture
def not_installed() -> ModuleType:
    """``stepfsm.integrations.distilabel``, uninstalled for this test (restored after it)."""
    integration = _integration()
    integration.uninstall()
    return integration


@pytest.fixture
def pipeline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fresh caches for this test's pipelines: ``DISTILABEL_CACHE_DIR`` and datasets' cache.

    Also set in the environment, for kernels and subprocesses started by the test.
    """
    cache = tmp_path / "distilabel-cache"
    monkeypatch.setenv("DISTILABEL_CACHE_DIR", str(cache))
    datasets_cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
    import datasets.config  # already imported by distilabel, which read the variable then

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
    return cache


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess: this repo importable, every cache and HOME in tmp."""
    env = dict(os.environ)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
        HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
        DISTILABEL_CACHE_DIR=str(tmp_path / "distilabel-cache"),
        PYTHONWARNINGS="ignore",  # distilabel's and pydantic's own deprecation noise
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture
def run_python(tmp_path: Path) -> Iterator[Callable[..., dict[str, tuple[int, str]]]]:
    """Run several ``python ...`` commands at once, each in its own session, with a deadline.

    ``run({"name": [args...]}, timeout=120)`` returns ``{"name": (returncode,
    output)}``; a command still running at the deadline is killed together
    with its distilabel workers (its process group), and the test fails.
    """
    started: list[subprocess.Popen[str]] = []

    def run(
        commands: dict[str, list[str]], timeout: float, env: dict[str, str] | None = None
    ) -> dict[str, tuple[int, str]]:
        for args in commands.values():
            started.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    cwd=REPO,
                    env={**isolated_env(tmp_path), **(env or {})},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        results: dict[str, tuple[int, str]] = {}
        for name, process in zip(commands, started[-len(commands) :], strict=True):
            try:
                output, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                pytest.fail(
                    f"{name!r} did not finish within {timeout} s (hung). Its output ends:\n"
                    f"{output[-3000:]}"
                )
            results[name] = (process.returncode, output)
        return results

    yield run
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
