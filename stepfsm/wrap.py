"""Making a class stateful: ``@stateful`` and ``Stateful``.

Both wrap the class's ``load``/``unload`` (names configurable) and the
methods named in ``guard``, on the class and on every subclass defined later
(a subclass's own overrides are wrapped when the subclass is created). The
wrapped ``load``/``unload`` hand over to the object's
:class:`~stepfsm.machine.Lifecycle`; a guarded method checks a flag on a fast
path and calls the lifecycle only when the step is not loaded.

What cannot work is refused when the class is defined, with a
:class:`~stepfsm.errors.DefinitionError`: a missing method, a ``load`` that is
a coroutine, generator, static or class method, a ``guard`` name that is not
an instance method, an unknown option or policy, instances that cannot be
weakly referenced.

Guard wrappers are generated with the wrapped method's exact signature (no
``*args, **kwargs`` repacking). Their fast path reads one attribute: the
instance's loaded flag (``__stepfsm_loaded__``, set only while the step is
loaded; its class carries ``False``), or, for classes without a ``__dict__``,
``id(self)`` in the registry's table of loaded steps.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
from collections.abc import Callable, Iterable

from . import _budget, _guard, _snapshot, machine
from ._settings import (
    LOADED_FLAG,
    ClassConfig,
    Layer,
    check_policy,
    check_timeout,
    class_config,
    is_stateful,
    patch,
    unpatch,
)
from ._typing import TYPE_CHECKING
from .errors import (
    DefinitionError,
    bad_method,
    bad_option,
    guard_is_transition,
    guard_not_method,
    missing_method,
    not_a_class,
    not_weakrefable,
    same_methods,
    unknown_options,
)

if TYPE_CHECKING:
    from typing import Any, Final, TypeVar, overload

    from ._settings import OnLeak, OnRepeat, OnUnloadedUse

    C = TypeVar("C", bound=type)

__all__ = ["Stateful", "is_stateful", "make_stateful", "stateful", "unmake_stateful"]


#: The options ``@stateful`` and ``Stateful`` accept.
OPTIONS: Final = (
    "load",
    "unload",
    "guard",
    "on_repeat",
    "on_unloaded_use",
    "timeout",
    "on_leak",
    "drain_timeout",
    "cost",
    "idle_timeout",
)


if TYPE_CHECKING:  # the overloads are the type checker's only

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
        on_leak: OnLeak | None = None,
        drain_timeout: float | None = None,
        cost: tuple[str, float] | Callable[[Any], tuple[str, float]] | None = None,
        idle_timeout: float | None = None,
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
    on_leak: OnLeak | None = None,
    drain_timeout: float | None = None,
    cost: tuple[str, float] | Callable[[Any], tuple[str, float]] | None = None,
    idle_timeout: float | None = None,
    **unknown: Any,
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

    Name in ``guard`` every method that needs the loaded resource: stepfsm
    cannot know which ones do, and an unguarded call before ``load()`` fails
    inside your code instead of with a ``NotLoadedError``.

    Args:
        load: the name of the load method (default ``"load"``).
        unload: the name of the unload method (default ``"unload"``).
        guard: methods that raise ``NotLoadedError`` unless the step is loaded.
        on_repeat: this class's policy for ``load()`` on a loaded step.
        on_unloaded_use: this class's policy for guarded calls when not loaded.
        timeout: seconds to wait for another thread's load/unload.
        on_leak: this class's policy when an unload leaves alive what its
            load created (``"warn"``, ``"raise"``, ``"ignore"``).
        drain_timeout: seconds an unload waits for guarded calls still running
            on other threads (default: ``timeout``).
        cost: what each load books in a budget (``stepfsm.budget``):
            ``(pool, amount)``, e.g. ``("gpu:0", 8 * 2**30)``, or a callable
            taking the step and returning that, called before each load.
        idle_timeout: seconds a loaded step nobody holds stays loaded without
            use before stepfsm unloads it (default: never).

    Raises:
        DefinitionError: the class has no such load/unload method, or it is a
            coroutine, generator, static or class method; a ``guard`` name is
            not an instance method; a policy or an option is unknown; or
            instances cannot be weakly referenced.
    """
    options: dict[str, Any] = {
        "load": load,
        "unload": unload,
        "guard": tuple(guard) if not isinstance(guard, str) else (guard,),
        "on_repeat": on_repeat,
        "on_unloaded_use": on_unloaded_use,
        "timeout": timeout,
        "on_leak": on_leak,
        "drain_timeout": drain_timeout,
        "cost": cost,
        "idle_timeout": idle_timeout,
    }

    def apply(target: C) -> C:
        if not isinstance(target, type):
            raise not_a_class(target)
        if unknown:  # as for Stateful's class keywords: name the accepted ones, and the likely one
            raise unknown_options(target, sorted(unknown), OPTIONS)
        make_stateful(target, **options)
        if not issubclass(target, Stateful):
            _install_subclass_hook(target)
        return target

    return apply(cls) if cls is not None else apply


