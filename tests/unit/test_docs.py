"""Every ```python block in README.md and docs/*.md runs as pasted.

Each file's blocks run in order in one fresh interpreter (``sys.executable``
in a subprocess, its working directory a temporary one, a time limit per
file), sharing one ``__main__`` namespace, as if pasted one after the other
into a script or a notebook. Each block is compiled under the markdown
file's path with its real line numbers, so a traceback points at the line of
the document (and shows it). The subprocess's output is shown on failure.

A block that is deliberately not runnable alone (a planned API, a piece of a
larger program) is marked with the word ``fragment`` after the language in
its info string::

    ```python fragment
    async def main(step):
        async with stepfsm.aloaded(step):   # needs a running event loop
            ...
    ```

A fragment is not run, but it must still compile: a fragment that is not
valid Python fails the test. Any other word after ``python`` is refused, so
a misspelt marker cannot silently skip a block. Blocks in other languages
(``bash``, ``mermaid``, a bare fence) are not executed.

Blocks that need an optional tool run where it is installed: distilabel
(``import stepfsm.integrations.distilabel``), the Graphviz ``dot`` program
(``format="svg"``/``"png"``) and hypothesis (``stepfsm.testing``). Without
the tool the file is skipped locally and fails when ``CI=true``
(``tests.support.require``), as CI installs them all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.support import require, require_dot

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: seconds one file's blocks may take together (they take 0.2 to 3 s)
TIMEOUT = 60

LANGUAGES = frozenset({"python", "py", "python3"})
MARKERS = frozenset({"fragment"})
_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced python block of a document."""

    path: str  # the document's absolute path
    line: int  # the 1-based line of the block's first line of code
    code: str
    fragment: bool

    def compiled(self) -> object:
        """The block compiled under the document's name, at its own line numbers."""
        return compile("\n" * (self.line - 1) + self.code, self.path, "exec")


def python_blocks(text: str, path: str) -> list[Block]:
    """The fenced python blocks of a markdown ``text``, in order.

    Raises:
        ValueError: a fence is never closed, or a python block's info string
            has a word other than ``fragment``.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _OPEN.match(lines[index])
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        fence, indent, words = opening["fence"], len(opening["indent"]), opening["info"].split()
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{index + 1}: the code fence {fence} is never closed")
        if words and words[0].lower() in LANGUAGES:
            unknown = [w for w in words[1:] if w not in MARKERS]
            if unknown:
                raise ValueError(
                    f"{path}:{index + 1}: unknown word(s) {unknown} after ```{words[0]}; "
                    f"the only marker is 'fragment' (```python fragment)"
                )
            body = [_dedent(line, indent) for line in lines[index + 1 : end]]
            blocks.append(
                Block(path, index + 2, "\n".join(body) + "\n", fragment="fragment" in words[1:])
            )
        index = end + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    """Remove up to ``indent`` leading spaces, as CommonMark does inside an indented fence."""
    stripped = len(line) - len(line.lstrip(" "))
    return line[min(indent, stripped) :]


def blocks_of(doc: Path) -> list[Block]:
    return python_blocks(doc.read_text(encoding="utf-8"), str(doc))


def _name(doc: Path) -> str:
    return doc.relative_to(REPO).as_posix()


#: Runs in the subprocess: each block in a fresh ``__main__`` module (so classes
#: the blocks define pickle by reference), none of the runner's own names in it.
RUNNER = """\
import builtins, json, sys, types
main = types.ModuleType("__main__")
main.__dict__["__builtins__"] = builtins
sys.modules["__main__"] = main
with open(sys.argv[1], encoding="utf-8") as source:
    blocks = json.load(source)
for block in blocks:
    print(f"----- {block['path']}:{block['line']}", flush=True)
    code = compile("\\n" * (block["line"] - 1) + block["code"], block["path"], "exec")
    exec(code, main.__dict__)
    sys.stdout.flush()
