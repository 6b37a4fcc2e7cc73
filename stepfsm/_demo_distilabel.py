"""``stepfsm demo``, continued with distilabel (run only when distilabel is installed).

The story of ``examples/notebook.ipynb`` in a terminal: an LLM class of your
own after ``install()``, the notebook double load, and a real
``Pipeline.run()`` (distilabel forks worker processes) after the LLM was
loaded by hand. Everything is offline; the LLM's "weights" are a real
32 MiB buffer. The pipeline's caches go to a temporary directory.

This module imports distilabel when it is imported, so only import it when
distilabel is installed (``stepfsm._demo`` does).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from pydantic import PrivateAttr

import stepfsm

#: distilabel 1.5's own warning about its ``Field()`` use (pydantic >= 2.12), emitted at
#: import and again for an LLM subclass; harmless, not the demo's business (docs/distilabel.md,
#: "Messages you can ignore, and why").
_FIELD_WARNING = r"The 'default' attribute with value None was provided to the `Field\(\)`"

#: Where the demo's pipeline and datasets caches go (removed when the process exits).
_TMP = tempfile.TemporaryDirectory(prefix="stepfsm-demo-")

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_FIELD_WARNING)
    # datasets (imported by distilabel's models) reads its cache directory once, at
    # import: point it at the temporary directory for the import, then restore the env.
    _saved = os.environ.get("HF_DATASETS_CACHE")
    if "datasets" not in sys.modules:
        os.environ["HF_DATASETS_CACHE"] = os.path.join(_TMP.name, "datasets")
    try:
        from distilabel.models.llms.base import LLM
        from distilabel.pipeline import Pipeline
        from distilabel.steps import LoadDataFromDicts
        from distilabel.steps.tasks import TextGeneration

        import stepfsm.integrations.distilabel as integration
    finally:
        if _saved is None:
            os.environ.pop("HF_DATASETS_CACHE", None)
        else:
            os.environ["HF_DATASETS_CACHE"] = _saved

    class OfflineLLM(LLM):  # type: ignore[misc]  # distilabel ships no types
        """An offline LLM written as distilabel documents it; loading allocates 32 MiB.

        Defined at module level: distilabel pickles it into its worker processes.
        """

        prefix: str = "echo: "
        _weights: bytearray | None = PrivateAttr(None)
        #: how many times load() ran in this process
        loads: ClassVar[int] = 0

        def load(self) -> None:
            super().load()
            type(self).loads += 1
            self._weights = bytearray(32 * 1024 * 1024)

        def unload(self) -> None:
            self._weights = None
            super().unload()

        @property
        def model_name(self) -> str:
            return "offline-llm"

        def generate(self, inputs: list[Any], num_generations: int = 1) -> list[dict[str, Any]]:
            """Echo the last message of each conversation.

            Args:
                inputs: the conversations.
                num_generations: how many generations per conversation.
            """
            return [
                {
                    "generations": [self.prefix + chat[-1]["content"]] * num_generations,
                    "statistics": {
                        "input_tokens": [0] * num_generations,
                        "output_tokens": [0] * num_generations,
                    },
                }
                for chat in inputs
            ]


__all__ = ["OfflineLLM", "run"]

CLASS_SOURCE = """\
class OfflineLLM(LLM):                   # a distilabel LLM, written exactly as before
    def load(self):
        super().load()
        self._weights = bytearray(32 * 1024 * 1024)
    def unload(self):
        self._weights = None
    def generate(self, inputs, num_generations=1): ...
