"""Verified release: what an unload should free, whether it was, and who still holds it.

``docs/design.md``, section 11. Before a step's unload code runs,
:func:`watch` takes weak references to what its load set (the attributes
``_snapshot`` recorded, and the weakly referenceable values directly inside a
list, tuple, set or dict it set) and estimates their sizes. After the unload,
:func:`check` looks at those references: when reference counting freed
everything (the usual case) that is all it costs. Otherwise it runs one
``gc.collect()``, looks again, and for what survived searches the objects that
still refer to it, backwards with ``gc.get_referrers`` (one heap scan per
level, every leaked object at once), until it reaches a root it can name the
way a user would: ``Out[12]``, ``_``, ``__main__.model``,
``sys.last_traceback``, a closure of ``f``, a frame's local. The search is
bounded in depth and time.

A :class:`ReleaseReport` describes objects by name, type and size and never
holds them, so a report cannot pin the leak it reports.

Sizes (:func:`estimate`) are estimates: torch tensors and modules (parameters
and buffers, each storage once), numpy arrays (each base array once),
``bytes``/``bytearray``/``memoryview``, and those found in an object's
attributes and containers up to depth 3. torch and numpy are never imported
here: only objects of modules the process has imported already are sized.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator

from . import _snapshot
from ._typing import TYPE_CHECKING, NamedTuple
from .errors import format_bytes

if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "DEFERRED",
    "ReleaseReport",
    "ReleasedObject",
    "check",
    "collect",
    "collecting",
    "COLLECTOR",
    "cuda_allocated",
    "estimate",
    "all_freed",
    "held_bytes",
    "referrer_paths",
    "Watch",
    "watch",
]

#: How deep the size estimate looks into attributes and containers.
SIZE_DEPTH: Final = 3
#: At most this many objects are visited by one size estimate.
SIZE_VISITS: Final = 20_000
#: Values of a container the load set that are watched one by one (the first ones).
CONTAINER_ITEMS: Final = 1_000
#: The referrer search: levels of references, seconds, paths kept per object.
SEARCH_DEPTH: Final = 8
SEARCH_SECONDS: Final = 0.5
SEARCH_PATHS: Final = 4
_FRONTIER: Final = 500  # objects searched per level


class ReleasedObject(NamedTuple):
    """One object an unload should have freed, described (never held).

    Attributes:
        attribute: where the load put it: ``"model"``, ``"models[2]"``, ``"cache['k']"``.
        type: its type's qualified name, e.g. ``"torch.nn.Linear"``.
        size: its estimated size in bytes (0 when stepfsm cannot size it).
        referrers: for a leaked object, what still refers to it, as paths a
            user can type (``"Out[12]"``, ``"__main__.cache['x'][3]"``); empty
            for a freed one.
    """

    attribute: str
    type: str
    size: int
    referrers: tuple[str, ...] = ()

    def __str__(self) -> str:
        size = f", {format_bytes(self.size)}" if self.size else ""
        text = f"{self.attribute} ({self.type}{size})"
        if self.referrers:
            text += " still referenced by " + ", ".join(self.referrers)
        return text


class ReleaseReport(NamedTuple):
    """What the last successful unload of a step freed (``lifecycle.last_release``).

    Attributes:
        step: the step's display name.
        freed: the objects the unload freed.
        leaked: the objects still alive after the unload and a ``gc.collect()``.
        bytes_freed: estimated bytes of ``freed`` (CUDA bytes that came back included).
        bytes_leaked: estimated bytes of ``leaked`` (CUDA bytes that did not).
        duration: seconds the check took.
        checked: ``False`` under ``on_leak="ignore"`` (nothing was looked at).
        cuda_before: CUDA bytes allocated before the load, where torch uses CUDA.
        cuda_after: CUDA bytes allocated after the unload: more than before
            the load is leaked (an entry ``"CUDA memory"``).
    """

    step: str
    freed: tuple[ReleasedObject, ...] = ()
    leaked: tuple[ReleasedObject, ...] = ()
    bytes_freed: int = 0
    bytes_leaked: int = 0
    duration: float = 0.0
    checked: bool = True
    cuda_before: int | None = None
    cuda_after: int | None = None

    def __str__(self) -> str:
        if not self.checked:
            return f"{self.step}: release not checked (on_leak='ignore')"
        text = f"{self.step}: freed {len(self.freed)} object(s), ~{format_bytes(self.bytes_freed)}"
        if self.leaked:
            text += f"; leaked {len(self.leaked)}, ~{format_bytes(self.bytes_leaked)}: "
            text += "; ".join(map(str, self.leaked))
        return text


# ------------------------------------------------------------------- sizes


def estimate(obj: object, depth: int = SIZE_DEPTH) -> int:
    """Estimated bytes ``obj`` holds (see the module docstring); 0 when unknown."""
    return _Sizer().size(obj, depth)


#: Types that hold nothing sizable but themselves (bytes and bytearray: their length).
_NOTHING_INSIDE: Final = frozenset(
    {type(None), bool, int, float, complex, str, bytes, bytearray, range}
)


# What the size estimate does with an object, by its type (cached per type: a type's
# kind never changes, and a torch or numpy type cannot exist before its module).
_SKIP, _VIEW, _TENSOR, _MODULE, _ARRAY, _DICT, _ITEMS, _OBJECT, _PRIVATE = range(9)
_KINDS: Final[dict[type, int]] = {}
#: The per-type caches forget everything past this many types (classes made at run time).
_TYPES_KEPT: Final = 4096


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is not None:
        return kind
    torch = sys.modules.get("torch")
    numpy = sys.modules.get("numpy")
    if issubclass(cls, memoryview):
        kind = _VIEW
    elif issubclass(cls, (str, int, float, complex, type, types.ModuleType)):
        kind = _SKIP
    elif torch is not None and issubclass(cls, torch.Tensor):
        kind = _TENSOR
    elif torch is not None and issubclass(cls, torch.nn.Module):
        kind = _MODULE
    elif numpy is not None and issubclass(cls, numpy.ndarray):
        kind = _ARRAY
    elif issubclass(cls, dict):
        kind = _DICT
    elif issubclass(cls, (list, tuple, set, frozenset)):
        kind = _ITEMS
    elif hasattr(cls, "__pydantic_private__"):  # a pydantic model: its private attributes too
        kind = _PRIVATE
    else:
        kind = _OBJECT
    if len(_KINDS) >= _TYPES_KEPT:
        _KINDS.clear()
    _KINDS[cls] = kind
    return kind


class _Sizer:
    """One estimate: what was counted already (objects, torch storages, numpy bases)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.storages: set[tuple[str, int]] = set()
        self.visits = 0

    def size(self, obj: object, depth: int) -> int:
        total = 0
        todo: list[tuple[object, int]] = [(obj, depth)]
        seen = self.seen
        while todo and self.visits < SIZE_VISITS:
            item, level = todo.pop()
            cls = type(item)
            if cls in _NOTHING_INSIDE:  # the common values, without a call
                if cls is bytes or cls is bytearray:
                    total += len(item)  # type: ignore[arg-type]
                continue
            kind = _KINDS.get(cls)
            if kind is None:
                kind = _kind(cls)
            if kind == _SKIP or id(item) in seen:
                continue
            seen.add(id(item))
            self.visits += 1
            try:  # an object's own code runs here (__getattr__, __iter__): it may raise
                if kind >= _OBJECT:  # _OBJECT or _PRIVATE
                    if level > 0:
                        attrs = getattr(item, "__dict__", None)
                        if type(attrs) is dict:
                            todo += [(child, level - 1) for child in attrs.values()]
                        if kind == _PRIVATE:
                            private = getattr(item, "__pydantic_private__", None)
                            if type(private) is dict:
                                todo += [(child, level - 1) for child in private.values()]
                elif kind == _DICT:
                    if level > 0:
                        values = list(item.values())[:CONTAINER_ITEMS]  # type: ignore[attr-defined]
                        todo += [(child, level - 1) for child in values]
                elif kind == _ITEMS:
                    if level > 0:
                        items = list(item)[:CONTAINER_ITEMS]  # type: ignore[call-overload]
                        todo += [(child, level - 1) for child in items]
                else:
                    total += self._leaf(item, kind)
            except Exception:
                continue  # what it holds is not counted
        return total

    def _leaf(self, obj: Any, kind: int) -> int:
        if kind == _VIEW:
            return int(obj.nbytes)
        if kind == _TENSOR:
            return self._tensor(obj)
        if kind == _MODULE:
            return sum(self._tensor(t) for t in (*obj.parameters(), *obj.buffers()))
        base = obj  # a numpy array: its base array, counted once
        while (
            base.base is not None
            and type(base.base) is not bytes
            and _kind(type(base.base)) == _ARRAY
        ):
            base = base.base
        key = ("numpy", id(base))
        if key in self.storages:
            return 0
        self.storages.add(key)
        return int(base.nbytes)

    def _tensor(self, tensor: Any) -> int:
        try:
            storage = tensor.untyped_storage()
            key = (str(tensor.device), int(storage.data_ptr()) or id(storage))
            nbytes = int(storage.nbytes())
        except Exception:  # a meta or sparse tensor, a tensor subclass
            return 0
        if key in self.storages:
            return 0
        self.storages.add(key)
        return nbytes


