"""The ``stepfsm`` command (also ``python -m stepfsm``).

Subcommands:

``stepfsm diagram [TARGET] [--format FORMAT] [--output PATH | --output-dir DIR]``
    Draw the lifecycle (or the class or object named by ``TARGET``, written
    ``package.module:ClassName``) as mermaid, dot, SVG or PNG. Text formats go
    to stdout unless ``--output`` is given; PNG needs ``--output``.
    ``--output-dir DIR`` writes ``lifecycle.mmd``, ``lifecycle.dot`` and
    ``lifecycle.svg`` at once (how the repository's ``diagrams/`` is made).

``stepfsm demo [ARGS...]``
    Run the demo; its own options are listed by ``stepfsm demo --help``.

Exit codes follow the usual convention for command-line tools: 0 success; 1
the command was well formed but could not be carried out (TARGET cannot be
imported or is not stateful, Graphviz is missing, the file cannot be
written); 2 the command line itself is wrong (unknown option or format, PNG
to a terminal, a format that contradicts the output file's suffix). Every
error is one line on stderr, starting with the command's name.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from stepfsm.diagrams import FORMATS, SUFFIXES, TEXT_FORMATS, DiagramFormat, diagram
from stepfsm.errors import StepFSMError

__all__ = ["main"]

#: The formats ``--output-dir`` writes, as committed under ``diagrams/``.
DIR_FORMATS: tuple[DiagramFormat, ...] = ("mermaid", "dot", "svg")

_SUFFIX_FORMATS: dict[str, DiagramFormat] = {
    **{suffix: fmt for fmt, suffix in SUFFIXES.items()},
    ".mermaid": "mermaid",
    ".gv": "dot",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _CommandError(Exception):
    """A well-formed command that could not be carried out (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are a single line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="stepfsm",
        description="Explicit, thread-safe lifecycles for resource-holding pipeline steps.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    draw = commands.add_parser(
        "diagram",
        help="draw the lifecycle state diagram",
        description=(
            "Draw the lifecycle state diagram, generated from stepfsm's transition table. "
            "Text formats (mermaid, dot, svg) go to stdout unless --output is given; png "
            "needs --output. svg and png need the Graphviz 'dot' program."
        ),
    )
    draw.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help=(
            "a stateful class or object as package.module:Name (default: the lifecycle "
            "itself); a live object's current state is highlighted"
        ),
    )
    draw.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        help="output format (default: from the --output suffix, else mermaid)",
    )
    where = draw.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", type=Path, metavar="PATH", help="write to this file")
    where.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write NAME.mmd, NAME.dot and NAME.svg into DIR (NAME: lifecycle or TARGET's name)",
    )
    draw.add_argument(
        "--highlight",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="highlight a live object's current state and last transition (default: on)",
    )

    draw.set_defaults(subparser=draw)

    commands.add_parser(
        "demo",
        help="run the demo (stepfsm demo --help lists its options)",
        add_help=False,
    )
    return parser


def _load_target(spec: str) -> object:
    """Import ``package.module:Name`` (``Name`` may be dotted) and return the object."""
    module_name, _, attr_path = spec.partition(":")
    # A console script does not put the working directory on sys.path the way
    # ``python -m`` does; look there too, as other tools that import by name do.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        found: object = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything on import
        raise _CommandError(
            f"cannot import module {module_name!r} of TARGET {spec!r}: {type(err).__name__}: {err}"
        ) from err
    finally:
        if added:
            sys.path.remove(cwd)
    for part in attr_path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as err:
            raise _CommandError(
                f"cannot find {part!r} in {module_name!r} (TARGET {spec!r})"
            ) from err
    return found


def _check_args(parser: _Parser, args: argparse.Namespace) -> DiagramFormat:
    """Settle the format and reject contradictory options (exit code 2)."""
    target: str | None = args.target
    if target is not None:
        module_name, colon, attr_path = target.partition(":")
        if not (module_name and colon and attr_path):
            parser.error(f"TARGET must look like package.module:ClassName, not {target!r}")
    fmt: DiagramFormat | None = args.format
    output: Path | None = args.output
    if args.output_dir is not None:
        if fmt is not None:
            parser.error("--output-dir writes mermaid, dot and svg together; drop --format")
        return "mermaid"
    if output is not None:
        implied = _SUFFIX_FORMATS.get(output.suffix.lower())
        if fmt is None:
            fmt = implied or "mermaid"
        elif implied is not None and implied != fmt:
            parser.error(
                f"--format {fmt} does not match the output file {str(output)!r} "
                f"(its suffix means {implied}); change one of them"
            )
    fmt = fmt or "mermaid"
    if fmt not in TEXT_FORMATS and output is None:
        parser.error(f"{fmt} is binary; write it to a file with --output PATH")
    return fmt


def _write(path: Path, data: str | bytes) -> None:
    try:
        if isinstance(data, str):
            # newline="" keeps "\n" line ends on every platform, so files diff cleanly.
            with path.open("w", encoding="utf-8", newline="") as handle:
                handle.write(data)
        else:
            path.write_bytes(data)
    except OSError as err:
        raise _CommandError(f"cannot write {str(path)!r}: {err.strerror or err}") from err


def _diagram_command(args: argparse.Namespace, fmt: DiagramFormat) -> int:
    target = None if args.target is None else _load_target(args.target)
    if args.output_dir is not None:
        name = "lifecycle" if args.target is None else args.target.partition(":")[2]
        # Render everything first, so that a missing dot program writes nothing.
        rendered = {
            args.output_dir / f"{name}{SUFFIXES[f]}": diagram(
                target, format=f, highlight=args.highlight
            )
            for f in DIR_FORMATS
        }
        try:
            args.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _CommandError(
                f"cannot create directory {str(args.output_dir)!r}: {err.strerror or err}"
            ) from err
        for path, data in rendered.items():
            _write(path, data)
        return 0
    data = diagram(target, format=fmt, highlight=args.highlight)
    if args.output is not None:
        _write(args.output, data)
    else:
        assert isinstance(data, str)  # binary formats were refused by _check_args
        sys.stdout.write(data)
        sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stepfsm`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 failure, 2 command-line error.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["demo"]:
        # The demo parses its own options, --help included.
        from stepfsm._demo import main as demo_main

        return demo_main(arguments[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(arguments)
        fmt = _check_args(args.subparser, args)
    except SystemExit as stop:  # --help (0) or a usage error (2): return, do not exit
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return _diagram_command(args, fmt)
    except (_CommandError, StepFSMError) as err:
        sys.stderr.write(f"{parser.prog} {args.command}: error: {_one_line(str(err))}\n")
        return 1
