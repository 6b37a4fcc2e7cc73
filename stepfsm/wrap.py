"""Making a class stateful: ``@stateful`` and ``Stateful``.

Both wrap the class's ``load``/``unload`` (names configurable) and the
methods named in ``guard``, on the class and on every subclass defined later
(a subclass's own overrides are wrapped when the subclass is created). The
wrapped ``load``/``unload`` hand over to the object's
:class:`~stepfsm.machine.Lifecycle`; the guarded methods check the state on a
fast path and call the lifecycle only when the step is not loaded.

Guard wrappers are generated with the wrapped method's exact signature (no
``*args, **kwargs`` repacking), which is what keeps a guarded call within a
small factor of a plain one. Copies and pickles of a loaded object carry the
pre-load values of what the load set (DESIGN.md §5): ``__reduce_ex__`` for
plain classes, ``__copy__``/``__deepcopy__``/``__getstate__`` for pydantic models.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

from . import registry
from ._settings import Layer, OnRepeat, OnUnloadedUse, check_policy, check_timeout
from .errors import DefinitionError
from .machine import Lifecycle, lifecycle
from .states import State

__all__ = ["ClassConfig", "Stateful", "is_stateful", "make_stateful", "stateful", "unmake_stateful"]

C = TypeVar("C", bound=type)

_MISSING: Final[Any] = object()


@dataclass(frozen=True)
class ClassConfig:
    """The stateful settings of a class, inherited by its subclasses."""

    load: str = "load"
    unload: str = "unload"
    guard: tuple[str, ...] = ()
    on_repeat: OnRepeat | None = None
    on_unloaded_use: OnUnloadedUse | None = None
    timeout: float | None = None
    #: instances have a ``__dict__`` / are pydantic models (how copies are patched)
    has_dict: bool = True
    private: bool = False
    slots: tuple[str, ...] = ()
    #: run just before the user's load code (integrations use it; see distilabel)
    before_load: Callable[[Any], None] | None = None
    #: an integration's policies, consulted after the class's own and before the global ones
    layer: Layer | None = None


_OPTIONS: Final = ("load", "unload", "guard", "on_repeat", "on_unloaded_use", "timeout")


def is_stateful(obj: object) -> bool:
    """Whether ``obj`` (a class or an instance) has a stepfsm lifecycle."""
    cls = obj if isinstance(obj, type) else type(obj)
    return getattr(cls, "__stepfsm__", None) is not None


@overload
def stateful(cls: C, /) -> C: ...


@overload
def stateful(
    *,
    load: str | None = None,
    unload: str | None = None,
    guard: Iterable[str] = (),
    on_repeat: OnRepeat | None = None,
    on_unloaded_use: OnUnloadedUse | None = None,
    timeout: float | None = None,
) -> Callable[[C], C]: ...


def stateful(
    cls: C | None = None,
    /,
    *,
    load: str | None = None,
    unload: str | None = None,
    guard: Iterable[str] = (),
    on_repeat: OnRepeat | None = None,
    on_unloaded_use: OnUnloadedUse | None = None,
    timeout: float | None = None,
) -> C | Callable[[C], C]:
    """Give a class (and every subclass) an explicit, thread-safe lifecycle.

    Example::

        @stepfsm.stateful(guard=("generate",))
        class MyLLM:
            def load(self):
                self.model = load_weights()

            def unload(self):
                self.model = None

            def generate(self, prompt):
                return self.model(prompt)

    Args:
        load: the name of the load method (default ``"load"``).
        unload: the name of the unload method (default ``"unload"``).
        guard: methods that raise ``NotLoadedError`` unless the step is loaded.
        on_repeat: this class's policy for ``load()`` on a loaded step.
        on_unloaded_use: this class's policy for guarded calls when not loaded.
        timeout: seconds to wait for another thread's load/unload.

    Raises:
        DefinitionError: the class has no such load/unload method, a ``guard``
            name is not a method, a policy is unknown, or instances cannot be
            weakly referenced.
    """
    options: dict[str, Any] = {
        "load": load,
        "unload": unload,
        "guard": tuple(guard) if not isinstance(guard, str) else (guard,),
        "on_repeat": on_repeat,
        "on_unloaded_use": on_unloaded_use,
        "timeout": timeout,
    }

    def apply(target: C) -> C:
        if not isinstance(target, type):
            raise DefinitionError(
                f"@stateful decorates a class, not {type(target).__name__} {target!r}; "
                "put it above a `class ...:` statement."
            )
        make_stateful(target, **options)
        if not issubclass(target, Stateful):
            _install_subclass_hook(target)
        return target

    return apply(cls) if cls is not None else apply


class Stateful:
    """Mixin: inheriting it makes a class and every subclass stateful.

    Options can be given as class keywords on plain classes
    (``class MyStep(Stateful, on_repeat="warn"):``); for pydantic models,
    whose class keywords are model configuration, use ``@stateful(...)``.
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in _OPTIONS if key in kwargs}
        super().__init_subclass__(**kwargs)
        if "guard" in options:
            guard = options["guard"]
            options["guard"] = (guard,) if isinstance(guard, str) else tuple(guard)
        make_stateful(cls, **options)