# ------------------------------------------------------------------- watch


# Plain classes with __slots__ here, not named tuples: each named tuple costs ~0.25 ms
# of ``import stepfsm`` (the public report types above are worth it; these are not).


class _Watched:
    __slots__ = ("entry", "ref")

    def __init__(self, entry: ReleasedObject, ref: weakref.ref[Any]) -> None:
        self.entry = entry  # how the report describes it if it is freed
        self.ref = ref


class Watch:
    """What one unload should free: taken before the unload code runs."""

    __slots__ = ("cuda_before", "cuda_unloading", "freed", "items", "nbytes", "refs")

    def __init__(
        self,
        items: tuple[_Watched, ...],
        cuda_before: int | None = None,
        cuda_unloading: int | None = None,
    ) -> None:
        self.items = items
        self.refs = tuple(item.ref for item in items)
        #: the report's entries and their bytes if every item is freed (the usual case)
        self.freed = tuple(item.entry for item in items)
        self.nbytes = sum(entry.size for entry in self.freed)
        #: CUDA bytes allocated before the load and when the unload began (``None``: no CUDA)
        self.cuda_before = cuda_before
        self.cuda_unloading = cuda_unloading


class Sizes:
    """What one load set, sized and listed when the load ended (:func:`measure`).

    Attributes:
        held: estimated bytes of everything the load set (``status()``).
        watch: the release check's list, ready (the usual case at unload).
        contents: each container the load set, with the ``id`` of every key
            and value it held then: while they are the same, ``watch`` is.
    """

    __slots__ = ("contents", "held", "watch")

    def __init__(
        self, held: int, watch: Watch, contents: tuple[tuple[object, tuple[int, ...]], ...]
    ) -> None:
        self.held = held
        self.watch = watch
        self.contents = contents


