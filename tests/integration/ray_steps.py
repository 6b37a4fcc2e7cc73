"""Steps and functions the Ray tests send to workers (importable there by module name).

Nothing here imports distilabel (``ray_distilabel_steps`` does), so a worker
that unpickles a :class:`TinyLLM` stays light.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import stepfsm


@stepfsm.stateful(guard=("generate",))
class TinyLLM:
    """A stand-in LLM: its "weights" are ``str.upper``; it can be told to fail its load."""

    def __init__(self, name: str = "tiny", fail: str | None = None) -> None:
        self.name = name
        self.fail = fail
        self.model: Any = None

    def load(self) -> None:
        if self.fail:
            raise OSError(self.fail)
        self.model = str.upper

    def unload(self) -> None:
        self.model = None

    def generate(self, prompt: str) -> str:
        return str(self.model(prompt))

    def pid(self) -> int:
        return os.getpid()

    def state(self) -> str:
        return stepfsm.state(self).value

    def cycle(self, times: int) -> float:
        """Seconds per load/unload cycle, ``times`` cycles here (the benchmark)."""
        started = time.perf_counter()
        for _ in range(times):
            self.load()
            self.unload()
        return (time.perf_counter() - started) / times


class Many:
    """An actor holding ``count`` loaded TinyLLMs (the ``cluster_status()`` benchmark)."""

    def __init__(self, prefix: str, count: int) -> None:
        import stepfsm.integrations.ray as sr

        sr.report_here()  # a plain ray.remote actor: say so
        self.steps = [TinyLLM(f"{prefix}_{i}") for i in range(count)]
        for step in self.steps:
            step.load()

    def pid(self) -> int:
        return os.getpid()


class LateStateful:
    """A plain class that a test makes stateful at run time (not where it is defined)."""

    def __init__(self) -> None:
        self.model: Any = None

    def load(self) -> None:
        self.model = "weights"

    def unload(self) -> None:
        self.model = None

    def generate(self) -> str:
        return str(self.model)


def inspect_step(step: Any) -> dict[str, Any]:
    """Where a step arrived: this process, its state and the policies in force for it."""
    info: dict[str, Any] = {"pid": os.getpid(), "stateful": stepfsm.is_stateful(step)}
    if info["stateful"]:
        lc = stepfsm.lifecycle(step)
        info.update(
            state=lc.state.value,
            on_repeat=lc.on_repeat,
            on_unloaded_use=lc.on_unloaded_use,
            timeout=lc.timeout,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step.load()
            step.load()  # under on_repeat="warn": a RepeatedLoadWarning, no second load
            step.unload()
        info["warnings"] = [type(w.message).__name__ for w in caught]
    return info