"""


def _require_tools(blocks: list[Block]) -> None:
    code = "\n".join(block.code for block in blocks)
    if re.search(r"^\s*(?:from|import)\s+[\w.]*distilabel\b", code, re.M):
        require(importlib.util.find_spec("distilabel") is not None, "distilabel")
    if re.search(r"^\s*(?:from|import)\s+(?:hypothesis|stepfsm\.testing)\b", code, re.M):
        require(importlib.util.find_spec("hypothesis") is not None, "hypothesis")
    if re.search(r"""format\s*=\s*["'](?:svg|png)["']""", code):
        require_dot()


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_python_blocks_compile(doc: Path) -> None:
    """Every python block, fragments included, is valid Python."""
    for block in blocks_of(doc):
        try:
            block.compiled()
        except SyntaxError as error:
            kind = "fragment" if block.fragment else "block"
            pytest.fail(f"the python {kind} at {_name(doc)}:{block.line} does not compile: {error}")


RUNNABLE = [doc for doc in DOCS if any(not block.fragment for block in blocks_of(doc))]


@pytest.mark.parametrize("doc", RUNNABLE, ids=_name)
def test_python_blocks_run_as_pasted(doc: Path, tmp_path: Path) -> None:
    """A file's python blocks, run in order in one fresh interpreter, all succeed."""
    blocks = [block for block in blocks_of(doc) if not block.fragment]
    _require_tools(blocks)
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([asdict(block) for block in blocks]), encoding="utf-8")
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), path]))}
    try:
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"the python blocks of {_name(doc)} did not finish in {TIMEOUT} s\n"
            f"--- stdout\n{_text(expired.stdout)}\n--- stderr\n{_text(expired.stderr)}"
        )
    if result.returncode != 0:
        pytest.fail(
            f"a python block of {_name(doc)} failed (exit {result.returncode}); the last "
            f"'-----' line names it\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )


# ------------------------------------------------------------ the extractor itself


def test_extractor_finds_python_blocks_with_their_lines_and_markers() -> None:
    text = (
        "# Title\n"  # 1
        "```python\n"  # 2
        "x = 1\n"  # 3
        "```\n"  # 4
        "```bash\n"  # 5
        "echo no\n"  # 6
        "```\n"  # 7
        "````python fragment\n"  # 8
        "```\n"  # 9: inside a longer fence, not a closing one
        "````\n"  # 10
        "  ```py\n"  # 11: indented fence
        "  y = x\n"  # 12
        "  ```\n"  # 13
        "```\n"  # 14: a bare fence is not python
        "z = 2\n"
        "```\n"
    )
    blocks = python_blocks(text, "doc.md")
    assert [(b.line, b.code, b.fragment) for b in blocks] == [
        (3, "x = 1\n", False),
        (9, "```\n", True),
        (12, "y = x\n", False),
    ]


def test_extractor_refuses_unknown_markers_and_open_fences() -> None:
    with pytest.raises(ValueError, match="unknown word"):
        python_blocks("```python fragmnet\nx = 1\n```\n", "doc.md")
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("text\n```python\nx = 1\n", "doc.md")


def test_a_fragment_that_is_not_python_fails_to_compile() -> None:
    (block,) = python_blocks("```python fragment\ndef broken(:\n```\n", "doc.md")
    with pytest.raises(SyntaxError) as caught:
        block.compiled()
    assert caught.value.lineno == 2  # the line in the document


def test_design_has_the_thirteen_sections() -> None:
    """docs/design.md keeps the section numbers that "docs/design.md §N" references use."""
    headings = re.findall(r"^## (\d+)\. (.+)$", (REPO / "docs" / "design.md").read_text(), re.M)
    assert [int(number) for number, _ in headings] == list(range(1, 14))
    planned = [int(number) for number, title in headings if title.endswith("(planned)")]
    assert planned == []  # docs/design.md §11 and §12 were planned in part once


# -- No reference to a document outside the repository ----------------------------------------

#: Names of documents this repository does not have, spelt in pieces so this file does not
#: cite them itself.
OUTSIDE = tuple(
    "".join(parts)
    for parts in (
        ("DESIGN", ".md"),
        ("../", "shared"),
        ("shared/", "DESIGN"),
        ("STYLE", ".md"),
        ("perf-", "notes"),
        ("issue4-", "bugs"),
        ("the ", "brief"),
    )
)
TEXT_SUFFIXES = frozenset({".py", ".md", ".toml", ".ipynb", ".cfg", ".ini", ".txt", ".sh"})
TEXT_NAMES = frozenset({"dev.py", ".ci/run"})
SECTION = "\u00a7"  # written escaped here, so this file's samples are not found
_SECTION = re.compile(SECTION + r"\s*\d")
#: a capitalised word right before the section sign: another document's name
_NAMED = re.compile(r"\b[A-Z][A-Za-z_-]*(?:\.md)?\s*$")


def outside_references(path: str, text: str) -> list[str]:
    """The lines of ``text`` (the file ``path``, relative to the repository) citing elsewhere.

    A section sign followed by a number must cite docs/design.md: "design.md" comes before it
    on the same line. docs/design.md numbers its own sections; the other docs/*.md that link
    to it cite it as "§N" alone, unless a capitalised name stands right before the sign.
    """
    own = path == "docs/design.md"
    cites_design = path.startswith("docs/") and path.endswith(".md") and "(design.md" in text
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}: {line.strip()}"
        found += [f"{where}  ({name!r})" for name in OUTSIDE if name in line]
        for sign in _SECTION.finditer(line):
            before = line[: sign.start()]
            if own or "design.md" in before or (cites_design and not _NAMED.search(before)):
                continue
            found.append(f"{where}  (a section sign that does not cite docs/design.md)")
    return found