def _values(record: _snapshot.Record) -> tuple[object, ...]:
    return (*record.after.values(), *record.after_private.values())


def _contents(container: object) -> list[object]:
    """The first items of a container the load set (for a dict: its keys, then its values)."""
    if isinstance(container, dict):
        keys = list(container)[:CONTAINER_ITEMS]
        return [*keys, *(container[key] for key in keys)]
    if isinstance(container, (list, tuple)):
        return list(container[:CONTAINER_ITEMS])
    return list(container)[:CONTAINER_ITEMS]  # type: ignore[call-overload,no-any-return]


def _ids(container: object) -> tuple[int, ...]:
    """The ``id`` of each of :func:`_contents`: what tells a changed container."""
    if type(container) is list and len(container) <= CONTAINER_ITEMS:
        return tuple(map(id, container))  # the common case, without a copy
    try:
        return tuple(map(id, _contents(container)))
    except Exception:  # a subclass's own __iter__ that raised: look again at unload
        return ()


def _watchable(record: _snapshot.Record) -> Iterator[tuple[str, object, weakref.ref[Any]]]:
    """``(label, value, weak reference)`` for each object a load's record says to watch:
    the values it set, and the values directly inside a container it set."""
    for name, value in (*record.after.items(), *record.after_private.items()):
        ref = _ref(value)
        if ref is not None:
            yield name, value, ref
            continue
        if _watching(type(value)) != _CONTAINER:
            continue
        try:  # a subclass's own items() or __iter__ runs here: it may raise
            if isinstance(value, dict):
                pairs = [(f"{name}[{k!r}]", v) for k, v in list(value.items())[:CONTAINER_ITEMS]]
            elif isinstance(value, (list, tuple)):
                pairs = [(f"{name}[{i}]", v) for i, v in enumerate(value[:CONTAINER_ITEMS])]
            else:
                pairs = [(f"{name} (an item)", v) for v in list(value)[:CONTAINER_ITEMS]]
        except Exception:
            continue  # its items are not watched
        for label, item in pairs:
            ref = _ref(item)
            if ref is not None:
                yield label, item, ref


