"""A distilabel LLM for the Ray tests: each generation says where, and how, it ran.

No ``from __future__ import annotations``: distilabel reads annotations at run time.
"""

import json
import os
import sys
from typing import Any

import stepfsm
from tests.integration.distilabel.offline import EchoLLM


class LateFailLLM(EchoLLM):
    """An LLM whose load fails after ``super().load()``; its unload works (its weights close)."""

    def load(self) -> None:
        super().load()
        raise OSError("weights are corrupt (pretend)")


class WhereLLM(EchoLLM):
    """An offline LLM whose generations report its process and its lifecycle there."""

    def generate(self, inputs: list[Any], num_generations: int = 1) -> list[dict[str, Any]]:
        """One JSON report per conversation.

        Args:
            inputs: the conversations.
            num_generations: how many generations per conversation.
        """
        from distilabel.steps.tasks import TextGeneration

        integration = sys.modules.get("stepfsm.integrations.distilabel")
        lc = stepfsm.lifecycle(self)
        report = json.dumps(
            {
                "pid": os.getpid(),
                "installed": integration is not None and integration.installed(),
                "TextGeneration": stepfsm.is_stateful(TextGeneration),
                "llm": stepfsm.is_stateful(type(self)),
                "state": lc.state.value,
                "on_repeat": lc.on_repeat,
                "on_unloaded_use": lc.on_unloaded_use,
            }
        )
        return [
            {
                "generations": [report] * num_generations,
                "statistics": {
                    "input_tokens": [0] * num_generations,
                    "output_tokens": [0] * num_generations,
                },
            }
            for _ in inputs
        ]
