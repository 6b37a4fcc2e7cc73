"""The package's layering, as ``stepfsm/__init__.py``'s docstring states it, checked.

The docstring lists stepfsm's modules bottom to top ("each module imports only
modules above it in this list"); the order is read from the docstring itself,
so the documentation and this test cannot drift apart. Every ``*.py`` file in
``stepfsm/`` (recursively, so ``testing`` may be a module or a package) is
parsed with :mod:`ast`, and every import of a stepfsm module is collected:

* at module level, and lazily (inside a function): both run, so both must
  point down the list;
* under ``if TYPE_CHECKING:``: only the type checker follows those, so they
  may point anywhere (they exist to name types of a higher layer).

A name in the list covers its submodules (``testing`` a package, the
``integrations.*`` family); imports inside one such unit are its own business.
The package face (``stepfsm/__init__.py``) stands above every layer, and the
docstring's second list, the programs (the demo, the command line,
``__main__``), above the face, bottom to top; nothing in the layering may
import the face or a program.

A second rule: no module reads another's private names, neither by
``from stepfsm.x import _name`` nor as ``x._name`` (or ``getattr(x, "_name")``)
with ``x`` bound to another stepfsm module. Private *modules* (``_settings``)
are fine to import; dunder names are not private.

Deviations the code has today are listed in :data:`KNOWN_VIOLATIONS`; a new
one fails, and so does a listed one that is gone (delete its entry).

Also checked: a fresh ``import stepfsm`` loads exactly the modules its
module-level imports reach (none of the layers "imported only when used"), and
no module is named like a name its package exports.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import stepfsm

PACKAGE = Path(stepfsm.__file__).resolve().parent
NAME = stepfsm.__name__
#: The package docstring, read from the source (``python -OO`` drops ``__doc__``).
DOC = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))) or ""
FACE = NAME

#: Deviations from the two rules in the code as it is; each key is what the
#: check reports, without its line number. Fix the code, then delete the entry.
KNOWN_VIOLATIONS: dict[str, str] = {
    # the exception the docstring states: Jupyter display draws with diagrams (lazily)
    "stepfsm/machine.py imports stepfsm.diagrams": "Lifecycle._repr_mimebundle_",
    "stepfsm/registry.py imports stepfsm.diagrams": "Status._repr_mimebundle_",
}


# ---------------------------------------------------------------- the layering


def layering(marker: str = "Layering") -> list[str]:
    """The names from the first bullet list after ``marker`` in the package docstring.

    A bullet opens with one or more ``name`` (comma-separated); names are
    ranked in the order they appear, bottom first. ``name.*`` names a
    package's submodules.
    """
    start = DOC.find(marker)
    names: list[str] = []
    for line in DOC[start:].splitlines() if start >= 0 else ():
        head = re.match(r"\* ((?:``[\w.*]+``(?:, )?)+)", line.strip())
        if head:
            names += re.findall(r"``([\w.*]+)``", head.group(1))
        elif names and not line.strip():
            break  # the list ends at the first blank line after it
    return names


LAYERS = layering()
#: The programs above the package face, bottom first (exact module names).
PROGRAMS = layering("the programs built on it")


def unit_of(module: str) -> str | None:
    """The layer name that covers ``module`` (a dotted name), if any."""
    relative = module.removeprefix(f"{NAME}.")
    for layer in LAYERS:
        base = layer.removesuffix(".*")
        if relative == base or relative.startswith(base + "."):
            return layer
    return None


def rank(module: str) -> int | None:
    """``module``'s height: its layer's index; the face, then the programs, on top."""
    if module == FACE:
        return len(LAYERS)
    relative = module.removeprefix(f"{NAME}.")
    if relative in PROGRAMS:
        return len(LAYERS) + 1 + PROGRAMS.index(relative)
    layer = unit_of(module)
    return LAYERS.index(layer) if layer is not None else None


# ------------------------------------------------------------------ the modules


def module_files() -> dict[str, Path]:
    """Every module of the package by file (relative path, as reported) -> its path."""
    return {
        path.relative_to(PACKAGE.parent).as_posix(): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def dotted(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {dotted(path) for path in module_files().values()}


@dataclass(frozen=True)
class Import:
    file: str
    line: int
    target: str  # the stepfsm module imported (FACE for `import stepfsm`)
    kind: str  # "module", "lazy" or "type"
    where: str  # the enclosing function, for lazy imports


@dataclass(frozen=True)
class PrivateRead:
    file: str
    line: int
    name: str  # module.name


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` (the face imports it as ``_TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id.endswith("TYPE_CHECKING")) or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_base(node: ast.ImportFrom, package: str) -> str:
    """The module ``from <it> import ...`` names, relative ones read from ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


