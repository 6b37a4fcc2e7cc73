"""A distilabel step pickled under ``install()`` installs the integration where it arrives.

docs/design.md §13: the receiving process (here a ``spawn`` child, a fresh
interpreter whose own code imports only ``stepfsm``) ends up with the
integration installed with the sender's policies before the step is rebuilt,
and the step arrives ``unloaded``; a process that installed the integration
itself keeps its own policies. Ray actors: ``tests/integration/test_ray.py``.
"""

from __future__ import annotations

import multiprocessing
import os
from types import ModuleType

import pytest

from tests.integration.distilabel import require

require("distilabel")

from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps.tasks import TextGeneration  # noqa: E402

import stepfsm  # noqa: E402
from tests.integration.distilabel import offline  # noqa: E402
from tests.unit import travel_child  # noqa: E402

pytestmark = pytest.mark.slow


def task() -> TextGeneration:
    """A task built as distilabel expects (in a pipeline), then detached to pickle alone."""
    with Pipeline(name="stepfsm-travel"):
        step = TextGeneration(llm=offline.EchoLLM(), name="gen_0")
    step.pipeline = None  # a pipeline holds locks: distilabel never pickles it with the step
    return step


def test_a_spawn_child_is_installed_with_the_senders_policies(installed: ModuleType) -> None:
    """The migration mode set in the parent is in force in a child that never installed."""
    installed.install(on_unloaded_use="warn")  # implies on_repeat="warn"
    step = task()
    step.llm.load()  # loaded here; arrives unloaded there
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        arrived_task, arrived_llm = pool.map(travel_child.report, [step, offline.EchoLLM()])
    for arrived in (arrived_task, arrived_llm):
        assert arrived["pid"] != os.getpid()
        assert arrived["distilabel_installed"], arrived
        assert arrived["stateful"]
        assert arrived["state"] == "unloaded"
        assert (arrived["on_repeat"], arrived["on_unloaded_use"]) == ("warn", "warn")
        assert arrived["second_load"] == "no error"
        assert "RepeatedLoadWarning" in arrived["warnings"]
    assert stepfsm.state(step.llm) is stepfsm.State.LOADED


def test_a_child_that_installed_itself_keeps_its_own_policies(installed: ModuleType) -> None:
    """The receiving process's own install() wins over the sender's policies."""
    installed.install(on_repeat="warn")
    with multiprocessing.get_context("spawn").Pool(
        1, initializer=travel_child.install_distilabel
    ) as pool:
        arrived = pool.apply(travel_child.report, (offline.EchoLLM(),))
    assert arrived["distilabel_installed"]
    assert (arrived["state"], arrived["on_repeat"]) == ("unloaded", "raise")
    assert arrived["second_load"] == "AlreadyLoadedError"
