"""The ``stepfsm`` command: ``diagram`` output, TARGET loading, errors and exit codes.

Exit codes: 0 success, 1 a well-formed command that could not be carried out,
2 a wrong command line. Every error is one line on stderr.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepfsm
from stepfsm.cli import main
from tests.support import require_dot

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count()


@pytest.fixture
def target_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module in the working directory with a stateful class and a loaded instance."""
    name = f"cli_target_{os.getpid()}_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import stepfsm

            @stepfsm.stateful
            class Step:
                def __init__(self, name):
                    self.name = name

                def load(self):
                    pass

                def unload(self):
                    pass

            class Plain:
                pass

            live = Step("gen_0")
            stepfsm.lifecycle(live).load()
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    yield name
    module = sys.modules.pop(name, None)
    if module is not None:
        stepfsm.lifecycle(module.live).unload()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``stepfsm ARGV`` in-process; return (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, pattern: str) -> None:
    """stderr is exactly one line, starting with the command's name, matching ``pattern``."""
    import re

    assert err.endswith("\n"), f"not a whole line: {err!r}"
    assert err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("stepfsm"), f"does not name the command: {err!r}"
    assert re.search(pattern, err), f"{pattern!r} not in {err!r}"


# ---------------------------------------------------------------- output


def test_default_is_mermaid_of_the_lifecycle_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """`stepfsm diagram` prints the lifecycle's mermaid text and exits 0."""
    code, out, err = run(["diagram"], capsys)
    assert (code, err) == (0, ""), err
    assert out == stepfsm.diagram(format="mermaid")


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "svg"])
def test_text_formats_go_to_stdout(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Text formats are printed exactly as diagram() returns them."""
    if fmt == "svg":
        require_dot()
    code, out, err = run(["diagram", "--format", fmt], capsys)
    assert (code, err) == (0, ""), err
    assert out == stepfsm.diagram(format=fmt)


@pytest.mark.parametrize(
    ("filename", "fmt"),
    [("d.mmd", "mermaid"), ("d.mermaid", "mermaid"), ("d.dot", "dot"), ("d.gv", "dot"),
     ("d.svg", "svg"), ("d.png", "png"), ("d.txt", "mermaid")],
)  # fmt: skip
def test_output_format_follows_the_file_suffix(
    filename: str, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --format, --output's suffix picks the format (mermaid for unknown suffixes)."""
    if fmt in ("svg", "png"):
        require_dot()
    path = tmp_path / filename
    code, out, err = run(["diagram", "--output", str(path)], capsys)
    assert (code, out, err) == (0, "", ""), err
    expected = stepfsm.diagram(format=fmt)
    if fmt == "png":
        assert path.read_bytes().startswith(b"\x89PNG"), "not a PNG"
    else:
        assert path.read_text(encoding="utf-8") == expected


def test_output_with_matching_format_writes_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format and a matching --output suffix write that format."""
    path = tmp_path / "d.dot"
    assert run(["diagram", "-f", "dot", "-o", str(path)], capsys)[0] == 0
    assert path.read_text(encoding="utf-8") == stepfsm.diagram(format="dot")


def test_output_dir_writes_the_three_committed_formats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output-dir writes lifecycle.mmd, lifecycle.dot and lifecycle.svg (creating the folder)."""
    require_dot()
    folder = tmp_path / "new" / "diagrams"
    code, _, err = run(["diagram", "--output-dir", str(folder)], capsys)
    assert (code, err) == (0, ""), err
    assert sorted(p.name for p in folder.iterdir()) == [
        "lifecycle.dot",
        "lifecycle.mmd",
        "lifecycle.svg",
    ]
    assert (folder / "lifecycle.mmd").read_text(encoding="utf-8") == stepfsm.diagram()
    assert (folder / "lifecycle.svg").read_text(encoding="utf-8") == stepfsm.diagram(format="svg")


# ---------------------------------------------------------------- TARGET


def test_target_class_is_drawn_under_its_name(
    target_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """TARGET module:Class draws that class's diagram."""
    code, out, err = run(["diagram", f"{target_module}:Step"], capsys)
    assert (code, err) == (0, ""), err
    assert 'title: "Step lifecycle"' in out, out


def test_target_object_highlights_its_state(
    target_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """TARGET module:instance draws the live object with its current state highlighted."""
    code, out, err = run(["diagram", f"{target_module}:live", "--format", "dot"], capsys)
    assert (code, err) == (0, ""), err
    assert '"loaded" [color=red, fillcolor=darksalmon' in out, out
    code, out, _ = run(["diagram", f"{target_module}:live", "--no-highlight"], capsys)
    assert code == 0
    assert "class loaded current" not in out, out


def test_target_module_is_found_when_cwd_is_already_on_sys_path(
    target_module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The working directory stays on sys.path when it was there already."""
    monkeypatch.syspath_prepend(os.getcwd())
    assert run(["diagram", f"{target_module}:Step"], capsys)[0] == 0
    assert sys.path[0] == os.getcwd(), "the working directory was removed from sys.path"


def test_target_import_leaves_sys_path_as_it_was(
    target_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The working directory is on sys.path only while TARGET is imported."""
    before = list(sys.path)
    assert run(["diagram", f"{target_module}:Step"], capsys)[0] == 0
    assert sys.path == before


def test_output_dir_names_files_after_the_target(
    target_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output-dir with TARGET names the files after TARGET's attribute."""
    require_dot()
    code, _, err = run(["diagram", f"{target_module}:Step", "--output-dir", "out"], capsys)
    assert (code, err) == (0, ""), err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "Step.dot",
        "Step.mmd",
        "Step.svg",
    ]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "code", "pattern"),
    [
        ([], 2, r"^stepfsm: error: the following arguments are required: COMMAND"),
        (["paint"], 2, r"invalid choice: 'paint'"),
        (["diagram", "--bogus"], 2, r"unrecognized arguments: --bogus"),
        (["diagram", "--format", "jpeg"], 2, r"^stepfsm diagram: error: .*invalid choice: 'jpeg'"),
        (["diagram", "--format", "png"], 2, r"png is binary; write it to a file with --output"),
        (["diagram", "-f", "dot", "-o", "x.png"], 2, r"--format dot does not match .*'x.png'"),
        (["diagram", "--output-dir", "d", "--format", "dot"], 2, r"drop --format"),
        (["diagram", "-o", "x.mmd", "--output-dir", "d"], 2, r"not allowed with argument"),
        (["diagram", "stepfsm.states"], 2, r"TARGET must look like package\.module:ClassName"),
        (["diagram", ":Step"], 2, r"TARGET must look like package\.module:ClassName"),
        (["diagram", "no_such_module_xyz:Step"], 1,
         r"^stepfsm diagram: error: cannot import module 'no_such_module_xyz'.*"
         r"ModuleNotFoundError"),
        (["diagram", "stepfsm.states:Nope"], 1, r"cannot find 'Nope' in 'stepfsm.states'"),
        (["diagram", "stepfsm.states:State"], 1, r"it is not stateful.*@stepfsm\.stateful"),
    ],
)  # fmt: skip
def test_bad_input_gives_a_one_line_error_and_nonzero_exit(
    argv: list[str], code: int, pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each wrong command line or unusable TARGET gives its exit code and a one-line message."""
    got, out, err = run(argv, capsys)
    assert got == code, f"exit {got}, expected {code}: {err}"
    assert out == "", f"something was printed to stdout: {out!r}"
    assert_one_line_error(err, pattern)


def test_a_target_module_that_raises_on_import_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module whose import raises gives exit 1 with the error's type and text on one line."""
    (tmp_path / "cli_broken_module.py").write_text("raise ValueError('bad\\nconfig')\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["diagram", "cli_broken_module:Step"], capsys)
    sys.modules.pop("cli_broken_module", None)
    assert code == 1
    assert_one_line_error(err, r"cannot import module 'cli_broken_module'.*ValueError: bad config")


def test_target_that_is_a_plain_class_is_not_stateful(
    target_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TARGET class without a lifecycle gives exit 1 and says how to make it stateful."""
    code, _, err = run(["diagram", f"{target_module}:Plain"], capsys)
    assert code == 1
    assert_one_line_error(err, r"\(Plain\): it is not stateful")


def test_unwritable_output_path_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --output path that cannot be written gives exit 1 and names the path."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = blocker / "d.mmd"
    code, out, err = run(["diagram", "--output", str(path)], capsys)
    assert (code, out) == (1, "")
    assert_one_line_error(err, rf"cannot write '{path}': Not a directory")


def test_unwritable_output_dir_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --output-dir that cannot be created gives exit 1 and names the folder."""
    monkeypatch.setattr("stepfsm.cli.DIR_FORMATS", ("mermaid", "dot"))  # no dot needed
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(["diagram", "--output-dir", str(blocker)], capsys)
    assert code == 1
    assert_one_line_error(err, rf"cannot create directory '{blocker}': File exists")
    assert blocker.read_text() == "not a folder"


# ---------------------------------------------------------------- without dot


@pytest.mark.usefixtures("no_dot")
def test_without_dot_svg_fails_clearly_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no dot on PATH, --format svg exits 1, says to install Graphviz, and writes no file."""
    path = tmp_path / "d.svg"
    code, out, err = run(["diagram", "--output", str(path)], capsys)
    assert (code, out) == (1, "")
    assert_one_line_error(err, r"needs the Graphviz 'dot' program.*apt-get install graphviz")
    assert "--format mermaid" in err, err
    assert not path.exists(), "a file was written although rendering failed"


@pytest.mark.usefixtures("no_dot")
def test_without_dot_an_existing_output_file_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed render does not truncate or replace a file already at --output."""
    path = tmp_path / "d.png"
    path.write_bytes(b"old")
    assert run(["diagram", "--output", str(path)], capsys)[0] == 1
    assert path.read_bytes() == b"old"


@pytest.mark.usefixtures("no_dot")
def test_without_dot_output_dir_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--output-dir renders everything before writing, so without dot no file appears."""
    folder = tmp_path / "diagrams"
    code, _, err = run(["diagram", "--output-dir", str(folder)], capsys)
    assert code == 1
    assert_one_line_error(err, r"SVG output needs the Graphviz 'dot' program")
    assert not folder.exists(), f"written without dot: {list(folder.iterdir())}"


@pytest.mark.usefixtures("no_dot")
@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_without_dot_text_formats_still_work(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With no dot on PATH, mermaid and dot text are printed as usual."""
    code, out, err = run(["diagram", "--format", fmt], capsys)
    assert (code, err) == (0, ""), err
    assert out == stepfsm.diagram(format=fmt)


# ---------------------------------------------------------------- help and demo


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """`stepfsm diagram --help` prints the usage and exits 0."""
    code, out, _ = run(["diagram", "--help"], capsys)
    assert code == 0
    assert "usage: stepfsm diagram" in out, out


def test_demo_hands_its_arguments_to_the_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stepfsm demo ...` passes everything after 'demo' (even --help) to the demo's main()."""
    seen: list[list[str] | None] = []

    def fake_main(argv: list[str] | None = None) -> int:
        seen.append(argv)
        return 7

    monkeypatch.setitem(sys.modules, "stepfsm._demo", types.SimpleNamespace(main=fake_main))
    assert main(["demo", "--help", "--fast"]) == 7
    assert seen == [["--help", "--fast"]]


def test_argv_defaults_to_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() without arguments reads sys.argv."""
    monkeypatch.setattr(sys, "argv", ["stepfsm", "diagram", "--format", "dot"])
    assert main() == 0
    assert capsys.readouterr().out == stepfsm.diagram(format="dot")


# ---------------------------------------------------------------- real processes


def _python_m(
    args: list[str], env_path: str | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if env_path is not None:
        env["PATH"] = env_path
    return subprocess.run(
        [sys.executable, "-m", "stepfsm", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_python_m_stepfsm_prints_the_diagram() -> None:
    """`python -m stepfsm diagram --format dot` prints the dot text and exits 0."""
    done = _python_m(["diagram", "--format", "dot"])
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout == stepfsm.diagram(format="dot")


@pytest.mark.slow
def test_python_m_stepfsm_without_dot_fails_cleanly(no_dot: Path, tmp_path: Path) -> None:
    """In a real process with no dot on PATH, SVG exits 1 with one line and no file."""
    path = tmp_path / "out.svg"
    done = _python_m(["diagram", "--output", str(path)], env_path=str(no_dot))
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.stderr, r"apt-get install graphviz")
    assert not path.exists()
    text = _python_m(["diagram"], env_path=str(no_dot))
    assert (text.returncode, text.stdout) == (0, stepfsm.diagram())


@pytest.mark.slow
def test_python_m_stepfsm_bad_format_exits_two() -> None:
    """In a real process, an unknown format exits 2 with a one-line error."""
    done = _python_m(["diagram", "--format", "gif"])
    assert (done.returncode, done.stdout) == (2, "")
    assert_one_line_error(done.stderr, r"invalid choice: 'gif'")


def test_python_m_stepfsm_runs_main_and_exits_with_its_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Running the stepfsm package as __main__ exits with main()'s return code."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["stepfsm", "diagram", "--format", "bogus"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("stepfsm", run_name="__main__")
    assert stop.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
