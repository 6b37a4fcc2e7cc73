"""What a load set: pre-load values, and the copies and pickles that carry them.

Copies carry configuration, not resources (``docs/design.md``, "Processes,
pickling, garbage"). When a load starts, :func:`begin` records the step's
attributes (its ``__dict__``, its set ``__slots__`` and, for pydantic models,
its private attributes); when it ends, :func:`finish` keeps only what the load
set or replaced, with the value each had before. A copy or pickle of the step
(:func:`preload_state`, used by the hooks :func:`install_copy_hooks` puts on
the class) then gets those attributes back at their pre-load values; an
attribute the load added is left out; one the user changed after the load is
kept. While a load runs, copies compare with the recorded values directly.

In-place mutation during a load (``self.items.append(...)``) is not tracked:
only what the load *assigned* is.

Records are keyed by ``id(step)`` and dropped when the step unloads, dies
(the registry tells :func:`drop`) or a process forks.

The same ``__reduce_ex__`` hooks hand each pickle (and reduce-based copy) to the
function :func:`on_reduce` registered (``stepfsm._travel``): it wraps the
rebuild so that the step's settings travel with it (``docs/design.md``, section 13).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from operator import is_

from ._settings import LOADED_FLAG, ClassConfig, class_config, patch
from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Final

    Values = dict[str, Any]

    #: ``fn(step, rebuild, args) -> (rebuild, args)``: what every reduce of a step goes through.
    Reducer = Callable[[Any, Any, Any], tuple[Any, Any]]

__all__ = [
    "attributes",
    "begin",
    "changes",
    "clear",
    "drop",
    "finish",
    "install_copy_hooks",
    "on_reduce",
    "Record",
    "preload_state",
    "record_of",
    "strip",
]

_MISSING: Final[Any] = object()


class Record:
    """What one step's last load set (kept only when it set something).

    ``before``/``after`` name each attribute the load set, with its pre-load
    and its loaded value (and the same for pydantic private attributes).
    """

    __slots__ = ("after", "after_private", "before", "before_private", "owner", "sizes")

    def __init__(
        self,
        owner: weakref.ref[Any],
        before: Values,
        after: Values,
        before_private: Values,
        after_private: Values,
    ) -> None:
        #: the lifecycle's weak reference to the step: a record whose step died is never
        #: applied to a new object that reuses its id (its weakref callback may have
        #: been interrupted), nor one an earlier lifecycle of that id left
        self.owner = owner
        self.before = before
        self.after = after
        self.before_private = before_private
        self.after_private = after_private
        #: what the release check estimated when the load ended (``_release.Sizes``)
        self.sizes: Any = None


#: the attributes of the steps whose load is running: ``id -> (ref, pre, pre_private)``
_STARTED: Final[dict[int, tuple[weakref.ref[Any], Values | None, Values | None]]] = {}
#: what the last load of each loaded step set, for the steps whose load set anything
_RECORDS: Final[dict[int, Record]] = {}
_NONE: Final[Values] = {}


def attributes(owner: Any, cfg: ClassConfig) -> Values:
    """The instance's attributes: its ``__dict__`` plus its set ``__slots__``.

    stepfsm's own loaded flag is never among them.
    """
    values = dict(owner.__dict__) if cfg.has_dict else {}
    values.pop(LOADED_FLAG, None)
    for name in cfg.slots:
        value = getattr(owner, name, _MISSING)
        if value is not _MISSING:
            values[name] = value
    return values


def changes(old: Values, new: Values) -> tuple[Values, Values]:
    """The keys of ``new`` whose value is not (identically) the one in ``old``.

    Returns ``(before, after)``: each changed key with its old value
    (``_MISSING`` if it is new) and its new value.
    """
    if (
        len(old) == len(new)
        and all(map(is_, old, new))
        and all(map(is_, old.values(), new.values()))
    ):
        return _NONE, _NONE  # the same keys in the same order, holding the same objects
    before: Values = {}
    after: Values = {}
    for key, value in new.items():
        previous = old.get(key, _MISSING)
        if previous is not value:
            before[key] = previous
            after[key] = value
    return before, after


def begin(ref: weakref.ref[Any], owner: Any, cfg: ClassConfig) -> None:
    """A load of ``owner`` (``ref``: its lifecycle's weak reference to it) is about to run:
    record the values it starts from."""
    if cfg.slots or cfg.private:
        pre = attributes(owner, cfg) if cfg.has_dict or cfg.slots else None
        pre_private = dict(owner.__pydantic_private__ or ()) if cfg.private else None
    elif cfg.has_dict:  # the common case, inline: this runs on every load
        pre = owner.__dict__.copy()
        pre.pop(LOADED_FLAG, None)
        pre_private = None
    else:
        return
    _STARTED[id(owner)] = (ref, pre, pre_private)


def finish(ref: weakref.ref[Any], owner: Any, cfg: ClassConfig) -> None:
    """The load of ``owner`` ended (returned or raised): keep only what it set."""
    key = id(owner)
    started = _STARTED.pop(key, None)
    if started is None or started[0] is not ref:
        return
    _ref, pre, pre_private = started
    if pre_private is None and not cfg.slots and pre is not None:  # the common case, inline:
        now = owner.__dict__  # C calls only below: no other thread runs while they compare
        if (
            len(pre) == len(now)
            and all(map(is_, pre, now))
            and all(map(is_, pre.values(), now.values()))
        ):
            _RECORDS.pop(key, None)  # the load set nothing
            return
    before = after = before_private = after_private = _NONE
    if pre is not None:
        before, after = changes(pre, attributes(owner, cfg))
    if pre_private is not None:
        current = getattr(owner, "__pydantic_private__", None) or {}
        before_private, after_private = changes(pre_private, current)
    if before or before_private:
        _RECORDS[key] = Record(ref, before, after, before_private, after_private)
    else:
        _RECORDS.pop(key, None)


def record_of(key: int) -> Record | None:
    """What the last load of the step with ``id`` ``key`` set; ``None`` if nothing (or unloaded)."""
    return _RECORDS.get(key)


def drop(key: int) -> None:
    """Forget what the load of the step with ``id`` ``key`` set (it unloaded or died)."""
    _RECORDS.pop(key, None)
    _STARTED.pop(key, None)


def clear() -> None:
    """Forget every record (in a forked child)."""
    _RECORDS.clear()
    _STARTED.clear()


def strip(state: Values) -> Values:
    """``state`` without stepfsm's loaded flag."""
    if LOADED_FLAG in state:
        state = dict(state)
        del state[LOADED_FLAG]
    return state


def preload_state(obj: object, state: Values, private: bool = False) -> Values:
    """``state`` with the attributes that ``obj``'s load set put back to pre-load values.

    ``state`` is an instance ``__dict__`` (or a pydantic private dict when
    ``private``) as it would go into a copy or pickle of ``obj``.
    """
    if not private:
        state = strip(state)
    started = _STARTED.get(id(obj))
    if started is not None and started[0]() is obj:  # the load is running: compare with
        pre = started[2] if private else started[1]  # where it started
        if pre is None:
            return state
        before, after = changes(pre, state)
    else:
        record = _RECORDS.get(id(obj))
        if record is None or record.owner() is not obj:
            return state
        if private:
            before, after = record.before_private, record.after_private
        else:
            before, after = record.before, record.after
    if not before:
        return state
    result = dict(state)
    for key, loaded_value in after.items():
        if result.get(key, _MISSING) is not loaded_value:
            continue  # changed after the load: the user's value wins
        old = before[key]
        if old is _MISSING:
            result.pop(key, None)
        else:
            result[key] = old
    return result


# ------------------------------------------------------------------ copy hooks

_reducer: Reducer | None = None


def on_reduce(fn: Reducer) -> None:
    """Let ``fn`` replace the rebuild callable and arguments of every reduce of a step."""
    global _reducer
    _reducer = fn


def _same(obj: Any) -> Any:
    return obj


def _carried(original: Any, copy: Any) -> Any:
    """``copy`` (a fresh copy of ``original``) given what a pickle of ``original`` would carry."""
    reducer = _reducer
    if reducer is None:
        return copy
    rebuild, args = reducer(original, _same, (copy,))
    return rebuild(*args)


def _travelling(obj: Any, rv: Any) -> Any:
    """A ``__reduce_ex__`` result ``rv`` with its rebuild wrapped by the :func:`on_reduce` hook."""
    reducer = _reducer
    if reducer is None or not isinstance(rv, tuple) or len(rv) < 2:
        return rv
    return (*reducer(obj, rv[0], rv[1]), *rv[2:])


def is_pydantic(cls: type) -> bool:
    """Whether ``cls`` is a pydantic v2 model class."""
    return hasattr(cls, "__pydantic_fields__") and hasattr(cls, "model_dump")


def install_copy_hooks(cls: type) -> None:
    """Make copies and pickles of ``cls``'s instances carry pre-load values.

    Plain classes get a ``__reduce_ex__`` (which ``copy``, ``deepcopy`` and
    ``pickle`` all use) and, where the class defines its own, wrapped
    ``__copy__``/``__deepcopy__``; pydantic models get ``__copy__``,
    ``__deepcopy__`` and ``__getstate__``. Installed once per class tree.
    """
    if any("__stepfsm_copy__" in vars(base) for base in cls.__mro__):
        _wrap_own_copiers(cls)
        return
    patch(cls, "__stepfsm_copy__", True)
    if is_pydantic(cls):
        _install_pydantic_copy_hooks(cls)
        return
    original: Callable[[Any, Any], Any] = cls.__reduce_ex__  # type: ignore[assignment]

    def __reduce_ex__(self: Any, protocol: Any) -> Any:
        rv = original(self, protocol)
        if not isinstance(rv, tuple) or len(rv) < 3:
            return _travelling(self, rv)
        state = rv[2]
        if isinstance(state, dict):
            state = preload_state(self, state)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            # (__dict__ or None, {slot: value}): the protocol-2 state of a slotted class
            attrs = state[0]
            state = (
                preload_state(self, attrs) if isinstance(attrs, dict) else attrs,
                preload_state(self, state[1]),
            )
        else:
            return _travelling(self, rv)
        return _travelling(self, (*rv[:2], state, *rv[3:]))

    patch(cls, "__reduce_ex__", __reduce_ex__)
    _wrap_own_copiers(cls)


def _wrap_own_copiers(cls: type) -> None:
    """Wrap a plain class's own ``__copy__``/``__deepcopy__``: the copy loses the loaded flag."""
    if is_pydantic(cls):
        return
    for name in ("__copy__", "__deepcopy__"):
        own = cls.__dict__.get(name)
        if own is None or getattr(own, "__stepfsm_original__", None) is not None:
            continue
        patch(cls, name, _unflagging(own))


def _unflagging(fn: Callable[..., Any]) -> Callable[..., Any]:
    def copier(self: Any, *args: Any) -> Any:
        result = fn(self, *args)
        attrs = getattr(result, "__dict__", None)
        if result is not self and isinstance(attrs, dict):
            attrs.pop(LOADED_FLAG, None)
        return result

    copier.__stepfsm_original__ = fn  # type: ignore[attr-defined]
    copier.__name__ = getattr(fn, "__name__", "copier")
    return copier


def _install_pydantic_copy_hooks(cls: type) -> None:
    copy_ = cls.__copy__  # type: ignore[attr-defined]
    deepcopy_ = cls.__deepcopy__  # type: ignore[attr-defined]
    getstate_ = cls.__getstate__  # type: ignore[attr-defined]
    reduce_: Callable[[Any, Any], Any] = cls.__reduce_ex__  # type: ignore[assignment]

    def view(self: Any) -> Any:
        """A shallow stand-in for ``self`` whose attributes have their pre-load values."""
        attrs = self.__dict__
        record = _RECORDS.get(id(self))
        if LOADED_FLAG not in attrs and (record is None or record.owner() is not self):
            return self
        stand_in = object.__new__(type(self))
        setattr_ = object.__setattr__
        setattr_(stand_in, "__dict__", preload_state(self, attrs))
        setattr_(stand_in, "__pydantic_extra__", self.__pydantic_extra__)
        setattr_(stand_in, "__pydantic_fields_set__", self.__pydantic_fields_set__)
        private = self.__pydantic_private__
        if private is not None:
            private = preload_state(self, private, private=True)
        setattr_(stand_in, "__pydantic_private__", private)
        return stand_in

    def __copy__(self: Any) -> Any:
        return _carried(self, copy_(view(self)))

    def __deepcopy__(self: Any, memo: dict[int, Any] | None = None) -> Any:
        return _carried(self, deepcopy_(view(self), memo))

    def __getstate__(self: Any) -> Any:
        return getstate_(view(self))

    def __reduce_ex__(self: Any, protocol: Any) -> Any:  # pickles (copies use the above)
        return _travelling(self, reduce_(self, protocol))

    patch(cls, "__copy__", __copy__)
    patch(cls, "__deepcopy__", __deepcopy__)
    patch(cls, "__getstate__", __getstate__)
    patch(cls, "__reduce_ex__", __reduce_ex__)


def preload_view(obj: Any) -> Any:
    """A shallow stand-in for ``obj`` with its pre-load attributes (for comparing configurations).

    ``obj`` itself when its load set nothing or its class has no ``__dict__``.
    """
    cfg = class_config(type(obj))
    record = _RECORDS.get(id(obj))
    if cfg is None or not cfg.has_dict or record is None or record.owner() is not obj:
        return obj
    stand_in = object.__new__(type(obj))
    object.__setattr__(stand_in, "__dict__", preload_state(obj, obj.__dict__))
    return stand_in