def measure(key: int) -> None:
    """When a load of the step with ``id`` ``key`` ends: size and list what it set (:class:`Sizes`).

    Never raises: an object whose attributes cannot be read leaves the sizes
    unknown, and the release check and ``status()`` look when asked.
    """
    record = _snapshot.record_of(key)
    if record is None:
        return
    sizer = _Sizer()
    items: list[_Watched] = []
    try:
        for label, value, ref in _watchable(record):
            size = sizer.size(value, SIZE_DEPTH)
            items.append(_Watched(ReleasedObject(label, _type_name(value), size), ref))
        held = sum(item.entry.size for item in items)  # and the rest, each object once:
        held += sum(sizer.size(value, SIZE_DEPTH) for value in _values(record))
        contents = tuple(
            (value, _ids(value))
            for value in _values(record)
            if isinstance(value, _MUTABLE) and _watching(type(value)) == _CONTAINER
        )
    except Exception:  # a property or __getattr__ of the user's that raised
        return
    record.sizes = Sizes(held, Watch(tuple(items)), contents)


def watch(record: _snapshot.Record | None, cuda_before: int | None = None) -> Watch | None:
    """Weak references to what a step's load set (its ``_snapshot`` record); ``None`` if nothing.

    Call it before the unload code runs (the record still holds the loaded
    values). ``cuda_before``: the CUDA bytes allocated before the load. The
    list :func:`measure` made serves unless a container the load set has
    changed since; then it is made again (sizing only what is new).
    """
    cuda = cuda_allocated() if cuda_before is not None else None
    if record is None:
        return None if cuda is None else Watch((), cuda_before, cuda)
    sizes: Sizes | None = record.sizes
    if sizes is None:
        items = _watch_again(record, ())
    else:
        for container, ids in sizes.contents:
            if _ids(container) != ids:
                items = _watch_again(record, sizes.watch.items)
                break
        else:  # the load's containers hold what they held when it ended (the usual case)
            if cuda is None:
                return sizes.watch if sizes.watch.items else None
            items = sizes.watch.items
    if not items and cuda is None:
        return None
    return Watch(items, cuda_before if cuda is not None else None, cuda)


def _watch_again(record: _snapshot.Record, before: tuple[_Watched, ...]) -> tuple[_Watched, ...]:
    """The list made anew: a container the load set changed since :func:`measure` ran."""
    # the sizes measured, by weak reference: CPython hands out one per live object
    sized = {id(item.ref): item.entry.size for item in before}
    sizer: _Sizer | None = None
    items: list[_Watched] = []
    for label, value, ref in _watchable(record):
        size = sized.get(id(ref))
        if size is None:
            if sizer is None:
                sizer = _Sizer()
            size = sizer.size(value, SIZE_DEPTH)
        items.append(_Watched(ReleasedObject(label, _type_name(value), size), ref))
    return tuple(items)


#: Values a load may set that are shared by design: never reported as leaked.
_SHARED: Final = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    logging.Logger,
    logging.LoggerAdapter,
)
#: The containers whose items are watched one by one.
_CONTAINERS: Final = (dict, list, tuple, set, frozenset)
#: Those that can change after the load (a tuple or frozenset cannot).
_MUTABLE: Final = (dict, list, set)


# How the release check treats a value, by its type (cached).
_IGNORED, _WATCHED, _CONTAINER = range(3)
_WATCHING: Final[dict[type, int]] = {}


