"""distilabel steps for the Ray tests: each reports where, and how, it ran.

No ``from __future__ import annotations``: distilabel reads annotations at run time.
"""

import json
import os
import sys
import time
import warnings
from typing import Any

from distilabel.steps import LoadDataFromDicts

import stepfsm
from tests.integration.distilabel.offline import EchoLLM


class LateFailLLM(EchoLLM):
    """An LLM whose load fails after ``super().load()``; its unload works (its weights close)."""

    def load(self) -> None:
        super().load()
        raise OSError("weights are corrupt (pretend)")


def lifecycle_report(step: Any) -> dict[str, Any]:
    """``step``'s process, and its lifecycle there.

    A second ``load()`` of the loaded step shows the ``on_repeat`` policy in force:
    under ``"warn"`` it emits a ``RepeatedLoadWarning`` and returns (no reload),
    under ``"raise"`` it raises ``AlreadyLoadedError``.
    """
    integration = sys.modules.get("stepfsm.integrations.distilabel")
    lc = stepfsm.lifecycle(step)
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "installed": integration is not None and integration.installed(),
        "stateful": stepfsm.is_stateful(type(step)),
        "state": lc.state.value,
        "on_repeat": lc.on_repeat,
        "on_unloaded_use": lc.on_unloaded_use,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            step.load()
        except Exception as error:
            report["repeat_load_error"] = type(error).__name__
    report["repeat_load_warnings"] = [type(w.message).__name__ for w in caught]
    report["state_after_repeat"] = stepfsm.state(step).value
    return report


def cluster_rows(wait: float = 15.0) -> list[dict[str, Any]]:
    """``cluster_status()`` seen from this actor, as JSON-ready rows.

    Waits (up to ``wait`` seconds) until another process's loaded step is on the
    board: its actor reports its settled load before the driver starts the run,
    so this returns at once unless something is wrong.
    """
    import stepfsm.integrations.ray as sr

    deadline = time.monotonic() + wait
    while True:
        rows = list(sr.cluster_status())
        others = [r for r in rows if r.pid != os.getpid() and r.state is stepfsm.State.LOADED]
        if others or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [
        {
            "name": row.name,
            "cls": row.cls,
            "state": row.state.value,
            "since": row.since.timestamp() if row.since is not None else None,
            "load_seconds": row.load_seconds,
            "nbytes": row.nbytes,
            "node": row.node,
            "pid": row.pid,
            "actor": row.actor,
        }
        for row in rows
    ]


class WhereData(LoadDataFromDicts):
    """distilabel's ``LoadDataFromDicts`` whose rows carry a ``where`` column, made in its actor.

    The report (:func:`lifecycle_report`, plus ``cluster_status()`` as this
    actor sees it while the pipeline's other actors are loaded) is made once,
    for the first batch: distilabel loads every step of the pipeline before it
    asks a generator for its first batch.
    """

    @property
    def outputs(self) -> list[str]:
        return [*super().outputs, "where"]

    def process(self, offset: int = 0) -> Any:
        """The batches of ``LoadDataFromDicts``, each row with the report.

        Args:
            offset: the offset to start the generation from.
        """
        report = lifecycle_report(self)
        report["LoadDataFromDicts"] = stepfsm.is_stateful(LoadDataFromDicts)
        report["cluster"] = cluster_rows()
        text = json.dumps(report)
        for batch, last in super().process(offset):
            yield [{**row, "where": text} for row in batch], last


class WhereLLM(EchoLLM):
    """An offline LLM whose generations report its process and its lifecycle there."""

    def generate(self, inputs: list[Any], num_generations: int = 1) -> list[dict[str, Any]]:
        """One JSON report per conversation.

        Args:
            inputs: the conversations.
            num_generations: how many generations per conversation.
        """
        from distilabel.steps.tasks import TextGeneration

        report = lifecycle_report(self)
        report["TextGeneration"] = stepfsm.is_stateful(TextGeneration)
        text = json.dumps(report)
        return [
            {
                "generations": [text] * num_generations,
                "statistics": {
                    "input_tokens": [0] * num_generations,
                    "output_tokens": [0] * num_generations,
                },
            }
            for _ in inputs
        ]