def make_stateful(
    cls: type,
    *,
    load: str | None = None,
    unload: str | None = None,
    guard: tuple[str, ...] = (),
    on_repeat: OnRepeat | None = None,
    on_unloaded_use: OnUnloadedUse | None = None,
    timeout: float | None = None,
    before_load: Callable[[Any], None] | None = None,
    layer: Layer | None = None,
) -> ClassConfig:
    """Make ``cls`` stateful (inheriting its parent's settings) and wrap its methods.

    Safe to call again on the same class or on a subclass: methods already
    wrapped are left alone, the class's own overrides are wrapped.
    """
    parent: ClassConfig = getattr(cls, "__stepfsm__", None) or ClassConfig()
    for value, what in ((on_repeat, "on_repeat"), (on_unloaded_use, "on_unloaded_use")):
        if value is not None:
            check_policy(value, what, DefinitionError)
    try:
        checked_timeout = check_timeout(timeout)
    except (TypeError, ValueError) as error:
        raise DefinitionError(f"{cls.__qualname__}: {error}") from None
    cfg = ClassConfig(
        load=load or parent.load,
        unload=unload or parent.unload,
        guard=tuple(dict.fromkeys((*parent.guard, *guard))),
        on_repeat=on_repeat or parent.on_repeat,
        on_unloaded_use=on_unloaded_use or parent.on_unloaded_use,
        timeout=checked_timeout if checked_timeout is not None else parent.timeout,
        has_dict=cls.__dictoffset__ != 0,
        private=_is_pydantic(cls),
        slots=tuple(n for n in copyreg._slotnames(cls) if not n.startswith("__")),  # type: ignore[attr-defined]
        before_load=before_load or parent.before_load,
        layer=layer or parent.layer,
    )
    _check_definition(cls, cfg)
    _wrap(cls, "__stepfsm__", cfg)
    _wrap(cls, cfg.load, _wrap_transition(getattr(cls, cfg.load), Lifecycle.call_load))
    _wrap(cls, cfg.unload, _wrap_transition(getattr(cls, cfg.unload), Lifecycle.call_unload))
    for name in cfg.guard:
        _wrap(cls, name, make_guard(getattr(cls, name), name))
    _install_copy_hooks(cls)
    return cfg


def _check_definition(cls: type, cfg: ClassConfig) -> None:
    if cls.__weakrefoffset__ == 0:
        raise DefinitionError(
            f"{cls.__qualname__} cannot be stateful: its instances cannot be weakly "
            "referenced (it defines __slots__ without '__weakref__'). Add '__weakref__' "
            "to its __slots__."
        )
    for role, name in (("load", cfg.load), ("unload", cfg.unload)):
        if not callable(getattr(cls, name, None)):
            hint = _did_you_mean(cls, name)
            raise DefinitionError(
                f"{cls.__qualname__} has no {name}() method, so it cannot be stateful. "
                f"Define {name}(self) to {'acquire' if role == 'load' else 'release'} the "
                f"resource, or pass {role}='<method name>' to @stateful.{hint}"
            )
    if cfg.load == cfg.unload:
        raise DefinitionError(
            f"{cls.__qualname__}: load and unload are both {cfg.load!r}; they must be "
            "two different methods."
        )
    for name in cfg.guard:
        if name in (cfg.load, cfg.unload):
            raise DefinitionError(
                f"{cls.__qualname__}: guard names {name!r}, which is the load/unload method "
                "itself; guard only the methods that use the loaded resource."
            )
        if not callable(getattr(cls, name, None)):
            raise DefinitionError(
                f"{cls.__qualname__}: guard names {name!r}, but that is not a method of the "
                "class. Pass the names of methods that need the step loaded."
                + _did_you_mean(cls, name)
            )


