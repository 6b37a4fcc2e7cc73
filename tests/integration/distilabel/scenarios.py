"""Pipeline runs that must happen in a subprocess, with a deadline.

Run one with ``python -m tests.integration.distilabel.scenarios NAME``.

Each scenario prints one line ``RESULT <json>`` describing how ``Pipeline.run``
ended. The tests run them with a deadline: a run that does not finish is
distilabel's hang (a worker whose failed load is never reported).

* ``early-fail-llm``: TextGeneration over an LLM whose load raises before
  ``super().load()`` (and whose unload logs through ``_logger``).
* ``early-fail-step``: a step whose load raises before ``super().load()``
  (distilabel's own ``_Step.unload`` then needs ``_logger``).
* ``broken-cleanup``: TextGeneration over an LLM whose load and clean-up
  unload both raise (with ``--strict`` this once hung: the ``CleanupWarning``,
  turned into an error, escaped the clean-up unload, and the worker never
  reported its failed load).
* ``decorated``: no ``install()``; an LLM class decorated with
  ``@stepfsm.stateful`` is loaded by hand, then handed to a pipeline.

Add ``--install`` to run with ``stepfsm.integrations.distilabel.install()``,
and ``--strict`` to turn stepfsm's warnings into errors, as pytest's
``filterwarnings = error`` does in the forked workers of an in-process test.
"""

import argparse
import json
import os
import time
import warnings
from typing import Any

import stepfsm
from stepfsm.integrations import distilabel as integration
from tests.integration.distilabel import offline


@stepfsm.stateful(guard=("generate",))
class DecoratedLLM(offline.EchoLLM):
    """An offline LLM made stateful by the decorator alone (module level: workers unpickle it)."""


def _run(pipeline: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        distiset = pipeline.run(use_cache=False)
    except Exception as error:
        cause = error.__cause__
        return {
            "outcome": "raised",
            "error": f"{type(error).__name__}: {error}",
            "cause": f"{type(cause).__name__}: {cause}" if cause is not None else None,
            "seconds": time.monotonic() - started,
        }
    return {
        "outcome": "returned",
        "generations": offline.generations(distiset),
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    """Run one scenario and print its RESULT line."""
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario", choices=("early-fail-llm", "early-fail-step", "broken-cleanup", "decorated")
    )
    parser.add_argument("--install", action="store_true")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    if args.strict:
        warnings.simplefilter("error", stepfsm.StepFSMWarning)
    if args.install:
        integration.install()
    result: dict[str, Any] = {"installed": integration.installed(), "pid": os.getpid()}
    if args.scenario == "early-fail-llm":
        result.update(_run(offline.build_pipeline(offline.EarlyFailLLM())))
    elif args.scenario == "broken-cleanup":
        result.update(_run(offline.build_pipeline(offline.BrokenCleanupLLM())))
    elif args.scenario == "early-fail-step":
        result.update(_run(offline.build_pipeline(step=offline.EarlyFailStep)))
    else:
        llm = DecoratedLLM()
        llm.load()
        weights = llm._weights
        result.update(_run(offline.build_pipeline(llm)))
        result.update(
            state=stepfsm.state(llm).value,
            same_weights=llm._weights is weights,
            held=len(offline.held()),
            loads=offline.COUNTS["EchoLLM.load"],
        )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
