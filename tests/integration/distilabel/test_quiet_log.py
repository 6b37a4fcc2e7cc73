"""stepfsm's own log lines stay out of distilabel's log (issue 14, item 6).

Every ``Pipeline.run()`` clears the root logger's handlers, puts distilabel's
own there (rich on the terminal, the run's ``pipeline.log``, through a queue
that is closed when the run ends) and sets the root level to INFO, in the
parent and in every worker. ``install()`` therefore sets logger ``stepfsm``
to WARNING when it has no level: its per-transition INFO lines ("loaded ...
in 0.006 s") no longer appear among distilabel's, nor as ``--- Logging
error ---`` after the run; a level the user set wins (``docs/decisions.md``,
"stepfsm's INFO lines under the distilabel integration").
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.distilabel import require

require("distilabel")

from tests.integration.distilabel import offline  # noqa: E402

RunPython = Callable[..., dict[str, tuple[int, str]]]

#: A plain script: install(), a hand-loaded LLM, a real Pipeline.run(), an unload after it.
SCRIPT = """\
import logging, sys
if "--opt-in" in sys.argv:  # the user asks for stepfsm's INFO lines
    logging.getLogger("stepfsm").setLevel(logging.INFO)
import stepfsm.integrations.distilabel as sd
sd.install()
from tests.integration.distilabel import offline
llm = offline.EchoLLM()
llm.load()
pipeline = offline.build_pipeline(llm, cache_dir=sys.argv[1])  # a cache of its own
distiset = pipeline.run(use_cache=False)
print("GENERATIONS", offline.generations(distiset), flush=True)
llm.unload()  # after the run: distilabel's closed log queue is still on the root logger
print("LOGFILE", distiset.log_filename_path, flush=True)
"""


@pytest.fixture
def stepfsm_level() -> Iterator[logging.Logger]:
    """Logger ``stepfsm``, its level put back after the test."""
    log = logging.getLogger("stepfsm")
    level = log.level
    yield log
    log.setLevel(level)


def _run(output: str) -> tuple[str, str]:
    """The script's terminal output (wrapping undone) and its ``pipeline.log``."""
    assert "GENERATIONS " + repr([f"echo: {i}" for i in offline.INSTRUCTIONS]) in output, output
    (path,) = re.findall(r"^LOGFILE (.+)$", output, re.M)
    return " ".join(output.split()), Path(path).read_text(encoding="utf-8")


@pytest.mark.slow
def test_pipeline_run_shows_no_stepfsm_lines_unless_asked(
    run_python: RunPython, tmp_path: Path
) -> None:
    """distilabel's log has no stepfsm INFO line, and no logging error after the run.

    With the user's own ``setLevel(logging.INFO)`` on logger ``stepfsm`` the
    same run shows them: the user's level wins, and this test can see them.
    """
    results = run_python(
        {
            "default": ["-c", SCRIPT, str(tmp_path / "default")],
            "opt-in": ["-c", SCRIPT, str(tmp_path / "opt-in"), "--opt-in"],
        },
        timeout=180,
        env={"COLUMNS": "300"},  # rich wraps at the terminal width
    )
    for name, (returncode, output) in results.items():
        assert returncode == 0, f"{name}: {output[-3000:]}"

    terminal, logfile = _run(results["default"][1])
    assert "['distilabel.pipeline']" in terminal, f"distilabel's log is not there:\n{terminal}"
    assert "Finished running step" in logfile, logfile
    for line in ("['stepfsm']", "loaded EchoLLM", "loaded TextGeneration", "Logging error"):
        assert line not in terminal, f"{line!r} in distilabel's output:\n{terminal}"
    assert "loaded EchoLLM" not in logfile, f"stepfsm's lines in pipeline.log:\n{logfile}"

    terminal, logfile = _run(results["opt-in"][1])
    assert "['stepfsm'] loaded EchoLLM at 0x" in terminal, terminal
    assert "['stepfsm'] unloaded TextGeneration 'text_generation_0'" in terminal, terminal
    assert "loaded EchoLLM at 0x" in logfile, logfile


def test_install_sets_warning_only_on_an_unset_level(
    not_installed: ModuleType, stepfsm_level: logging.Logger
) -> None:
    """install() sets WARNING on an unset level; uninstall() unsets it again."""
    stepfsm_level.setLevel(logging.NOTSET)
    not_installed.install()
    assert stepfsm_level.level == logging.WARNING
    assert stepfsm_level.isEnabledFor(logging.WARNING), "stepfsm's warnings must still be logged"
    not_installed.install()  # again: still WARNING, and uninstall() still undoes it
    not_installed.uninstall()
    assert stepfsm_level.level == logging.NOTSET


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.ERROR])
def test_a_level_the_user_set_wins(
    not_installed: ModuleType, stepfsm_level: logging.Logger, level: int
) -> None:
    """A level set before install() is kept; one set after it survives uninstall()."""
    stepfsm_level.setLevel(level)
    not_installed.install()
    assert stepfsm_level.level == level
    not_installed.uninstall()
    assert stepfsm_level.level == level

    stepfsm_level.setLevel(logging.NOTSET)
    not_installed.install()
    stepfsm_level.setLevel(level)
    not_installed.uninstall()
    assert stepfsm_level.level == level


def test_interpreter_exit_prints_no_error_from_dying_steps(tmp_path: Path) -> None:
    """A step that dies while the interpreter shuts down prints nothing.

    Its weakref callback used to call module globals that finalization had
    already cleared (``TypeError: 'NoneType' object is not callable``, shown as
    "Exception ignored in: <function _forget ...>"); importing ``datasets``
    first keeps the step alive until then.
    """
    script = tmp_path / "exit.py"
    script.write_text(
        "import datasets  # noqa: F401\n"
        "import stepfsm.integrations.distilabel as sd\n"
        "sd.install()\n"
        "from tests.integration.distilabel import offline\n"
        "llm = offline.EchoLLM()\n"
        "llm.load()\n"
        "llm.unload()\n"
        "print('done')\n",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("done")
    assert "Exception ignored" not in done.stderr, done.stderr