class _Reader(ast.NodeVisitor):
    """Collects one module's stepfsm imports and its reads of other modules' private names."""

    def __init__(
        self, file: str, module: str, is_package: bool, globals_: dict[str, str] | None = None
    ) -> None:
        self.file = file
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.private: list[PrivateRead] = []
        # name -> the stepfsm module it is bound to; globals_ from a first pass, so a
        # function sees the module's imports wherever in the file they stand
        self.scopes: list[dict[str, str]] = [dict(globals_ or {})]
        self.where: list[str] = []
        self.functions = 0
        self.type_only = 0

    # -- context

    def _kind(self) -> str:
        return "type" if self.type_only else "lazy" if self.functions else "module"

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.where.append(node.name)
        self.generic_visit(node)
        self.where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.where.append(node.name)
        self.functions += 1
        self.scopes.append({})
        self.generic_visit(node)
        self.scopes.pop()
        self.functions -= 1
        self.where.pop()

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_FunctionDef(node)

    # -- imports

    def _record(self, node: ast.stmt, target: str, bind: str | None) -> None:
        self.imports.append(
            Import(self.file, node.lineno, target, self._kind(), ".".join(self.where))
        )
        if bind is not None:
            self.scopes[-1][bind] = target

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == NAME or alias.name.startswith(NAME + "."):
                if alias.asname:
                    self._record(node, alias.name, alias.asname)
                else:  # `import stepfsm.x` binds `stepfsm`
                    self._record(node, alias.name, None)
                    self.scopes[-1][NAME] = FACE

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = import_base(node, self.package)
        if base != NAME and not base.startswith(NAME + "."):
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in MODULES:
                self._record(node, submodule, alias.asname or alias.name)
                continue
            self._record(node, base, None)
            if _private(alias.name) and base != self.module:
                self.private.append(PrivateRead(self.file, node.lineno, submodule))

    # -- attribute reads

    def _bound(self, expr: ast.expr) -> str | None:
        """The stepfsm module ``expr`` names (``registry``, ``stepfsm.registry``), if any."""
        if isinstance(expr, ast.Name):
            for scope in reversed(self.scopes):
                if expr.id in scope:
                    return scope[expr.id]
            return None
        if isinstance(expr, ast.Attribute):
            base = self._bound(expr.value)
            if base is not None and f"{base}.{expr.attr}" in MODULES:
                return f"{base}.{expr.attr}"
        return None

    def _read(self, node: ast.expr, module: str | None, name: str) -> None:
        read = f"{module}.{name}"
        if module not in (None, self.module) and _private(name) and read not in MODULES:
            self.private.append(PrivateRead(self.file, node.lineno, read))  # not a submodule

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._read(node, self._bound(node.value), node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            self._read(node, self._bound(node.args[0]), node.args[1].value)
        self.generic_visit(node)


@dataclass(frozen=True)
class Module:
    file: str
    name: str
    imports: tuple[Import, ...]
    private: tuple[PrivateRead, ...]


def read(file: str, path: Path, source: str | None = None) -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    package = path.name == "__init__.py"
    first = _Reader(file, dotted(path), package)
    first.visit(tree)
    reader = _Reader(file, dotted(path), package, globals_=first.scopes[0])
    reader.visit(tree)
    return Module(file, reader.module, tuple(reader.imports), tuple(reader.private))


def read_all() -> list[Module]:
    return [read(file, path) for file, path in module_files().items()]


# ----------------------------------------------------------------- the checks


def _short(module: str) -> str:
    return module.removeprefix(f"{NAME}.") if module != FACE else f"{NAME} (the package face)"


def layer_violations(modules: list[Module]) -> Iterator[tuple[str, str]]:
    """(key, message) for each module in no layer and each import that does not point down."""
    order = " < ".join([*LAYERS, "the face", *PROGRAMS])
    for module in modules:
        here = rank(module.name)
        if here is None:
            yield (
                f"{module.file} is in no layer",
                f"{module.file} is in no layer: add `{_short(module.name)}` to the layering "
                f"in {NAME}/__init__.py's docstring ({order})",
            )
            continue
        for imp in module.imports:
            if imp.kind == "type" or imp.target == module.name:
                continue
            if unit_of(imp.target) is not None and unit_of(imp.target) == unit_of(module.name):
                continue  # inside one package of the layering
            there = rank(imp.target)
            if there is not None and there < here:
                continue
            how = f"lazily (in {imp.where})" if imp.kind == "lazy" else "at module level"
            if there is None:
                why = f"{_short(imp.target)} is in no layer"
            else:
                why = (
                    f"{_short(module.name)} may import only what is below it, and "
                    f"{_short(imp.target)} is not ({order})"
                )
            yield (
                f"{module.file} imports {imp.target}",
                f"{module.file}:{imp.line} imports {imp.target} {how}: {why}",
            )


def private_violations(modules: list[Module]) -> Iterator[tuple[str, str]]:
    for module in modules:
        for read_ in module.private:
            yield (
                f"{module.file} reads {read_.name}",
                f"{module.file}:{read_.line} reads {read_.name}, a private name of another "
                "module: make it public in its module (or move the code that needs it there)",
            )


def _check(found: list[tuple[str, str]], rule: str) -> None:
    relevant = {
        key
        for key in KNOWN_VIOLATIONS
        if (" reads " in key) == (rule == "privacy")  # each rule checks its own entries
    }
    new = [message for key, message in found if key not in KNOWN_VIOLATIONS]
    gone = sorted(relevant - {key for key, _ in found})
    if new:
        pytest.fail("\n".join([f"{len(new)} new {rule} violation(s):", *new]), pytrace=False)
    if gone:
        pytest.fail("\n".join(["fixed, so delete from KNOWN_VIOLATIONS:", *gone]), pytrace=False)


# ------------------------------------------------------------------------ tests


def test_docstring_lists_the_layers() -> None:
    """The docstring's list parses, names each layer once, and names only real modules."""
    assert LAYERS, "no bullet list of layers after 'Layering' in stepfsm/__init__.py's docstring"
    assert len(LAYERS) == len(set(LAYERS)), f"a layer is listed twice: {LAYERS}"
    ghosts = [
        layer
        for layer in LAYERS
        if not any(unit_of(module) == layer for module in MODULES if module != FACE)
    ]
    assert not ghosts, f"the layering names modules that do not exist: {ghosts}"
    assert PROGRAMS, "no bullet list of programs after the layering in the docstring"
    missing = [p for p in PROGRAMS if f"{NAME}.{p}" not in MODULES]
    assert not missing, f"the list of programs names modules that do not exist: {missing}"
    assert not set(PROGRAMS) & set(LAYERS), "a module is both a layer and a program"


def test_every_import_points_down_the_layering() -> None:
    """Each module is in a layer and imports (at module level or lazily) only lower layers."""
    _check(list(layer_violations(read_all())), "layering")


def test_no_module_reads_another_modules_private_names() -> None:
    """No `from stepfsm.x import _name`, no `x._name` with x another stepfsm module."""
    _check(list(private_violations(read_all())), "privacy")


def test_import_stepfsm_loads_exactly_the_module_level_closure() -> None:
    """A fresh `import stepfsm` loads the modules its module-level imports reach, no others.

    This checks the import reader against the interpreter (an import it does not
    see would show up here), and the docstring's "imported only when used".
    """
    graph = {
        module.name: {imp.target for imp in module.imports if imp.kind == "module"}
        for module in read_all()
    }
    expected: set[str] = set()
    todo = [FACE]
    while todo:
        module = todo.pop()
        if module not in expected:
            expected.add(module)
            todo += graph.get(module, ())
            todo += [module.rpartition(".")[0]] if "." in module else []  # its package runs too
    when_used = re.search(r"\* ((?:``[\w.*]+``(?:, )?)+): [^*]*imported only when used", DOC)
    assert when_used, "the docstring no longer says which layers are imported only when used"
    on_demand = re.findall(r"``([\w.*]+)``", when_used.group(1))
    assert not [m for m in expected if unit_of(m) in on_demand], (
        f"`import stepfsm` reaches layers meant to be imported only when used: {on_demand}"
    )
    code = (
        f"import sys, {NAME}\nprint(sorted(m for m in sys.modules if m.split('.')[0] == {NAME!r}))"
    )
    assert run_fresh(code) == str(sorted(expected))


def run_fresh(code: str) -> str:
    """What ``code`` prints in a fresh interpreter that imports this checkout's stepfsm."""
    path = os.pathsep.join(p for p in (str(PACKAGE.parent), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _exported(init: Path) -> list[str]:
    """The names a package's ``__init__.py`` lists in ``__all__`` (read, not imported)."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            names: list[str] = ast.literal_eval(value)  # a literal list, by convention
            return names
    return []


def test_no_module_is_named_like_a_public_name() -> None:
    """No submodule shares a name with its package's exports.

    Importing ``stepfsm.status`` (a module) would replace the function
    ``stepfsm.status`` on the package.
    """
    clashes = [
        f"{init.parent.relative_to(PACKAGE.parent).as_posix()}/{child.name} is named like "
        f"{dotted(init)}.{child.stem} in its __all__"
        for init in sorted(PACKAGE.rglob("__init__.py"))
        for child in init.parent.iterdir()
        if (child.suffix == ".py" or (child / "__init__.py").exists())
        and child.stem in _exported(init)
    ]
    assert not clashes, "\n".join(clashes)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import registry\nregistry._LIVE\n", ["reads stepfsm.registry._LIVE"]),
        ("from .registry import _LIVE\n", ["reads stepfsm.registry._LIVE"]),
        ("import stepfsm.registry as r\ngetattr(r, '_LIVE')\n", ["reads stepfsm.registry._LIVE"]),
        (
            "import stepfsm\nstepfsm.registry._LIVE\n",
            ["imports stepfsm", "reads stepfsm.registry._LIVE"],
        ),
        (
            "def f():\n    from . import registry\n    registry._LIVE\n",
            ["reads stepfsm.registry._LIVE"],
        ),
        ("def f():\n    from . import diagrams\n", ["imports stepfsm.diagrams"]),
        ("from stepfsm import cli\n", ["imports stepfsm.cli"]),
        ("from . import _demo\n", ["imports stepfsm._demo"]),
        ("import stepfsm\n", ["imports stepfsm"]),
        ("from stepfsm import lifecycle\n", ["imports stepfsm"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import stepfsm.cli\n", []),
        ("from . import _settings, registry\n_settings.__doc__, registry.status\n", []),
        ("from ._settings import resolve\nfrom . import _snapshot\n", []),
        ("import stepfsm\nstepfsm.registry.status, stepfsm.__version__\n", ["imports stepfsm"]),
        ("registry = object()\nregistry._x\n", []),
        ("def f():\n    from . import registry\nregistry._x\n", []),
        ("def f():\n    registry._x\nfrom . import registry\n", ["reads stepfsm.registry._x"]),
    ],
)
def test_the_reader_sees_what_the_rules_forbid(source: str, expected: list[str]) -> None:
    """Each form of violation is caught (shown in a module of layer ``wrap``)."""
    module = read("stepfsm/wrap.py", PACKAGE / "wrap.py", source)
    found = [key for key, _ in [*layer_violations([module]), *private_violations([module])]]
    assert [key.removeprefix("stepfsm/wrap.py ") for key in found] == expected