def _tracked_text_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        require(False, f"git ls-files in a git checkout ({error})")
        return []  # not reached: require() skips or fails
    return [
        name
        for name in listed.split("\0")
        if name and (Path(name).suffix in TEXT_SUFFIXES or name in TEXT_NAMES)
    ]


def test_no_file_refers_to_a_document_outside_the_repository() -> None:
    """Every tracked text file cites only documents in the repository (docs/design.md §N)."""
    files = _tracked_text_files()
    assert {"docs/design.md", "dev.py", ".ci/run"} <= set(files), "git ls-files missed files"
    found = [
        problem
        for name in files
        if (REPO / name).is_file()
        for problem in outside_references(name, (REPO / name).read_text(errors="replace"))
    ]
    assert found == [], "references to documents outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("tests/x.py", f'"""DESIGN {SECTION}2: unload() returns."""'),
        ("docs/testing.md", f"as DESIGN {SECTION}2 says ([docs/design.md](design.md))"),
        ("stepfsm/x.py", f"# refused ({SECTION}10)"),
        ("stepfsm/x.py", f"# {SECTION}2 of docs/design.md"),
        ("README.md", f"its {SECTION}2."),
        *((name, f"see {ref}") for name, ref in [("dev.py", o) for o in OUTSIDE]),
    ],
)
def test_a_reference_outside_the_repository_is_found(path: str, line: str) -> None:
    assert outside_references(path, line) != []


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("stepfsm/x.py", f"# refused (docs/design.md {SECTION}10, and {SECTION}2)"),
        ("README.md", f"[docs/design.md {SECTION}3](docs/design.md#3-errors)"),
        ("stepfsm/x.py", f"(``docs/design.md`` {SECTION}12)"),
        ("docs/design.md", f"the rows of {SECTION}2"),
        ("docs/decisions.md", f"[the design](design.md)\n**Why:** {SECTION}9 asks"),
    ],
)
def test_a_reference_to_docs_design_passes(path: str, line: str) -> None:
    assert outside_references(path, line) == []