class Stateful:
    """Mixin: inheriting it makes a class and every subclass stateful.

    Options can be given as class keywords on plain classes
    (``class MyStep(Stateful, guard=("generate",)):``); for pydantic models,
    whose class keywords are model configuration, use ``@stateful(...)``.
    """

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        options = {key: kwargs.pop(key) for key in OPTIONS if key in kwargs}
        try:
            super().__init_subclass__(**kwargs)
        except TypeError:
            if not kwargs:
                raise
            raise unknown_options(cls, sorted(kwargs), OPTIONS) from None
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
    on_leak: OnLeak | None = None,
    drain_timeout: float | None = None,
    cost: Any = None,
    idle_timeout: float | None = None,
    before_load: Callable[[Any], None] | None = None,
    layer: Layer | None = None,
) -> ClassConfig:
    """Make ``cls`` stateful (inheriting its parent's settings) and wrap its methods.

    Safe to call again on the same class or on a subclass: methods already
    wrapped are left alone, the class's own overrides are wrapped.
    """
    parent: ClassConfig = class_config(cls) or ClassConfig()
    for value, what in (
        (on_repeat, "on_repeat"),
        (on_unloaded_use, "on_unloaded_use"),
        (on_leak, "on_leak"),
    ):
        if value is not None:
            check_policy(value, what, DefinitionError)
    try:
        checked_timeout = check_timeout(timeout)
        checked_drain = check_timeout(drain_timeout, "drain_timeout")
        checked_cost = _budget.check_cost(cost)
        checked_idle = check_timeout(idle_timeout, "idle_timeout")
    except (TypeError, ValueError) as error:
        raise bad_option(cls, str(error)) from None
    cfg = ClassConfig(
        load=load or parent.load,
        unload=unload or parent.unload,
        guard=tuple(dict.fromkeys((*parent.guard, *guard))),
        on_repeat=on_repeat or parent.on_repeat,
        on_unloaded_use=on_unloaded_use or parent.on_unloaded_use,
        timeout=checked_timeout if checked_timeout is not None else parent.timeout,
        has_dict=cls.__dictoffset__ != 0,
        private=_snapshot.is_pydantic(cls),
        slots=tuple(n for n in copyreg._slotnames(cls) if not n.startswith("__")),  # type: ignore[attr-defined]
        before_load=before_load or parent.before_load,
        layer=layer or parent.layer,
        is_async=_is_async(cls, load or parent.load, unload or parent.unload),
        on_leak=on_leak or parent.on_leak,
        drain_timeout=checked_drain if checked_drain is not None else parent.drain_timeout,
        cost=checked_cost if checked_cost is not None else parent.cost,
        idle_timeout=checked_idle if checked_idle is not None else parent.idle_timeout,
    )
    _check_definition(cls, cfg)
    patch(cls, "__stepfsm__", cfg)
    if cfg.has_dict and cls.__dict__.get(LOADED_FLAG) is not False:
        patch(cls, LOADED_FLAG, False)
    if cfg.is_async:
        _wrap_transition(cls, cfg.load, _through(machine.acall_load))
        _wrap_transition(cls, cfg.unload, _through(machine.acall_unload))
    else:
        _wrap_transition(cls, cfg.load, machine.load_method)
        _wrap_transition(cls, cfg.unload, machine.unload_method)
    for name in cfg.guard:
        guarded = _guard.make_guard(getattr(cls, name), name, flag=cfg.has_dict)
        if guarded is not None:
            patch(cls, name, guarded)
    _snapshot.install_copy_hooks(cls)
    return cfg


def unmake_stateful(cls: type) -> None:
    """Undo :func:`make_stateful` (and the hooks of ``@stateful``) on ``cls`` alone.

    Every attribute stepfsm set on the class gets its previous value back (or
    is removed); subclasses are not touched. Used by integrations' ``uninstall()``.
    """
    unpatch(cls)


def _original(cls: type, name: str) -> Any:
    """``cls.name`` as the user wrote it (unwrapped), or ``None``."""
    fn = getattr(cls, name, None)
    return getattr(fn, "__stepfsm_original__", fn)


def _is_async(cls: type, load: str, unload: str) -> bool:
    """Whether both transition methods are ``async def`` (an async step)."""
    return all(inspect.iscoroutinefunction(_original(cls, name)) for name in (load, unload))