def unmake_stateful(cls: type) -> None:
    """Undo :func:`make_stateful` (and the hooks of ``@stateful``) on ``cls`` alone.

    Every attribute stepfsm set on the class gets its previous value back (or
    is removed); subclasses are not touched. Used by integrations' ``uninstall()``.
    """
    patched = cls.__dict__.get("__stepfsm_patched__")
    if not patched:
        return
    for name, previous in patched.items():
        if previous is _MISSING:
            if name in cls.__dict__:
                type.__delattr__(cls, name)
        else:
            type.__setattr__(cls, name, previous)
    type.__delattr__(cls, "__stepfsm_patched__")


def _did_you_mean(cls: type, name: str) -> str:
    candidates = [n for n in dir(cls) if not n.startswith("__") and callable(getattr(cls, n, None))]
    import difflib  # lazily: only definition errors need it

    close = difflib.get_close_matches(name, candidates, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _wrap(cls: type, name: str, wrapper: object) -> None:
    """Set ``wrapper`` on ``cls`` and remember what was there (for uninstalling)."""
    if wrapper is None:
        return
    patched = cls.__dict__.get("__stepfsm_patched__")
    if patched is None:
        patched = {}
        type.__setattr__(cls, "__stepfsm_patched__", patched)
    patched.setdefault(name, cls.__dict__.get(name, _MISSING))
    type.__setattr__(cls, name, wrapper)


def _wrap_transition(
    fn: Callable[..., Any], call: Callable[[Lifecycle, Callable[..., Any], Any, Any], Any]
) -> Callable[..., Any] | None:
    """Wrap a class's own load (or unload) method ``fn``: calls go through ``call``.

    ``call`` is ``Lifecycle.call_load`` or ``Lifecycle.call_unload``.
    """
    if hasattr(fn, "__stepfsm_original__"):
        return None

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return call(lifecycle(self), fn, args, kwargs)

    functools.update_wrapper(method, fn)
    method.__stepfsm_original__ = fn  # type: ignore[attr-defined]
    return method


def _slow(obj: object, operation: str) -> None:
    lifecycle(obj).require_loaded(operation)


_P = inspect.Parameter
# ``registry.LOADED`` holds exactly the ids of the loaded steps, so the fast path
# is one ``id()`` and one dict membership test.
_TEMPLATE: Final = """\
{kw}def {name}({params}):
    if _stepfsm_id({self}) not in _stepfsm_loaded:
        _stepfsm_slow({self}, {operation!r})
    return {aw}_stepfsm_fn({call})
"""
# A generator method stays a generator function: the check runs at the first next().
_GENERATOR_TEMPLATE: Final = """\
def {name}({params}):
    if _stepfsm_id({self}) not in _stepfsm_loaded:
        _stepfsm_slow({self}, {operation!r})
    return (yield from _stepfsm_fn({call}))
"""


def make_guard(fn: Callable[..., Any], operation: str) -> Callable[..., Any] | None:
    """Return ``fn`` wrapped so it raises ``NotLoadedError`` unless its step is loaded.

    The wrapper has ``fn``'s exact signature (generated code), so arguments
    are passed on without repacking. ``None`` if ``fn`` is already guarded.
    """
    if hasattr(fn, "__stepfsm_original__"):
        return None
    namespace: dict[str, Any] = {
        "_stepfsm_id": id,
        "_stepfsm_loaded": registry.LOADED,
        "_stepfsm_slow": _slow,
        "_stepfsm_fn": fn,
    }
    source = _guard_source(fn, operation, namespace)
    exec(compile(source, f"<stepfsm guard {operation}>", "exec"), namespace)
    guard: Callable[..., Any] = namespace[operation if operation.isidentifier() else "guarded"]
    functools.update_wrapper(guard, fn)
    guard.__stepfsm_original__ = fn  # type: ignore[attr-defined]
    return guard


def _guard_source(fn: Callable[..., Any], operation: str, namespace: dict[str, Any]) -> str:
    name = operation if operation.isidentifier() else "guarded"
    is_async = inspect.iscoroutinefunction(fn)
    template = _GENERATOR_TEMPLATE if inspect.isgeneratorfunction(fn) else _TEMPLATE
    generic = template.format(
        kw="async " if is_async else "",
        name=name,
        params="self, /, *args, **kwargs",
        self="self",
        operation=operation,
        aw="await " if is_async else "",
        call="self, *args, **kwargs",
    )
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
    return template.format(
        kw="async " if is_async else "",
        name=name,
        params=", ".join(declared),
        self=params[0].name,
        operation=operation,
        aw="await " if is_async else "",
        call=", ".join(passed),
    )


def _install_subclass_hook(cls: type) -> None:
    """Make every later subclass of ``cls`` stateful too (wrapping its own overrides)."""
    if any("__stepfsm_hook__" in vars(base) for base in cls.__mro__):
        return  # an ancestor's hook already covers cls's subclasses
    previous = cls.__dict__.get("__init_subclass__")

    def __init_subclass__(sub: type, /, **kwargs: Any) -> None:
        if previous is not None:
            previous.__get__(None, sub)(**kwargs)
        else:
            super(cls, sub).__init_subclass__(**kwargs)  # type: ignore[arg-type]
        make_stateful(sub)

    _wrap(cls, "__init_subclass__", classmethod(__init_subclass__))
    _wrap(cls, "__stepfsm_hook__", True)


# ----------------------------------------------------------------- copies


def _is_pydantic(cls: type) -> bool:
    return hasattr(cls, "__pydantic_fields__") and hasattr(cls, "model_dump")


def _loaded_lifecycle(obj: object) -> Lifecycle | None:
    lc = registry.LIVE.get(id(obj))
    if lc is None or lc._state is State.UNLOADED or lc._owner() is not obj:
        return None
    if lc._diff is None and not (lc._pre is not None and lc._state is State.LOADING):
        return None
    return lc


def _install_copy_hooks(cls: type) -> None:
    if any("__stepfsm_copy__" in vars(base) for base in cls.__mro__):
        return
    _wrap(cls, "__stepfsm_copy__", True)
    if _is_pydantic(cls):
        _install_pydantic_copy_hooks(cls)
        return
    original: Callable[[Any, Any], Any] = cls.__reduce_ex__  # type: ignore[assignment]

    def __reduce_ex__(self: Any, protocol: Any) -> Any:
        rv = original(self, protocol)
        lc = _loaded_lifecycle(self)
        if lc is None or not isinstance(rv, tuple) or len(rv) < 3:
            return rv
        state = rv[2]
        if isinstance(state, dict):
            state = lc.preload_state(state)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            # (__dict__ or None, {slot: value}): the protocol-2 state of a slotted class
            attrs = state[0]
            state = (
                lc.preload_state(attrs) if isinstance(attrs, dict) else attrs,
                lc.preload_state(state[1]),
            )
        else:
            return rv
        return (*rv[:2], state, *rv[3:])

    _wrap(cls, "__reduce_ex__", __reduce_ex__)


def _install_pydantic_copy_hooks(cls: type) -> None:
    copy_ = cls.__copy__  # type: ignore[attr-defined]
    deepcopy_ = cls.__deepcopy__  # type: ignore[attr-defined]
    getstate_ = cls.__getstate__  # type: ignore[attr-defined]

    def view(self: Any) -> Any:
        """A shallow stand-in for ``self`` whose attributes have their pre-load values."""
        lc = _loaded_lifecycle(self)
        if lc is None:
            return self
        stand_in = object.__new__(type(self))
        setattr_ = object.__setattr__
        setattr_(stand_in, "__dict__", lc.preload_state(self.__dict__))
        setattr_(stand_in, "__pydantic_extra__", self.__pydantic_extra__)
        setattr_(stand_in, "__pydantic_fields_set__", self.__pydantic_fields_set__)
        private = self.__pydantic_private__
        if private is not None:
            private = lc.preload_state(private, private=True)
        setattr_(stand_in, "__pydantic_private__", private)
        return stand_in

    def __copy__(self: Any) -> Any:
        return copy_(view(self))

    def __deepcopy__(self: Any, memo: dict[int, Any] | None = None) -> Any:
        return deepcopy_(view(self), memo)

    def __getstate__(self: Any) -> Any:
        return getstate_(view(self))

    _wrap(cls, "__copy__", __copy__)
    _wrap(cls, "__deepcopy__", __deepcopy__)
    _wrap(cls, "__getstate__", __getstate__)