def _watching(cls: type) -> int:
    how = _WATCHING.get(cls)
    if how is not None:
        return how
    if cls is type(None) or issubclass(cls, _SHARED):
        how = _IGNORED  # shared by design (a class, module, function, logger): not this step's
    elif cls.__weakrefoffset__:
        how = _WATCHED  # its instances can be weakly referenced
    elif issubclass(cls, _CONTAINERS):
        how = _CONTAINER
    else:
        how = _IGNORED  # an int, a str, an object with __slots__ and no __weakref__
    if len(_WATCHING) >= _TYPES_KEPT:
        _WATCHING.clear()
    _WATCHING[cls] = how
    return how


def _ref(value: object) -> weakref.ref[Any] | None:
    """A weak reference to ``value`` if it is watched (and can have one)."""
    if _watching(type(value)) != _WATCHED:
        return None
    try:
        return weakref.ref(value)
    except TypeError:  # a type whose instances refuse after all
        return None


def _type_name(value: object) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# ------------------------------------------------------------------- check


def all_freed(step: str, watched: Watch) -> ReleaseReport | None:
    """The report of an unload that freed everything it should; ``None`` if not (:func:`check`).

    The usual case, cheap enough to run as soon as the unload returned.
    """
    started = time.perf_counter()
    if watched.cuda_before is not None:
        return None
    for ref in watched.refs:
        if ref() is not None:
            return None
    duration = time.perf_counter() - started  # the fields in order, without __new__:
    fields = (step, watched.freed, (), watched.nbytes, 0, duration, True, None, None)
    return tuple.__new__(ReleaseReport, fields)


def check(step: str, watched: Watch, owner: object) -> ReleaseReport:
    """After a successful unload: which watched objects were freed, and who holds the rest."""
    report = all_freed(step, watched)
    if report is not None:
        return report
    started = time.perf_counter()
    alive = [item for item in watched.items if item.ref() is not None]
    if alive:
        gc.collect()
        alive = [item for item in alive if item.ref() is not None]
    still = {id(item) for item in alive}
    freed = tuple(item.entry for item in watched.items if id(item) not in still)
    leaked: list[ReleasedObject] = []
    if alive:
        targets = [item.ref() for item in alive]  # None: died since (another thread let go)
        paths = referrer_paths(targets, named={id(owner): _OWNER}, step=step)
        leaked = [
            item.entry._replace(referrers=found)
            for item, target, found in zip(alive, targets, paths, strict=True)
            if target is not None
        ]
        del targets
    bytes_freed = sum(item.size for item in freed)
    bytes_leaked = sum(item.size for item in leaked)
    cuda_after = None
    if watched.cuda_before is not None and watched.cuda_unloading is not None:
        cuda_after = cuda_allocated()
        if cuda_after is not None:
            bytes_freed += max(watched.cuda_unloading - cuda_after, 0)
            kept = cuda_after - watched.cuda_before  # what the load allocated and kept
            if kept > 0:
                leaked.append(ReleasedObject("CUDA memory", "cuda", kept))
                bytes_leaked += kept
        if not leaked:
            cuda_empty_cache()
    return ReleaseReport(
        step=step,
        freed=freed,
        leaked=tuple(leaked),
        bytes_freed=bytes_freed,
        bytes_leaked=bytes_leaked,
        duration=time.perf_counter() - started,
        checked=True,
        cuda_before=watched.cuda_before,
        cuda_after=cuda_after,
    )


class _Collector(threading.local):
    """Per thread: the reports ``unload_all()`` gathers instead of warning once per step."""

    def __init__(self) -> None:
        #: the frame of the collecting call, and its list
        self.entry: tuple[types.FrameType, list[tuple[ReleaseReport, str]]] | None = None


#: ``COLLECTOR.entry`` is ``None`` unless a :func:`collecting` block may be running
COLLECTOR: Final = _Collector()


def collect(report: ReleaseReport, policy: str) -> bool:
    """Keep ``report`` (with the step's ``on_leak``) for :func:`collecting`; whether one runs.

    A collector whose call is no longer on this thread's stack (an interrupt
    landed before it was reset) is dropped here.
    """
    entry = COLLECTOR.entry
    if entry is None:
        return False
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame is not entry[0]:
        frame = frame.f_back
    if frame is None:
        COLLECTOR.entry = None
        return False
    entry[1].append((report, policy))
    return True


