"""Guards: the check that a guarded method's step is loaded, written into the method.

A guarded method must raise ``NotLoadedError`` (or wait out a transition)
when its step is not loaded, cost next to nothing when it is, and let an
unload know that it is running (``_drain``). It reads the step's loaded flag,
whose value while loaded is the load's token, into the local variable
``_stepfsm_t``, takes the slow path (``machine.require_loaded``, which waits
or raises and returns the token to hold) if it is not set, and clears the
variable when it returns (an interrupt that lands in between can leave a
finished frame holding it; ``_drain`` tells those apart)::

    try:
        _stepfsm_t = self.__stepfsm_loaded__
        if not _stepfsm_t:
            _stepfsm_t = _stepfsm_slow(self, "generate")
        <the method's body>
    finally:
        _stepfsm_t = None

Three ways:

* **Inline** (the usual case): the method's own source is compiled again
  with those statements around its body, same file, same line numbers, same
  globals and closure: no second frame, a few bytecodes more per call. It is
  used only when the recompiled body is provably the running one (its
  bytecode, names and constants equal the original's), so a source file
  edited after import, a decorated method, or a method without source never
  gets it. ``locals()`` inside the method shows ``_stepfsm_t``.
* **Wrapper** (otherwise, for generators and for slotted classes): a
  generated function with the method's exact signature that does the same
  around a call of the original. A generator's steps run through
  :func:`_delegate`, which holds the token only while a step runs.
* **Async** (``async def`` methods): the same statements, inline when the
  source allows, else in a generated ``async def`` wrapper; the slow path
  awaits a transition instead of blocking the loop. The coroutine holds the
  token while it runs, suspended or not (``_drain`` tells the task an
  ``aunload()`` serves apart).

Each new function carries ``__stepfsm_original__`` (the method as written);
the code objects that hold the token are registered with ``_drain``.
"""

from __future__ import annotations
import __future__

import ast
import functools
import inspect
import sys
import textwrap
import types
from collections.abc import Callable, Generator

from . import _drain, machine, registry
from ._settings import LOADED_FLAG
from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Final

__all__ = ["make_guard"]

_P = inspect.Parameter


#: How each kind of guard reads the step's token (its loaded flag) into
#: ``_stepfsm_t``, and when it must take the slow path: an attribute read, or,
#: without a __dict__, the table of tokens (whose entry must be this object's).
_READS: Final = {
    True: "{self}." + LOADED_FLAG,
    False: "_stepfsm_tokens.get(_stepfsm_id({self}))",
}
_CHECKS: Final = {
    True: "not _stepfsm_t",
    False: "_stepfsm_t is None or _stepfsm_t.owner() is not {self}",
}
#: The call holds the token in ``_stepfsm_t`` until it returns: an unload waits
#: until no call holds it (``_drain``). The slow path returns the token to hold.
_TEMPLATE: Final = """\
def {name}({params}):
    try:
        _stepfsm_t = {read}
        if {check}:
            _stepfsm_t = _stepfsm_slow({self}, {operation!r})
        return _stepfsm_fn({call})
    finally:
        _stepfsm_t = None
"""
# An async call holds the token while it runs, suspended or not; its slow path awaits.
_ASYNC_TEMPLATE: Final = """\
async def {name}({params}):
    try:
        _stepfsm_t = {read}
        if {check}:
            _stepfsm_t = await _stepfsm_aslow({self}, {operation!r})
        return await _stepfsm_fn({call})
    finally:
        _stepfsm_t = None
"""
# A generator method stays a generator function: the check runs at the first next();
# each step then runs holding the token, a suspended generator holds nothing.
_GENERATOR_TEMPLATE: Final = """\
def {name}({params}):
    try:
        _stepfsm_t = {read}
        if {check}:
            _stepfsm_t = _stepfsm_slow({self}, {operation!r})
        _stepfsm_g = _stepfsm_delegate({self}, {operation!r}, _stepfsm_fn({call}), _stepfsm_t)
    finally:
        _stepfsm_t = None
    return (yield from _stepfsm_g)
"""


def _delegate(
    obj: object, operation: str, it: Generator[Any, Any, Any], first: object
) -> Generator[Any, Any, Any]:
    """``yield from it``, holding ``obj``'s token only while ``it`` runs a step.

    ``first`` is the token the guard's check took, held for the first step;
    each later step checks again, as a call would (it waits out an unload
    that began meanwhile, then raises ``NotLoadedError``). Values sent,
    exceptions thrown and ``close()`` reach ``it`` as with ``yield from``
    (``close()`` holds the token if there is one, and never waits).
    """
    _stepfsm_t = first
    first = None
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if _stepfsm_t is None:
                _stepfsm_t = registry.token_of(obj) or machine.require_loaded(obj, operation)
            item = it.send(value) if error is None else it.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            _stepfsm_t = error = None
        try:
            value = yield item
        except GeneratorExit:
            _stepfsm_t = registry.token_of(obj)
            try:
                it.close()
            finally:
                _stepfsm_t = None
            raise
        except BaseException as thrown:  # passed into the generator, as `yield from` does
            error, value = thrown, None


