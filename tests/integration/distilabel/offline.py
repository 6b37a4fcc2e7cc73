"""Offline distilabel models and steps whose resources are visible to the tests.

Everything used in a pipeline is defined at module level: distilabel pickles
each step (with its LLM) into its worker processes, and a class defined
inside a function cannot be pickled.

A loaded :class:`EchoLLM` holds fake weights (a 1 MiB ``tests.fakes.Resource``)
counted in :data:`WEIGHTS` while open, so a test can ask "how many resources does
this process hold?" without trusting stepfsm's own bookkeeping. Forked
workers inherit :data:`WEIGHTS`; :func:`held` only counts the current process's.

No ``from __future__ import annotations`` here: distilabel reads the
``StepInput`` annotation of ``process`` at run time.
"""

import collections
import os
import threading
from typing import Any

from distilabel.models.embeddings.base import Embeddings
from distilabel.models.image_generation.base import ImageGenerationModel
from distilabel.models.llms.base import LLM, AsyncLLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, Step, StepInput
from distilabel.steps.tasks import TextGeneration
from pydantic import PrivateAttr

from tests.fakes import Resource, Resources

#: Set this environment variable to a file path to log every generate() call
#: (one line each, from whichever process made it).
CALL_LOG = "STEPFSM_OFFLINE_CALL_LOG"
#: Counters of this process: how many times EchoLLM's own load body ran.
COUNTS: collections.Counter[str] = collections.Counter()


#: Every open fake weights object (and, after a fork, the parent's: see :func:`held`).
WEIGHTS = Resources()
#: What a loaded model's weights take.
WEIGHTS_SIZE = 1024 * 1024


def held() -> list[Resource]:
    """The weights open in this process (not those inherited from a parent)."""
    return WEIGHTS.held()


def _take_weights(model: Any, owner: str) -> None:
    model._weights = WEIGHTS.open(owner, WEIGHTS_SIZE)


def _drop_weights(model: Any) -> None:
    if model._weights is not None:
        model._weights.close()
    model._weights = None


def _log_call(what: str) -> None:
    path = os.environ.get(CALL_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()} {what}\n")


def _outputs(prefix: str, inputs: list[Any], num_generations: int) -> list[dict[str, Any]]:
    return [
        {
            "generations": [prefix + conversation[-1]["content"]] * num_generations,
            "statistics": {
                "input_tokens": [0] * num_generations,
                "output_tokens": [0] * num_generations,
            },
        }
        for conversation in inputs
    ]


class EchoLLM(LLM):
    """An offline LLM that echoes the last message; loading opens its Weights."""

    prefix: str = "echo: "
    _weights: Resource | None = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        _take_weights(self, f"EchoLLM({self.prefix!r})")
        COUNTS["EchoLLM.load"] += 1

    def unload(self) -> None:
        _drop_weights(self)
        super().unload()

    @property
    def model_name(self) -> str:
        return "echo-llm"

    def generate(self, inputs: list[Any], num_generations: int = 1) -> list[dict[str, Any]]:
        """Echo the last message of each conversation.

        Args:
            inputs: the conversations.
            num_generations: how many generations per conversation.
        """
        assert self._weights is not None, "generate() ran without weights"
        _log_call("generate")
        return _outputs(self.prefix, inputs, num_generations)


class HandleLLM(EchoLLM):
    """An LLM whose load stores an unpicklable handle (an open file and a lock)."""

    _handle: Any = PrivateAttr(None)
    _lock: Any = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        self._handle = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - closed in unload()
        self._lock = threading.Lock()

    def unload(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = self._lock = None
        super().unload()


class EarlyFailLLM(EchoLLM):
    """An LLM whose load raises before ``super().load()``; its unload logs via ``_logger``.

    Without stepfsm this is distilabel's hang: the worker's clean-up unload
    raises (``_logger`` is None) and the load failure is never reported.
    """

    def load(self) -> None:
        raise OSError("CUDA out of memory (pretend)")

    def unload(self) -> None:
        self._logger.debug("unloading")  # AttributeError when load never reached super()
        super().unload()


class BrokenCleanupLLM(EchoLLM):
    """An LLM whose load fails after opening its weights, and whose clean-up fails too.

    stepfsm keeps the first error, stores the clean-up's as ``cleanup_error``
    and emits a ``CleanupWarning`` (``docs/design.md`` §2).
    """

    def load(self) -> None:
        super().load()
        raise OSError("driver crashed mid-load (pretend)")

    def unload(self) -> None:
        raise RuntimeError("driver gone (pretend)")


class EarlyFailStep(Step):
    """A step whose load raises before ``super().load()``; distilabel's unload needs _logger."""

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["out"]

    def load(self) -> None:
        raise OSError("model file not found (pretend)")

    def process(self, inputs: StepInput) -> Any:
        """Copy the instruction.

        Args:
            inputs: a batch of rows.
        """
        yield [{**row, "out": row["instruction"]} for row in inputs]


class EchoAsyncLLM(AsyncLLM):
    """An offline async LLM (distilabel's ``AsyncLLM``): ``agenerate`` is guarded."""

    prefix: str = "async: "
    _weights: Resource | None = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        _take_weights(self, "EchoAsyncLLM")

    def unload(self) -> None:
        _drop_weights(self)
        super().unload()

    @property
    def model_name(self) -> str:
        return "echo-async-llm"

    async def agenerate(self, input: Any, num_generations: int = 1) -> dict[str, Any]:
        """Echo the last message.

        Args:
            input: a conversation.
            num_generations: how many generations.
        """
        return _outputs(self.prefix, [input], num_generations)[0]


class CountEmbeddings(Embeddings):
    """Offline embeddings: a text's vector is its length and its number of words."""

    _weights: Resource | None = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        _take_weights(self, "CountEmbeddings")

    def unload(self) -> None:
        _drop_weights(self)

    @property
    def model_name(self) -> str:
        return "count-embeddings"

    def encode(self, inputs: list[str]) -> list[list[float]]:
        """Embed each text.

        Args:
            inputs: the texts.
        """
        assert self._weights is not None, "encode() ran without weights"
        return [[float(len(text)), float(len(text.split()))] for text in inputs]


class BlankImages(ImageGenerationModel):
    """An offline image model: every image is an empty string (guarded like an LLM)."""

    _weights: Resource | None = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        _take_weights(self, "BlankImages")

    def unload(self) -> None:
        _drop_weights(self)

    @property
    def model_name(self) -> str:
        return "blank-images"

    def generate(self, inputs: list[str], num_generations: int = 1) -> list[list[dict[str, Any]]]:
        """One blank image per prompt and generation.

        Args:
            inputs: the prompts.
            num_generations: how many images per prompt.
        """
        return [[{"images": [""] * num_generations}] for _ in inputs]


INSTRUCTIONS = [f"q{i}" for i in range(5)]


def build_pipeline(
    llm: LLM | None = None,
    *,
    step: type[Step] | None = None,
    name: str = "stepfsm-echo",
    cache_dir: str | None = None,
) -> Pipeline:
    """``LoadDataFromDicts >> TextGeneration(llm=llm)``, or ``>> step()`` instead."""
    with Pipeline(name=name, cache_dir=cache_dir) as pipeline:
        data = LoadDataFromDicts(data=[{"instruction": i} for i in INSTRUCTIONS])
        data >> (step() if step is not None else TextGeneration(llm=llm))
    return pipeline


def generations(distiset: Any) -> list[str]:
    """The ``generation`` column of a pipeline's result."""
    return list(distiset["default"]["train"]["generation"])