@contextlib.contextmanager
def collecting() -> Iterator[list[tuple[ReleaseReport, str]]]:
    """Within the block, this thread's unloads hand their reports to the list it yields."""
    previous = COLLECTOR.entry
    reports: list[tuple[ReleaseReport, str]] = []
    COLLECTOR.entry = (sys._getframe(2), reports)  # the caller of the with statement
    try:
        yield reports
    finally:
        COLLECTOR.entry = previous


class _Deferred(threading.local):
    """Per thread: checks waiting for the step operation whose code is running to end."""

    def __init__(self) -> None:
        self.checks: list[tuple[Any, Watch]] = []


#: ``DEFERRED.checks``: ``(lifecycle, watch)`` pairs, oldest first (see ``machine``)
DEFERRED: Final = _Deferred()


def held_bytes(key: int) -> int | None:
    """Estimated bytes the loaded step with ``id`` ``key`` holds in what its load set."""
    record = _snapshot.record_of(key)
    if record is None:
        return None
    if record.sizes is not None:
        return int(record.sizes.held)
    sizer = _Sizer()
    return sum(sizer.size(value, SIZE_DEPTH) for value in _values(record))


# -------------------------------------------------------------------- CUDA


def cuda_allocated() -> int | None:
    """CUDA bytes torch has allocated, or ``None`` unless torch is imported and CUDA initialised.

    The only CUDA code of stepfsm, with :func:`cuda_empty_cache` (these
    branches are not exercised on machines without a GPU; docs/design.md §11).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        return int(torch.cuda.memory_allocated())
    except Exception:  # a torch without CUDA support, a broken driver
        return None


def cuda_empty_cache() -> None:
    """Give torch's cached CUDA blocks back to the driver (after a clean unload)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):  # a broken CUDA set-up
            torch.cuda.empty_cache()


# ---------------------------------------------------------- referrer search

_OWNER: Final = "<the step>"


class _Node:
    """One path from a frontier object to the target it leads to."""

    __slots__ = ("path", "target")

    def __init__(self, target: int, path: str) -> None:
        self.target = target  # which target this path leads to
        self.path = path  # from this object down to the target, e.g. "['x'][3]"


def referrer_paths(
    targets: list[Any],
    *,
    named: dict[int, str] | None = None,
    step: str = "",
    depth: int = SEARCH_DEPTH,
    seconds: float = SEARCH_SECONDS,
) -> list[tuple[str, ...]]:
    """For each of ``targets``: paths from a named root to it, e.g. ``"Out[12]"``.

    Searches backwards (``gc.get_referrers``, one heap scan per level) until a
    root: a module's globals (``__main__.model``; in IPython the user's
    namespace, so ``Out[12]``, ``_``, ``_12``), ``sys.last_value`` and its
    traceback, a local of a frame on this thread's stack, or an object of
    ``named`` (``id -> name``). A target with no root found within ``depth``
    levels and ``seconds`` gets one line saying so. ``targets`` itself and
    the search's own tables are never taken for referrers.
    """
    started = time.perf_counter()
    roots = _roots(named or {}, step)
    found: list[list[str]] = [[] for _ in targets]
    # the frontier: id -> object, and id -> the paths from it to the targets
    objects: dict[int, object] = {}
    nodes: dict[int, list[_Node]] = {}
    for index, target in enumerate(targets):
        if target is None:
            continue
        objects[id(target)] = target
        nodes.setdefault(id(target), []).append(_Node(index, ""))
    _stack_roots(objects, nodes, found)
    visited: set[int] = set(objects)
    mine: set[int] = {id(objects), id(nodes), id(found), id(targets)}
    for _level in range(depth):
        if not objects or time.perf_counter() - started > seconds:
            break
        if all(len(paths) >= SEARCH_PATHS for paths in found):
            break
        level = list(objects.values())
        referrers = gc.get_referrers(*level)
        mine.update((id(level), id(referrers)))
        next_objects: dict[int, object] = {}
        next_nodes: dict[int, list[_Node]] = {}
        mine.update((id(next_objects), id(next_nodes)))
        for referrer in referrers:
            if id(referrer) in mine or (isinstance(referrer, types.FrameType) and _ours(referrer)):
                continue
            root = roots.get(id(referrer))
            for child, label in _edges(referrer, objects):
                for node in nodes[child]:
                    if len(found[node.target]) >= SEARCH_PATHS:
                        continue
                    path = label + node.path
                    if label == _CLOSURE:  # name the variable: the path goes on with [index]
                        path = _closure(referrer, node.path)
                    if root is not None:
                        _add(found[node.target], _join(root, path))
                    elif id(referrer) not in visited and len(next_objects) < _FRONTIER:
                        next_objects[id(referrer)] = referrer
                        next_nodes.setdefault(id(referrer), []).append(_Node(node.target, path))
        del referrers, level
        visited.update(next_objects)
        objects.clear()
        objects, nodes = next_objects, next_nodes
    objects.clear()
    unknown = (
        "nothing stepfsm can name (C code, a running frame of another thread, "
        f"or more than {depth} references away)"
    )
    return [tuple(sorted(paths, key=_rank)) or (unknown,) for paths in found]