_drain.register(_delegate.__code__)


def make_guard(
    fn: Callable[..., Any], operation: str, flag: bool = True
) -> Callable[..., Any] | None:
    """Return ``fn`` guarded: it raises ``NotLoadedError`` unless its step is loaded.

    Inline when possible (see the module docstring), else a wrapper with
    ``fn``'s exact signature (generated code), so arguments are passed on
    without repacking. ``flag`` chooses the fast path: the instance's loaded
    flag (classes with a ``__dict__``) or the registry's table of loaded ids
    (always a wrapper). ``None`` if ``fn`` is already guarded.
    """
    if hasattr(fn, "__stepfsm_original__"):
        return None
    if flag:
        inline = _inline(fn, operation)
        if inline is not None:
            return inline
    namespace: dict[str, Any] = {
        "_stepfsm_id": id,
        "_stepfsm_tokens": registry.tokens_table(),
        "_stepfsm_delegate": _delegate,
        "_stepfsm_slow": machine.require_loaded,
        "_stepfsm_aslow": machine.arequire_token,
        "_stepfsm_fn": fn,
    }
    source = _guard_source(fn, operation, namespace, _READS[flag], _CHECKS[flag])
    exec(compile(source, f"<stepfsm guard {operation}>", "exec"), namespace)
    guard: Callable[..., Any] = namespace[operation if operation.isidentifier() else "guarded"]
    _drain.register(guard.__code__)
    functools.update_wrapper(guard, fn)
    guard.__stepfsm_original__ = fn  # type: ignore[attr-defined]
    return guard


def _guard_source(
    fn: Callable[..., Any], operation: str, namespace: dict[str, Any], read: str, check: str
) -> str:
    name = operation if operation.isidentifier() else "guarded"
    if inspect.iscoroutinefunction(fn):
        template = _ASYNC_TEMPLATE
    elif inspect.isgeneratorfunction(fn):
        template = _GENERATOR_TEMPLATE
    else:
        template = _TEMPLATE

    def render(params: str, self: str, call: str) -> str:
        return template.format(
            name=name,
            params=params,
            read=read.format(self=self),
            check=check.format(self=self),
            self=self,
            operation=operation,
            call=call,
        )

    generic = render("self, /, *args, **kwargs", "self", "self, *args, **kwargs")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return generic
    if (
        not params
        or params[0].kind not in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
        or any(p.name.startswith("_stepfsm_") for p in params)
    ):
        return generic
    declared: list[str] = []
    passed: list[str] = []
    seen_star = False
    for index, param in enumerate(params):
        text = param.name
        if param.default is not _P.empty:
            namespace[f"_stepfsm_d{index}"] = param.default
            text += f"=_stepfsm_d{index}"
        if param.kind is _P.VAR_POSITIONAL:
            seen_star = True
            declared.append("*" + param.name)
            passed.append("*" + param.name)
            continue
        if param.kind is _P.VAR_KEYWORD:
            declared.append("**" + param.name)
            passed.append("**" + param.name)
            continue
        if param.kind is _P.KEYWORD_ONLY:
            if not seen_star:
                declared.append("*")
                seen_star = True
            declared.append(text)
            passed.append(f"{param.name}={param.name}")
            continue
        if (
            param.kind is _P.POSITIONAL_OR_KEYWORD
            and index
            and params[index - 1].kind is (_P.POSITIONAL_ONLY)
        ):
            declared.append("/")
        declared.append(text)
        passed.append(param.name)
    if params[-1].kind is _P.POSITIONAL_ONLY:
        declared.append("/")
    return render(", ".join(declared), params[0].name, ", ".join(passed))


# ------------------------------------------------------------------ inline


#: The ``from __future__`` features whose compiler flags a recompile must keep.
_FUTURE_FLAGS: Final = tuple(
    getattr(__future__, name).compiler_flag for name in __future__.all_feature_names
)
_SLOW: Final = "_stepfsm_slow"
_ASLOW: Final = "_stepfsm_aslow"  # the async slow path (``machine.arequire_token``)
_NESTED: Final = inspect.CO_NESTED
_OUTER: Final = "_stepfsm_outer"


