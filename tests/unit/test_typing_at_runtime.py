"""typing is the type checker's: ``import stepfsm`` imports none of it (``stepfsm._typing``).

* A fresh ``import stepfsm`` leaves ``typing`` out of ``sys.modules`` (Python 3.11+:
  on 3.10, ``ExceptionGroup`` comes from the ``exceptiongroup`` backport, which imports it).
* A name a module binds only under ``if TYPE_CHECKING:`` (an import, an alias,
  a protocol) is read only where nothing evaluates it: in annotations (strings,
  under ``from __future__ import annotations``) and in other such blocks. Read
  anywhere else, it is a ``NameError`` waiting for the one call that runs that
  line, so every module of the package is read with :mod:`ast`, and so is
  every runtime ``from .x import name`` of such a name from another module.
* ``stepfsm._typing.NamedTuple`` makes what ``typing.NamedTuple`` makes.
* The aliases kept from run time agree with what runs: each policy type
  (``OnRepeat`` ...) has exactly the values of ``_settings.POLICIES``, and
  ``states.Trigger`` names exactly the table's triggers (at run time it is ``str``).
"""

from __future__ import annotations

import ast
import copy
import inspect
import pickle
import sys
import typing
from collections.abc import Sequence

import pytest

import stepfsm
from stepfsm import _budget, _settings, registry, states
from stepfsm._typing import NamedTuple
from tests.unit.test_layout import dotted, import_base, is_type_checking, module_files, run_fresh

# ------------------------------------------------------------ import stepfsm


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="on 3.10 the exceptiongroup backport imports typing"
)
def test_import_stepfsm_imports_no_typing() -> None:
    printed = run_fresh("import sys, stepfsm; print('typing' in sys.modules)")
    assert printed == "False", "`import stepfsm` imported typing"


# ------------------------------------------- names only the type checker sees


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _bound_names(nodes: Sequence[ast.AST]) -> set[str]:
    """The names statements bind in their own scope (imports, assignments, defs).

    Nested functions, lambdas and classes are scopes of their own: their names
    count, not what their bodies bind.
    """
    names: set[str] = set()
    todo = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).partition(".")[0] for a in node.names}
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        if not isinstance(node, _SCOPES):
            todo += ast.iter_child_nodes(node)
    return names


def checker_only(tree: ast.Module) -> set[str]:
    """The names the module binds under ``if TYPE_CHECKING:`` and nowhere at run time."""
    only: set[str] = set()
    runtime: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            only |= _bound_names(node.body)
            runtime |= _bound_names(node.orelse)
        else:
            runtime |= _bound_names([node])
    return only - runtime


class _Uses(ast.NodeVisitor):
    """Where the run time reads a checker-only name (annotations and checker blocks skipped).

    ``names``: this module's checker-only names; ``modules``: the names that are
    bound to another stepfsm module here, and ``only``: each module's
    checker-only names, for reads like ``_settings.OnLeak``.
    """

    def __init__(self, names: set[str], modules: dict[str, str], only: dict[str, set[str]]) -> None:
        self.names = names
        self.modules = modules
        self.only = only
        self.hidden: list[set[str]] = [set()]  # per function: the names it binds itself
        self.found: list[tuple[int, str]] = []

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        if not isinstance(node, ast.Lambda):
            for decorator in node.decorator_list:
                self.visit(decorator)
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.visit(default)
        args = node.args
        params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
        params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        body = node.body if isinstance(node.body, list) else [node.body]
        self.hidden.append(self.hidden[-1] | params | _bound_names(body))
        for child in body:
            self.visit(child)
        self.hidden.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)  # the annotation is never evaluated
        if node.value is not None:
            self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        if (
            isinstance(node.ctx, ast.Load)
            and node.id in self.names
            and node.id not in self.hidden[-1]
        ):
            self.found.append((node.lineno, node.id))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if isinstance(value, ast.Name) and value.id not in self.hidden[-1]:
            module = self.modules.get(value.id)
            if module is not None and node.attr in self.only.get(module, ()):
                self.found.append((node.lineno, f"{module}.{node.attr}"))
        self.generic_visit(node)


