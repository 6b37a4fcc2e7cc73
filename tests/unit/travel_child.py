"""What a ``spawn`` child reports about the steps it unpickled (``test_travel.py``).

This module imports ``stepfsm`` and nothing of its integrations: whatever
integration a step needs must arrive with the step.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import stepfsm


class _Upper:
    """The step both stateful classes below share: its model upper-cases prompts."""

    def __init__(self, name: str | None = None) -> None:
        self.name = type(self).__name__.lower() if name is None else name
        self.model: Any = None

    def load(self) -> None:
        self.model = str.upper

    def unload(self) -> None:
        self.model = None

    def generate(self, prompt: str) -> str:
        return str(self.model(prompt))


@stepfsm.stateful(guard=("generate",))
class Tiny(_Upper):
    """A decorated step (stateful wherever this module is imported)."""


class Mixed(_Upper, stepfsm.Stateful, guard=("generate",), timeout=30.0, on_unloaded_use="raise"):
    """A step made stateful by the mixin, with class settings (stateful wherever imported)."""


class Late:
    """A plain class: the parent makes it stateful at run time; a child imports it plain."""

    def __init__(self) -> None:
        self.model: Any = None

    def load(self) -> None:
        self.model = "weights"

    def unload(self) -> None:
        self.model = None

    def generate(self, prompt: str = "") -> str:
        return str(self.model) + prompt


def report(step: Any) -> dict[str, Any]:
    """The child's view of ``step``: its process, state, policies, and a double load."""
    distilabel = sys.modules.get("stepfsm.integrations.distilabel")
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "stateful": stepfsm.is_stateful(step),
        "integrations": sorted(m for m in sys.modules if m.startswith("stepfsm.integrations.")),
        "distilabel_installed": distilabel is not None and distilabel.installed(),
    }
    if not info["stateful"]:
        return info
    lc = stepfsm.lifecycle(step)
    info.update(
        state=lc.state.value,
        on_repeat=lc.on_repeat,
        on_unloaded_use=lc.on_unloaded_use,
        timeout=lc.timeout,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            step.load()
            step.load()
        except stepfsm.AlreadyLoadedError:
            info["second_load"] = "AlreadyLoadedError"
        else:
            info["second_load"] = "no error"
        finally:
            stepfsm.lifecycle(step).unload()
    info["warnings"] = sorted({type(w.message).__name__ for w in caught})
    return info


def unloaded_use(step: Any) -> str:
    """What ``step.generate("hi")`` does before any load here: its guard, if it arrived."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            step.generate("hi")
        except Exception as error:
            return type(error).__name__
    return ", ".join(type(w.message).__name__ for w in caught) or "no error"


def install_distilabel() -> None:
    """A child's own ``install()`` (defaults), before any step arrives: it must win."""
    import stepfsm.integrations.distilabel as sd

    sd.install()