def _inline(fn: Callable[..., Any], operation: str) -> Callable[..., Any] | None:
    """``fn`` recompiled with the loaded check as its first statement, or ``None``.

    An ``async def`` method's slow path is awaited (``machine.arequire_token``).
    """
    code = getattr(fn, "__code__", None)
    if (
        not isinstance(fn, types.FunctionType)
        or code is None
        or inspect.isgeneratorfunction(fn)  # holds the token only while a step runs
        or inspect.isasyncgenfunction(fn)
        or not {_SLOW, _ASLOW}.isdisjoint(code.co_freevars)
        or _drain.HOLDER in code.co_varnames
    ):
        return None
    is_async = inspect.iscoroutinefunction(fn)
    try:
        lines, first = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    node = tree.body[0] if len(tree.body) == 1 else None
    kind = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    if not isinstance(node, kind) or node.decorator_list or node.name != code.co_name:
        return None
    params = [*node.args.posonlyargs, *node.args.args]
    if not params:
        return None
    ast.increment_lineno(tree, first - 1)
    imported = _imported(code, fn.__globals__)
    if not _same(_compile(node, code, imported), code):  # the source is not what runs
        return None
    me, hold = params[0].arg, _drain.HOLDER
    slow, helper, wait = (
        (_ASLOW, machine.arequire_token, "await ")
        if is_async
        else (_SLOW, machine.require_loaded, "")
    )
    check = ast.parse(
        f"{hold} = {me}.{LOADED_FLAG}\nif not {hold}:\n"
        f"    {hold} = {wait}{slow}({me}, {operation!r})\n"
    ).body
    release = ast.parse(f"{hold} = None\n").body
    at = node.body[0]
    for part in (p for stmt in (*check, *release) for p in ast.walk(stmt)):
        if isinstance(part, (ast.stmt, ast.expr)):  # the def line: tracebacks point there
            part.lineno = part.end_lineno = node.lineno
            part.col_offset, part.end_col_offset = at.col_offset, at.col_offset
    docstring = ast.get_docstring(node, clean=False) is not None
    head, body = node.body[:1] if docstring else [], node.body[1:] if docstring else node.body
    held = ast.Try(body=[*check, *body], handlers=[], orelse=[], finalbody=release)
    ast.copy_location(held, release[0])
    node.body = [*head, held]
    ast.fix_missing_locations(node)
    guarded_code = _compile(node, code, imported, extra=(slow,))
    if guarded_code is None:
        return None
    cells = dict(zip(code.co_freevars, fn.__closure__ or (), strict=True))
    cells[slow] = types.CellType(helper)
    guard = types.FunctionType(
        guarded_code,
        fn.__globals__,
        fn.__name__,
        fn.__defaults__,
        tuple(cells[name] for name in guarded_code.co_freevars),
    )
    guard.__kwdefaults__ = fn.__kwdefaults__
    functools.update_wrapper(guard, fn)
    guard.__stepfsm_original__ = fn  # type: ignore[attr-defined]
    _drain.register(guarded_code)
    return guard


def _imported(code: types.CodeType, namespace: dict[str, Any]) -> list[str]:
    """The global names ``code`` (or code nested in it) uses that hold modules."""
    names: set[str] = set()
    todo = [code]
    while todo:
        current = todo.pop()
        names.update(current.co_names)
        todo += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    return sorted(n for n in names if isinstance(namespace.get(n), types.ModuleType))


def _compile(
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    code: types.CodeType,
    imported: list[str],
    extra: tuple[str, ...] = (),
) -> types.CodeType | None:
    """Compile the def ``node`` as ``code`` was: same file, flags and free variables.

    The def is nested in a function that binds each free variable, so the
    compiler makes them free variables of the def again (``__class__`` for a
    zero-argument ``super()``, a closure's names), plus ``extra`` names. The
    ``imported`` names are bound by import statements at the top, as they
    most likely were in the original module: the compiler calls methods of an
    imported module differently (the comparison with the original tells).
    """
    binds = [
        ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Constant(None))
        for name in (*code.co_freevars, *extra)
    ]
    outer = ast.FunctionDef(
        name=_OUTER,
        args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[*binds, node, ast.Return(value=ast.Name(id=node.name, ctx=ast.Load()))],
        decorator_list=[],
    )
    imports: list[ast.stmt] = [
        ast.Import(names=[ast.alias(name="_stepfsm_module", asname=name)]) for name in imported
    ]
    module = ast.Module(body=[*imports, outer], type_ignores=[])
    ast.fix_missing_locations(module)
    flags = sum(flag for flag in _FUTURE_FLAGS if code.co_flags & flag)
    try:
        compiled = compile(module, code.co_filename, "exec", flags=flags, dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    outer_code = next(c for c in compiled.co_consts if isinstance(c, types.CodeType))
    codes = [c for c in outer_code.co_consts if isinstance(c, types.CodeType)]
    inner = next((c for c in codes if c.co_name == node.name), None)
    if inner is not None and sys.version_info >= (3, 11):
        inner = inner.replace(co_qualname=code.co_qualname)  # tracebacks name the method
    return inner


def _same(new: types.CodeType | None, old: types.CodeType) -> bool:
    """Whether ``new`` is ``old`` compiled again (bytecode, names, constants, signature)."""
    if new is None:
        return False
    fields = (
        "co_code",
        "co_names",
        "co_varnames",
        "co_freevars",
        "co_cellvars",
        "co_argcount",
        "co_posonlyargcount",
        "co_kwonlyargcount",
        "co_firstlineno",
    )
    if any(getattr(new, name) != getattr(old, name) for name in fields):
        return False
    if (new.co_flags | _NESTED) != (old.co_flags | _NESTED):  # compiled nested, here
        return False
    if len(new.co_consts) != len(old.co_consts):
        return False
    for a, b in zip(new.co_consts, old.co_consts, strict=True):
        if isinstance(a, types.CodeType) and isinstance(b, types.CodeType):
            if not _same(a, b):
                return False
        elif type(a) is not type(b) or (a != b and a == a):  # NaN is equal to itself here
            return False
    return True