def _add(paths: list[str], path: str) -> None:
    if path not in paths:
        paths.append(path)


def _rank(path: str) -> tuple[int, int, str]:
    """Order paths as a user would look for them: plain names first, IPython's hidden last."""
    hidden = path.startswith(("_oh", "_ih", "_i", "__builtins__"))
    return (hidden, len(path), path)


def _join(root: str, path: str) -> str:
    """``root`` + ``path``, with ``.__dict__['x']`` read as ``.x``."""
    if root.endswith("."):  # a namespace: the first item of the path is a name
        if path.startswith("['") and "']" in path:
            end = path.index("']")
            path = path[2:end] + path[end + 2 :]
        root = root[:-1] if root != "." else ""
        if root and path and not path.startswith((".", "[", " ")):
            root += "."
    return _attributes(root + path)


def _attributes(path: str) -> str:
    while ".__dict__['" in path:
        start = path.index(".__dict__['")
        end = path.index("']", start)
        path = path[:start] + "." + path[start + 11 : end] + path[end + 2 :]
    return path


def _ours(frame: types.FrameType) -> bool:
    return frame.f_code.co_filename == __file__


def _roots(named: dict[int, str], step: str) -> dict[int, str]:
    """``id(container) -> prefix`` for the containers a path may start at."""
    roots = {key: (step if value == _OWNER and step else value) for key, value in named.items()}
    main = sys.modules.get("__main__")
    shell = _ipython()
    user_ns = getattr(shell, "user_ns", None)
    for name, module in list(sys.modules.items()):
        attrs = getattr(module, "__dict__", None)
        if isinstance(attrs, dict):
            roots.setdefault(id(attrs), f"{name}.")
    if isinstance(user_ns, dict):
        roots[id(user_ns)] = "."  # IPython's user namespace: bare names (Out, _, _12)
    elif main is not None:
        roots[id(main.__dict__)] = "__main__."
    builtins = sys.modules["builtins"].__dict__
    roots[id(builtins)] = "."  # the REPL's _ lives in builtins
    return roots


def _ipython() -> Any:
    ipython = sys.modules.get("IPython")
    getter: Callable[[], Any] | None = getattr(ipython, "get_ipython", None)
    return getter() if getter is not None else None