"""


@contextlib.contextmanager
def _quiet_pipeline() -> Iterator[io.StringIO]:
    """Keep ``Pipeline.run()``'s own output off the terminal; restore the root logger after.

    distilabel logs at INFO through rich, prints ``Untracked error: No module
    named 'bs4'`` on stdout (its citation lookup), datasets a progress bar on
    stderr, and distilabel leaves its (then closed) log queue on the root
    logger after the run (docs/distilabel.md, "Messages you can ignore, and why").
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    previous = os.environ.get("DISTILABEL_LOG_LEVEL")
    os.environ["DISTILABEL_LOG_LEVEL"] = "ERROR"
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield captured
    finally:
        if previous is None:
            os.environ.pop("DISTILABEL_LOG_LEVEL", None)
        else:
            os.environ["DISTILABEL_LOG_LEVEL"] = previous
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _warned(
    code: Callable[[str], None],
    show: Callable[[object], None],
    line: str,
    action: Callable[[], Any],
    width: int,
) -> Any:
    """Run ``action`` like ``attempt``, showing the stepfsm warnings it emits."""
    code(line)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", stepfsm.StepFSMWarning)
        result = action()
    for warning in caught:
        text = f"{warning.category.__name__}: {warning.message}"
        show("\n".join(textwrap.wrap(text, width - 4, subsequent_indent="    ")))
    return result


def run(
    section: Callable[[str], None],
    attempt: Callable[[str, Callable[[], Any]], Any],
    code: Callable[[str], None],
    show: Callable[[object], None],
    first: int = 9,
    width: int = 88,
) -> None:
    """Tell the distilabel part of the story, numbering sections from ``first``.

    Args:
        section: prints a section title.
        attempt: prints a line of code, runs it, prints its result or stepfsm error.
        code: prints a line of code.
        show: prints a value, indented.
        first: the number of the first section.
        width: the widest line of prose.
    """
    was_installed = integration.installed()
    section(f"{first}. distilabel: install(), then write your LLM class as before")
    code("import stepfsm.integrations.distilabel as sd; sd.install()")
    integration.install()
    first_line, *rest = CLASS_SOURCE.splitlines()
    code(first_line)
    for line in rest:
        show(f"... {line}")
    chat = [[{"role": "user", "content": "hi"}]]
    attempt(
        "OfflineLLM().generate([[{'role': 'user', 'content': 'hi'}]])",
        lambda: OfflineLLM().generate(chat),
    )

    section(f"{first + 1}. distilabel: the notebook double load")
    llm = OfflineLLM()
    attempt("llm = OfflineLLM(); llm.load()", llm.load)
    attempt("llm.load()   # the same cell, run again", llm.load)
    attempt("stepfsm.ensure_loaded(llm)", lambda: stepfsm.ensure_loaded(llm))
    again = OfflineLLM()
    line = "again = OfflineLLM(); again.load()   # same configuration"
    _warned(code, show, line, again.load, width)
    attempt("again.unload()", again.unload)
    show(f"(load() ran {OfflineLLM.loads} times: llm once, again once; llm is still loaded)")

    section(f"{first + 2}. distilabel: a real Pipeline.run() after the hand load")
    code('with Pipeline(name="stepfsm-demo") as pipeline:')
    show('...     rows = [{"instruction": "hi"}, {"instruction": "hello"}]')
    show("...     LoadDataFromDicts(data=rows) >> TextGeneration(llm=llm)")
    with Pipeline(name="stepfsm-demo", cache_dir=os.path.join(_TMP.name, "pipelines")) as pipeline:
        rows = [{"instruction": "hi"}, {"instruction": "hello"}]
        LoadDataFromDicts(data=rows) >> TextGeneration(llm=llm)
    weights, loads = llm._weights, OfflineLLM.loads
    code("pipeline.run(use_cache=False)['default']['train']['generation']")
    with _quiet_pipeline() as output:
        try:
            distiset = pipeline.run(use_cache=False)
        except Exception:
            print(output.getvalue(), file=sys.__stderr__)  # what distilabel said, then the error
            raise
    show(list(distiset["default"]["train"]["generation"]))
    summary = (
        "(each worker got an unloaded copy without the 32 MiB and loaded its own; in this "
        f"process load() ran {OfflineLLM.loads - loads} more times, and llm kept its weights: "
        f"{llm._weights is weights})"
    )
    show("\n".join(textwrap.wrap(summary, width - 2)))
    attempt("stepfsm.lifecycle(llm)", lambda: stepfsm.lifecycle(llm))
    llm.unload()
    if not was_installed:
        integration.uninstall()