def _kind(cls: type, name: str, is_async: bool) -> str | None:
    """What kind of callable ``cls.name`` is, if it cannot be a load/unload method.

    ``coroutine`` means an ``async def`` in a step whose other method is not one.
    """
    raw = inspect.getattr_static(cls, name, None)
    if isinstance(raw, staticmethod):
        return "staticmethod"
    if isinstance(raw, classmethod):
        return "classmethod"
    fn = _original(cls, name)
    if inspect.iscoroutinefunction(fn) and not is_async:
        return "coroutine"
    if inspect.isasyncgenfunction(fn):
        return "async generator"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return None


def _check_definition(cls: type, cfg: ClassConfig) -> None:
    if cls.__weakrefoffset__ == 0:
        import dataclasses  # lazily: only this error needs it

        raise not_weakrefable(cls, dataclass_slots=dataclasses.is_dataclass(cls))
    if cfg.load == cfg.unload:
        raise same_methods(cls, cfg.load)
    for role, name, other in (("load", cfg.load, cfg.unload), ("unload", cfg.unload, cfg.load)):
        if not callable(getattr(cls, name, None)):
            raise missing_method(cls, name, role, _did_you_mean_method(cls, name, other))
        kind = _kind(cls, name, cfg.is_async)
        if kind is not None:
            raise bad_method(cls, name, role, kind)
    for name in cfg.guard:
        if name in (cfg.load, cfg.unload):
            raise guard_is_transition(cls, name)
        raw = inspect.getattr_static(cls, name, None)
        if not callable(getattr(cls, name, None)) or isinstance(raw, (staticmethod, classmethod)):
            raise guard_not_method(cls, name, _did_you_mean(cls, name))


def _did_you_mean(cls: type, name: str) -> str:
    candidates = [n for n in dir(cls) if not n.startswith("__") and callable(getattr(cls, n, None))]
    import difflib  # lazily: only definition errors need it

    close = difflib.get_close_matches(name, candidates, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _did_you_mean_method(cls: type, name: str, other: str) -> str:
    """A hint for a missing load (or unload) method ``name``: only a name that could be one.

    A candidate starts with the word, after leading underscores and an optional ``a``
    (``_load``, ``load_model``, ``aload``), or is the word mistyped (``laod``: as long
    within one letter, and close); never the other method, nor a name with the other
    method's word in it unless ours contains that word (``_unload`` is no load, but
    ``unload`` contains ``load``). So ``download`` and ``reload`` are no load methods.
    See docs/decisions.md, "The missing-method hint".
    """
    import difflib  # lazily: only definition errors need it

    word, other_word = name.lstrip("_").lower(), other.lstrip("_").lower()

    def closeness(candidate: str) -> float:
        core = candidate.lstrip("_").lower()
        if candidate == other or (other_word in core and other_word not in word):
            return 0.0
        ratio = difflib.SequenceMatcher(None, word, core).ratio()
        if core.startswith((word, "a" + word)):
            return 1.0 + ratio  # a variant of the word ranks above any typo
        return ratio if abs(len(core) - len(word)) <= 1 and ratio >= 0.75 else 0.0

    scored = [
        (closeness(n), n)
        for n in dir(cls)
        if not n.startswith("__") and callable(getattr(cls, n, None))
    ]
    best = max((pair for pair in scored if pair[0] > 0), default=None, key=lambda p: p[0])
    return f" Did you mean {best[1]!r}?" if best else ""


def _through(
    call: Callable[[object, Callable[..., Any], tuple[Any, ...], Any], Any],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A maker of wrapped methods whose calls go through ``call(self, fn, args, kwargs)``.

    The methods are coroutine functions when ``call`` is one (an async step's load
    and unload stay ``async def`` for ``inspect`` and for frameworks that ask).
    """

    def make(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(call):

            async def amethod(self: Any, *args: Any, **kwargs: Any) -> Any:
                return await call(self, fn, args, kwargs)

            return amethod

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return call(self, fn, args, kwargs)

        return method

    return make


def _wrap_transition(
    cls: type,
    name: str,
    make: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Wrap the class's own load (or unload) method ``name`` with ``make(method)``."""
    fn: Callable[..., Any] = getattr(cls, name)
    if hasattr(fn, "__stepfsm_original__"):
        return
    method = make(fn)
    functools.update_wrapper(method, fn)
    method.__stepfsm_original__ = fn  # type: ignore[attr-defined]
    patch(cls, name, method)


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

    patch(cls, "__init_subclass__", classmethod(__init_subclass__))
    patch(cls, "__stepfsm_hook__", True)


def install_subclass_hook(cls: type) -> None:
    """Make every later subclass of ``cls`` stateful (integrations use it on their bases)."""
    _install_subclass_hook(cls)