def _stack_roots(
    objects: dict[int, object], nodes: dict[int, list[_Node]], found: list[list[str]]
) -> None:
    """Locals of the frames running on this thread (another thread's are not safe to read)."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if (
            not frame.f_code.co_filename.startswith(_PACKAGE)
            and frame.f_locals is not frame.f_globals  # a module's code: its globals are roots
        ):
            for name, value in list(frame.f_locals.items()):
                if objects.get(id(value), _NOTHING) is value:
                    where = f"local '{name}' of {_qualname(frame.f_code)}() (running, " + (
                        f"{_short(frame.f_code.co_filename)}:{frame.f_lineno})"
                    )
                    for node in nodes[id(value)]:
                        _add(found[node.target], where + node.path)
        frame = frame.f_back


_PACKAGE: Final = __file__.rsplit("_release", 1)[0]


def _qualname(code: types.CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)  # Python 3.11+: with the class


def _short(filename: str) -> str:
    return filename.rsplit("/", 1)[-1]


_NOTHING: Final[Any] = object()
_CLOSURE: Final = ".__closure__"


def _closure(function: Any, path: str) -> str:
    """The path from ``function`` through its closure tuple (``[i]...``), naming the variable."""
    end = path.find("]")
    try:
        name = function.__code__.co_freevars[int(path[1:end])]
    except (ValueError, IndexError):
        return _CLOSURE + path
    return f" (closure of {function.__qualname__}(), variable '{name}')" + path[end + 1 :]


def _edges(referrer: object, objects: dict[int, object]) -> list[tuple[int, str]]:
    """``(id(child), label)`` for each frontier object ``referrer`` refers to directly."""
    edges: list[tuple[int, str]] = []

    def hit(value: object) -> bool:
        return objects.get(id(value), _NOTHING) is value

    if isinstance(referrer, dict):
        for key, value in list(referrer.items()):
            if hit(value):
                edges.append((id(value), f"[{key!r}]"))
    elif isinstance(referrer, (list, tuple)):
        for index, value in enumerate(list(referrer)):
            if hit(value):
                edges.append((id(value), f"[{index}]"))
    elif isinstance(referrer, (set, frozenset)):
        for value in list(referrer):
            if hit(value):
                edges.append((id(value), " (in a set)"))
    elif isinstance(referrer, types.CellType):
        try:
            value = referrer.cell_contents
        except ValueError:
            return edges
        if hit(value):
            edges.append((id(value), ""))
    elif isinstance(referrer, types.FunctionType):
        closure = referrer.__closure__
        if closure is not None and hit(closure):
            edges.append((id(closure), _CLOSURE))
        for label in ("__defaults__", "__kwdefaults__", "__dict__"):
            value = getattr(referrer, label, None)
            if value is not None and hit(value):
                edges.append((id(value), f".{label}"))
    elif isinstance(referrer, types.FrameType):
        if not any(map(hit, gc.get_referents(referrer))):
            return edges  # a running frame (its locals are not traversed): not read
        for name, value in list(referrer.f_locals.items()):
            if hit(value):
                code = referrer.f_code
                edges.append(
                    (
                        id(value),
                        f" (frame of {_qualname(code)}() at {_short(code.co_filename)}:"
                        f"{referrer.f_lineno}, local '{name}')",
                    )
                )
    elif isinstance(referrer, types.TracebackType):
        if hit(referrer.tb_frame):
            edges.append((id(referrer.tb_frame), ".tb_frame"))
        if referrer.tb_next is not None and hit(referrer.tb_next):
            edges.append((id(referrer.tb_next), ".tb_next"))
    elif isinstance(referrer, (types.GeneratorType, types.CoroutineType)):
        frame = getattr(referrer, "gi_frame", None) or getattr(referrer, "cr_frame", None)
        running = getattr(referrer, "gi_running", False) or getattr(referrer, "cr_running", False)
        if frame is not None and not running:  # suspended: its locals can be read
            for name, value in list(frame.f_locals.items()):
                if hit(value):
                    edges.append(
                        (id(value), f" (suspended {referrer.__qualname__}(), local '{name}')")
                    )
    elif isinstance(referrer, type):
        edges += [(id(v), ".__dict__") for v in _referents(referrer, hit) if isinstance(v, dict)]
    else:
        for label in ("__dict__", "__traceback__", "__context__", "__cause__"):
            value = getattr(referrer, label, None)
            if value is not None and hit(value):
                edges.append((id(value), f".{label}"))
        attrs = getattr(referrer, "__dict__", None)
        if isinstance(attrs, dict):
            for key, value in list(attrs.items()):
                if hit(value):
                    edges.append((id(value), f".{key}"))
        for name in getattr(type(referrer), "__slots__", ()):
            value = getattr(referrer, name, None)
            if value is not None and hit(value):
                edges.append((id(value), f".{name}"))
        if not edges:
            edges += [
                (id(v), f" (in a {type(referrer).__name__})") for v in _referents(referrer, hit)
            ]
    return edges


def _referents(referrer: object, hit: Callable[[object], bool]) -> list[object]:
    return [value for value in gc.get_referents(referrer) if hit(value)]