def _runtime_imports(
    tree: ast.Module, module: str, is_package: bool
) -> list[tuple[int, str, str, str]]:
    """``(line, module, name, bound as)`` of each ``from module import name`` that runs."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str, str, str]] = []

    def walk(nodes: list[ast.stmt] | list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and is_type_checking(node.test):
                walk(list(node.orelse))
                continue
            if isinstance(node, ast.ImportFrom):
                base = import_base(node, package)
                found.extend(
                    (node.lineno, base, alias.name, alias.asname or alias.name)
                    for alias in node.names
                )
            walk(list(ast.iter_child_nodes(node)))

    walk(list(tree.body))
    return found


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """What reads a checker-only name at run time, in modules ``name -> (source, is_package)``."""
    trees = {name: ast.parse(source) for name, (source, _) in sources.items()}
    only = {name: checker_only(tree) for name, tree in trees.items()}
    found: list[str] = []
    for name, tree in trees.items():
        imports = _runtime_imports(tree, name, sources[name][1])
        modules = {bound: f"{base}.{imported}" for _, base, imported, bound in imports}
        uses = _Uses(only[name], {k: v for k, v in modules.items() if v in trees}, only)
        uses.visit(tree)
        found += [f"{name}:{line} reads {used} at run time" for line, used in uses.found]
        for line, source, imported, _ in imports:
            if imported in only.get(source, ()):
                found.append(f"{name}:{line} imports {source}.{imported} at run time")
    return found


def test_no_name_for_the_type_checker_is_read_at_run_time() -> None:
    sources = {
        dotted(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in module_files().values()
    }
    assert "stepfsm._settings" in sources
    assert violations(sources) == []


_CHECKER_ANY = "if TYPE_CHECKING:\n    from typing import Any\n"
_CHECKER_CAST = "if TYPE_CHECKING:\n    from typing import cast\n"
_CHECKER_D = "if TYPE_CHECKING:\n    from x import D\n"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (_CHECKER_ANY + "Values = dict[str, Any]\n", [3]),
        (_CHECKER_ANY + "x: Any = 1\n", []),
        (_CHECKER_ANY + "def f(a: Any) -> Any:\n    return a\n", []),
        (_CHECKER_CAST + "def f(a):\n    return cast(int, a)\n", [4]),
        (_CHECKER_CAST + "def f(a):\n    from typing import cast\n    return cast(int, a)\n", []),
        ("if TYPE_CHECKING:\n    T = 1\nelse:\n    T = object\nclass C(list[T]):\n    pass\n", []),
        ("if TYPE_CHECKING:\n    T = 1\nclass C(list[T]):\n    pass\n", [3]),
        (_CHECKER_D + "@D\ndef f():\n    pass\n", [3]),
        (_CHECKER_D + "def f(a=D):\n    pass\n", [3]),
        (_CHECKER_D + "if TYPE_CHECKING:\n    E = D\n", []),
        (_CHECKER_D + "def f(D):\n    return D\n", []),
        (_CHECKER_D + "def f():\n    from x import D\n    return D\ndef g():\n    return D\n", [7]),
        (
            _CHECKER_CAST
            + "def f(a):\n    def g():\n        from typing import cast\n    return cast(int, a)\n",
            [6],
        ),
    ],
)
def test_the_reader_finds_each_runtime_read(source: str, expected: list[int]) -> None:
    found = violations({"stepfsm.m": (source, False)})
    assert [int(item.split(":")[1].split()[0]) for item in found] == expected


def test_the_reader_finds_a_runtime_import_of_a_checker_only_name() -> None:
    settings = "if TYPE_CHECKING:\n    OnLeak = 1\nPOLICIES = 2\n"
    sources = {
        "stepfsm._settings": (settings, False),
        "stepfsm.machine": ("from ._settings import OnLeak, POLICIES\n", False),
        "stepfsm.registry": ("from . import _settings as s\nx = s.OnLeak, s.POLICIES\n", False),
        "stepfsm.wrap": ("if TYPE_CHECKING:\n    from ._settings import OnLeak\n", False),
        "stepfsm.testing": ("def f():\n    from .._settings import OnLeak\n", True),
    }
    assert violations(sources) == [
        "stepfsm.machine:1 imports stepfsm._settings.OnLeak at run time",
        "stepfsm.registry:2 reads stepfsm._settings.OnLeak at run time",
        "stepfsm.testing:2 imports stepfsm._settings.OnLeak at run time",
    ]


# ------------------------------------------------------------------ records


class Point(NamedTuple):
    """A point."""

    x: int
    y: str = "b"
    tags: tuple[str, ...] = ()

    @property
    def both(self) -> str:
        return f"{self.x}{self.y}"

    def moved(self, dx: int) -> Point:
        return self._replace(x=self.x + dx)


class TypingPoint(typing.NamedTuple):
    """A point."""

    x: int
    y: str = "b"
    tags: tuple[str, ...] = ()


def test_a_record_is_what_typing_makes() -> None:
    point = Point(1)
    assert tuple(point) == (1, "b", ()) == tuple(TypingPoint(1))
    assert (Point._fields, Point._field_defaults) == (
        TypingPoint._fields,
        TypingPoint._field_defaults,
    )
    assert isinstance(point, tuple)
    assert repr(point) == "Point(x=1, y='b', tags=())"
    assert point._asdict() == {"x": 1, "y": "b", "tags": ()}
    assert Point._make([2, "c", ("t",)]).moved(1) == Point(3, "c", ("t",))
    assert point.both == "1b"
    assert Point.__doc__ == "A point."
    assert (Point.__module__, Point.__qualname__) == (__name__, "Point")
    assert pickle.loads(pickle.dumps(Point(4, "d"))) == Point(4, "d")
    assert copy.deepcopy(point) == point
    ours, typings = inspect.signature(Point), inspect.signature(TypingPoint)
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in typings.parameters.values()
    ]
    assert typing.get_type_hints(Point) == typing.get_type_hints(TypingPoint)
    with pytest.raises(AttributeError):
        setattr(point, "x", 2)  # noqa: B010 (a record is immutable)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("    x: int = 1\n    y: int\n", "a field without a default follows one with it"),
        ("    x: int\n    def _asdict(self):\n        return {}\n", "cannot set _asdict"),
        ("    x: int\n    __slots__ = ('z',)\n", "cannot set __slots__"),
    ],
)
def test_a_record_refuses_what_typing_refuses(body: str, error: str) -> None:
    namespace: dict[str, object] = {"NamedTuple": NamedTuple}
    with pytest.raises((TypeError, AttributeError), match=error):
        exec(f"class Bad(NamedTuple):\n{body}", namespace)


def test_a_record_has_one_base_and_no_functional_form() -> None:
    with pytest.raises(TypeError, match="derive from NamedTuple alone"):

        class Both(NamedTuple, Exception):  # type: ignore[misc]
            x: int

    with pytest.raises(TypeError, match="base class only"):
        NamedTuple("R", [("x", int)])


#: Records whose field types ``typing.get_type_hints`` cannot resolve at run time, and why.
UNRESOLVED = {
    # `since` is a datetime, and `import datetime` (5 M instructions) waits for status()
    "StepStatus": "_dt",
    # private; its policy fields are typed for the checker (Literal needs typing)
    "ClassConfig": "OnRepeat",
}


@pytest.mark.parametrize(
    "record",
    [
        stepfsm.TransitionRecord,
        stepfsm.LifecycleStatistics,
        stepfsm.StepStatus,
        stepfsm.ReleaseReport,
        stepfsm.ReleasedObject,
        stepfsm.RunningCall,
        states.Transition,
        _budget.BudgetUse,
        registry.PoolStatus,
        _settings.ClassConfig,
    ],
    ids=lambda record: record.__name__,
)
def test_stepfsms_records_are_records_with_their_types(record: type[tuple[object, ...]]) -> None:
    """Each record is a named tuple; ``get_type_hints`` resolves its fields (pydantic,
    hypothesis's ``from_type`` read them), but for the listed exceptions."""
    assert issubclass(record, tuple)
    fields: tuple[str, ...] = record._fields  # type: ignore[attr-defined]
    assert tuple(record.__annotations__) == fields
    missing = UNRESOLVED.get(record.__name__)
    if missing is None:
        assert tuple(typing.get_type_hints(record)) == fields
    else:
        with pytest.raises(NameError, match=f"'{missing}'"):
            typing.get_type_hints(record)


# -------------------------------------------------- aliases kept from run time


def _checker_aliases(module: object) -> dict[str, ast.expr]:
    """The aliases a module assigns under ``if TYPE_CHECKING:``, by name (read from source)."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    return {
        target.id: node.value
        for block in tree.body
        if isinstance(block, ast.If) and is_type_checking(block.test)
        for node in block.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _literal_values(expr: ast.expr) -> tuple[object, ...]:
    assert isinstance(expr, ast.Subscript), ast.unparse(expr)
    assert ast.unparse(expr.value) == "Literal", ast.unparse(expr)
    items = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
    return tuple(ast.literal_eval(item) for item in items)


@pytest.mark.parametrize("alias", ["OnRepeat", "OnUnloadedUse", "OnLeak"])
def test_each_policy_type_has_the_values_the_settings_accept(alias: str) -> None:
    values = _literal_values(_checker_aliases(_settings)[alias])
    assert sorted(values) == sorted(_settings.POLICIES)  # type: ignore[type-var]


def test_trigger_names_the_tables_triggers_for_the_checker_and_at_run_time() -> None:
    written = _literal_values(_checker_aliases(states)["Trigger"])
    table = tuple(dict.fromkeys(row.trigger for row in states.TRANSITIONS))
    assert written == table
    assert states.Trigger is str  # type: ignore[comparison-overlap]  # at run time, no typing
    assert typing.get_type_hints(states.Transition)["trigger"] is str


def test_async_loaded_is_generic_at_run_time() -> None:
    alias = stepfsm.AsyncLoaded[int]
    assert typing.get_origin(alias) is stepfsm.AsyncLoaded
    assert typing.get_args(alias) == (int,)
