"""Verified release (docs/design.md §11): what an unload freed, what it left, who holds it.

Each referrer kind the design names gets its own test: a module global, a
list or dict reachable from one, a closure, a frame's local (running on this
thread, or kept by a traceback), ``sys.last_value``/``sys.last_traceback``,
and IPython's ``Out[n]``/``_``/``_n`` (a real in-process IPython shell).
"""

from __future__ import annotations

import pickle
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import stepfsm
from stepfsm import LeakWarning, ReleaseReport, ResourceLeakError, State, _release


class Weights:
    """A stand-in for a model: ``size`` bytes of real memory, weakly referenceable."""

    def __init__(self, size: int = 1000) -> None:
        self.buffer = bytearray(size)


@stepfsm.stateful(guard=("run",))
class Model:
    """Its load sets a model and a list of shards; its unload clears both."""

    def __init__(self, name: str, size: int = 1000) -> None:
        self.name = name
        self.size = size
        self.model: Weights | None = None
        self.shards: list[Any] | None = None

    def load(self) -> None:
        self.model = Weights(self.size)
        self.shards = [Weights(10), "not watched", 3]

    def unload(self) -> None:
        self.model = None
        self.shards = None

    def run(self) -> Weights:
        assert self.model is not None
        return self.model


@pytest.fixture(autouse=True)
def _settings() -> Iterator[None]:
    with stepfsm.configure(on_leak="warn"):
        yield


def leak_of(step: object, unload: Callable[[], object] | None = None) -> LeakWarning:
    """Unload ``step``; the one LeakWarning it emitted."""
    with pytest.warns(LeakWarning) as caught:
        (unload or stepfsm.lifecycle(step).unload)()
    leaks = [w.message for w in caught if isinstance(w.message, LeakWarning)]
    assert len(leaks) == 1, [str(w.message) for w in caught]
    assert isinstance(leaks[0], LeakWarning)
    return leaks[0]


def paths(warning: LeakWarning, attribute: str = "model") -> tuple[str, ...]:
    return next(item.referrers for item in warning.leaked if item.attribute == attribute)


# ------------------------------------------------------------------- clean


def test_a_clean_unload_reports_what_it_freed_and_warns_nothing() -> None:
    step = Model("clean", size=50_000)
    step.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.unload()
    report = stepfsm.lifecycle(step).last_release
    assert isinstance(report, ReleaseReport)
    assert report.checked
    assert not report.leaked
    assert sorted(item.attribute for item in report.freed) == ["model", "shards[0]"]
    assert report.bytes_freed == 50_000 + 10
    assert report.bytes_leaked == 0
    assert report.duration >= 0


def test_a_load_that_set_nothing_watchable_leaves_no_report() -> None:
    @stepfsm.stateful
    class Counter:
        def load(self) -> None:
            self.count = 3  # an int: cannot be weakly referenced, nothing to watch

        def unload(self) -> None:
            pass

    step = Counter()
    step.load()
    step.unload()
    assert stepfsm.lifecycle(step).last_release is None


def test_the_report_never_holds_what_it_describes() -> None:
    step = Model("unpinned")
    step.load()
    step.unload()
    report = stepfsm.lifecycle(step).last_release
    assert report is not None
    todo: list[Any] = [report]
    while todo:  # everything the report refers to, all the way down
        value = todo.pop()
        assert isinstance(value, (str, int, float, bool, tuple, type(None))), value
        if isinstance(value, tuple):
            todo += value


# ------------------------------------------------------------ referrer kinds

cache: dict[str, list[Any]] = {}
kept: Any = None


def test_a_module_global_is_named_as_module_dot_name() -> None:
    global kept
    step = Model("global")
    step.load()
    kept = step.model
    try:
        warning = leak_of(step)
    finally:
        kept = None
    assert paths(warning) == (f"{__name__}.kept",)
    assert f"del {__name__}.kept" in str(warning)


def test_a_list_inside_a_dict_reachable_from_a_global_is_named_with_its_keys() -> None:
    step = Model("cached")
    step.load()
    cache["x"] = [0, 1, 2, step.shards[0] if step.shards else None]
    try:
        warning = leak_of(step)
    finally:
        cache.clear()
    assert paths(warning, "shards[0]") == (f"{__name__}.cache['x'][3]",)
    assert [item.attribute for item in warning.leaked] == ["shards[0]"]


def test_a_closure_is_named_with_its_function_and_variable() -> None:
    step = Model("closure")
    step.load()

    def make(model: Any) -> Callable[[], Any]:
        def predict() -> Any:
            return model

        return predict

    globals()["predict"] = make(step.model)
    try:
        warning = leak_of(step)
    finally:
        del globals()["predict"]
    named = paths(warning)
    assert any(
        p.startswith(f"{__name__}.predict (closure of ") and "variable 'model'" in p for p in named
    ), named


def test_a_local_of_a_frame_running_on_this_thread_is_named() -> None:
    step = Model("local")
    step.load()
    mine = step.model  # a local of this very test, which is running
    warning = leak_of(step)
    assert any(
        p.startswith("local 'mine' of test_a_local_of_a_frame_running") for p in paths(warning)
    )
    del mine


def test_a_traceback_frame_and_sys_last_value_are_named() -> None:
    step = Model("traceback")
    step.load()

    def crash(model: Any) -> None:
        raise RuntimeError("boom")

    try:
        crash(step.model)
    except RuntimeError as error:
        sys.last_value, sys.last_traceback = error, error.__traceback__
    try:
        warning = leak_of(step)
    finally:
        del sys.last_value, sys.last_traceback
    named = paths(warning)
    assert any(p.startswith("sys.last_traceback") and "local 'model'" in p for p in named)
    assert any(p.startswith("sys.last_value.__traceback__") for p in named), named


def test_a_suspended_generator_local_is_named() -> None:
    step = Model("generator")
    step.load()

    def stream(model: Any) -> Iterator[int]:
        yield 1
        yield 2

    running = stream(step.model)
    next(running)
    globals()["running"] = running
    try:
        warning = leak_of(step)
    finally:
        del globals()["running"]
    assert any("suspended" in p and "local 'model'" in p for p in paths(warning))


def test_an_attribute_the_unload_did_not_clear_is_named_on_the_step() -> None:
    @stepfsm.stateful
    class Forgetful:
        name = "forgetful"

        def load(self) -> None:
            self.model = Weights()

        def unload(self) -> None:
            pass  # forgets to let go of self.model

    step = Forgetful()
    step.load()
    warning = leak_of(step)
    assert warning.leaked[0].referrers[0].endswith(".model")
    assert warning.leaked[0].referrers[0].startswith("Forgetful")


def test_ipython_out_and_underscores_are_named_as_a_user_types_them() -> None:
    """A real in-process IPython shell: a cell whose value is the model."""
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no history thread left behind in this process
    shell = interactiveshell.InteractiveShell.instance(config=config)
    try:
        shell.user_ns["step"] = step = Model("ipython")
        shell.run_cell("step.load()", store_history=True)
        result = shell.run_cell("step.model", store_history=True)
        count = result.execution_count
        assert result.result is step.model
        del result
        warning = leak_of(step)
        named = paths(warning)
        assert named[:3] == ("_", f"_{count}", f"Out[{count}]") or {
            "_",
            f"_{count}",
            f"Out[{count}]",
        } <= set(named), named
        # what the message tells the user to do, done: no leak on the next cycle
        shell.run_cell(f"del Out[{count}], _{count}", store_history=True)
        shell.run_cell("_ = __ = ___ = None", store_history=False)
        step.load()
        with warnings.catch_warnings():
            warnings.simplefilter("error", LeakWarning)
            step.unload()
    finally:
        interactiveshell.InteractiveShell.clear_instance()
        sys.displayhook = sys.__displayhook__


# ------------------------------------------------------------------- policies


def test_on_leak_raise_raises_after_the_step_is_unloaded() -> None:
    step = Model("raise")
    stepfsm.lifecycle(step).on_leak = "raise"
    step.load()
    holder = [step.model]
    with pytest.raises(ResourceLeakError) as raised:
        step.unload()
    assert stepfsm.state(step) is State.UNLOADED
    assert raised.value.leaked[0].attribute == "model"
    assert any("holder" in p for p in raised.value.leaked[0].referrers) or raised.value.leaked
    del holder


def test_on_leak_ignore_checks_nothing() -> None:
    @stepfsm.stateful(on_leak="ignore")
    class Ignored(Model):
        pass

    step = Ignored("ignored")
    step.load()
    holder = [step.model]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.unload()
    report = stepfsm.lifecycle(step).last_release
    assert report is not None
    assert not report.checked
    assert not report.leaked
    assert "not checked" in str(report)
    del holder


def test_on_leak_is_a_setting_at_every_level() -> None:
    step = Model("levels")
    lc = stepfsm.lifecycle(step)
    assert lc.on_leak == "warn"
    with stepfsm.configure(on_leak="ignore"):
        assert lc.on_leak == "ignore"
        lc.on_leak = "raise"
        assert lc.on_leak == "raise"
        lc.on_leak = None
        assert lc.on_leak == "ignore"
    with pytest.raises(ValueError, match="on_leak must be one of"):
        lc.on_leak = "loud"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="on_leak"):
        stepfsm.configure(on_leak="never")  # type: ignore[arg-type]
    with pytest.raises(stepfsm.DefinitionError, match="on_leak"):
        stepfsm.stateful(on_leak="x")(type("Bad", (Model,), {}))  # type: ignore[arg-type]


def test_a_clean_up_unload_of_a_failed_step_is_checked_too() -> None:
    @stepfsm.stateful
    class Half:
        def load(self) -> None:
            self.model = Weights()
            raise RuntimeError("CUDA out of memory")

        def unload(self) -> None:
            pass  # forgets the half-loaded model

    step = Half()
    with pytest.raises(stepfsm.LoadError):
        step.load()
    warning = leak_of(step)
    assert warning.leaked[0].attribute == "model"
    assert stepfsm.state(step) is State.UNLOADED


def test_unload_all_reports_bytes_freed_and_every_leak_in_one_warning() -> None:
    a, b, c = Model("a", 100), Model("b", 200), Model("c", 400)
    for step in (a, b, c):
        step.load()
    holders = [a.model, c.model]
    with pytest.warns(LeakWarning) as caught:
        unloaded = stepfsm.unload_all()
    leaks = [w.message for w in caught if isinstance(w.message, LeakWarning)]
    assert len(leaks) == 1
    leak = leaks[0]
    assert isinstance(leak, LeakWarning)
    assert {item.attribute for item in leak.leaked} == {"Model 'a'.model", "Model 'c'.model"}
    assert leak.bytes_leaked == 500
    assert str(leak).startswith("unload_all() returned, but 2 objects")
    assert set(unloaded) >= {"Model 'a'", "Model 'b'", "Model 'c'"}
    assert unloaded.bytes_freed >= 200 + 3 * 10  # b's model and every shard
    assert pickle.loads(pickle.dumps(unloaded)) == unloaded
    del holders


def test_unload_all_raises_once_when_a_leaking_step_says_raise() -> None:
    a, b = Model("ra"), Model("rb")
    stepfsm.lifecycle(b).on_leak = "raise"
    a.load()
    b.load()
    holders = [a.model, b.model]
    with pytest.raises(ResourceLeakError) as raised:
        stepfsm.unload_all()
    assert len(raised.value.leaked) == 2
    assert stepfsm.state(a) is stepfsm.state(b) is State.UNLOADED
    del holders


# ------------------------------------------------------------------- sizes


def test_sizes_of_buffers_numpy_views_and_nested_attributes() -> None:
    numpy = pytest.importorskip("numpy")
    base = numpy.zeros(1000, dtype=numpy.float64)
    holder = types.SimpleNamespace(
        data=bytearray(100),
        view=memoryview(b"x" * 50),
        arrays=[base, base[10:20], base.reshape(10, 100)],  # one base, counted once
        nested=types.SimpleNamespace(deeper=types.SimpleNamespace(blob=b"y" * 7)),
    )
    assert _release.estimate(holder) == 100 + 50 + 8000 + 7
    assert _release.estimate(holder, depth=1) == 100 + 50  # containers beyond depth 1
    assert _release.estimate(42) == 0


def test_a_torch_module_with_shared_weights_counts_each_storage_once() -> None:
    torch = pytest.importorskip("torch")
    embed = torch.nn.Embedding(100, 16)
    head = torch.nn.Linear(16, 100, bias=False)
    head.weight = embed.weight  # tied weights, as in many language models
    model = torch.nn.Sequential(embed, head)
    model.register_buffer("scale", torch.ones(4))
    one = 100 * 16 * 4
    assert _release.estimate(model) == one + 4 * 4
    assert _release.estimate([embed.weight, embed.weight[:10]]) == one  # a view: same storage


def test_status_shows_the_bytes_a_loaded_step_holds() -> None:
    step = Model("sized", size=3 * 1024 * 1024)
    step.load()
    row = next(r for r in stepfsm.status() if r.name == "Model 'sized'")
    assert row.nbytes == 3 * 1024 * 1024 + 10
    assert "~3.0 MiB" in str(stepfsm.status())
    assert "~3.0 MiB" in stepfsm.status()._repr_html_()
    step.unload()
    row = next(r for r in stepfsm.status() if r.name == "Model 'sized'")
    assert row.nbytes is None


def test_sizes_are_taken_once_when_the_load_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """status() and a clean unload reuse the load's estimate instead of walking the model."""
    step = Model("measured", size=4096)
    step.load()
    walks: list[object] = []
    real = _release._Sizer.size

    def counting(self: Any, obj: object, depth: int) -> int:
        walks.append(obj)
        return real(self, obj, depth)

    monkeypatch.setattr(_release._Sizer, "size", counting)
    row = next(r for r in stepfsm.status() if r.name == "Model 'measured'")
    assert row.nbytes == 4096 + 10
    step.unload()
    report = stepfsm.lifecycle(step).last_release
    assert report is not None
    assert report.bytes_freed == 4096 + 10
    assert walks == []


def test_what_a_loaded_container_gained_after_the_load_is_watched_too() -> None:
    global kept
    step = Model("grown")
    step.load()
    assert step.shards is not None
    late = Weights(77)
    step.shards.append(late)  # a lazy cache filled by a later call
    kept = late
    del late
    try:
        warning = leak_of(step)
    finally:
        kept = None
    assert [item.attribute for item in warning.leaked] == ["shards[3]"]
    assert warning.leaked[0].size == 77
    assert f"{__name__}.kept" in paths(warning, "shards[3]")
    report = stepfsm.lifecycle(step).last_release
    assert report is not None
    assert sorted(item.attribute for item in report.freed) == ["model", "shards[0]"]
    assert report.bytes_freed == 1000 + 10  # sized when the load ended, not again


def test_an_object_whose_own_code_raises_while_sized_does_not_fail_the_step() -> None:
    class Touchy:
        """Reading its attributes raises (a broken proxy, a remote handle)."""

        def __getattribute__(self, name: str) -> Any:
            if name == "__dict__":
                raise RuntimeError("no attributes here")
            return super().__getattribute__(name)

    class Moody(dict[str, Any]):
        __slots__ = ()  # no weak references: its items are what is watched

        def items(self) -> Any:
            raise RuntimeError("cannot list")

    @stepfsm.stateful
    class Odd:
        def load(self) -> None:
            self.handle = Touchy()
            self.table = Moody(a=Weights(5))

        def unload(self) -> None:
            self.handle = self.table = None

    step = Odd()
    step.load()
    assert stepfsm.lifecycle(step).state is State.LOADED
    row = next(r for r in stepfsm.status() if r.name.startswith("Odd at"))
    assert row.nbytes == 5  # Touchy: nothing it holds could be counted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.unload()
    report = stepfsm.lifecycle(step).last_release
    assert report is not None
    assert [item.attribute for item in report.freed] == ["handle"]  # Moody's items unlisted


# -------------------------------------------------------------------- CUDA


def test_a_cuda_delta_that_did_not_come_back_is_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch on a machine without a GPU: torch's CUDA counters replaced by fakes."""
    torch = pytest.importorskip("torch")
    allocated = [1000]
    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *args: allocated[0])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(allocated[0]))

    @stepfsm.stateful
    class OnGPU:
        def __init__(self, gives_back: int) -> None:
            self.gives_back = gives_back

        def load(self) -> None:
            allocated[0] += 4000

        def unload(self) -> None:
            allocated[0] -= self.gives_back

    clean = OnGPU(gives_back=4000)
    clean.load()
    clean.unload()
    report = stepfsm.lifecycle(clean).last_release
    assert report is not None
    assert (report.cuda_before, report.cuda_after) == (1000, 1000)
    assert report.bytes_freed == 4000
    assert not report.leaked
    assert emptied == [1000]  # a clean unload gives the cache back

    leaky = OnGPU(gives_back=1000)
    leaky.load()
    warning = leak_of(leaky)
    assert [(item.attribute, item.size) for item in warning.leaked] == [("CUDA memory", 3000)]
    assert emptied == [1000]  # not after a leak
    assert _release.cuda_allocated() == 4000


# ------------------------------------------- every unload, not only unload()


def test_reload_and_with_loaded_check_their_unload_too() -> None:
    step = Model("reloaded")
    step.load()
    kept = step.model
    with pytest.warns(LeakWarning, match="model"):
        stepfsm.reload(step)
    assert stepfsm.lifecycle(step).last_release is not None
    step.unload()
    held: list[Any] = []
    with pytest.warns(LeakWarning, match="shards"), stepfsm.loaded(step):
        held.append(step.shards[0] if step.shards else None)
    assert stepfsm.state(step) is State.UNLOADED
    del kept, held


def test_a_group_unload_checks_each_step() -> None:
    a, b = Model("ga"), Model("gb")
    group = stepfsm.group(a, b)
    group.load()
    kept = b.model
    with pytest.warns(LeakWarning, match="Model 'gb'"):
        group.unload()
    assert stepfsm.lifecycle(a).last_release is not None
    assert not stepfsm.lifecycle(a).last_release.leaked
    del kept


def test_a_child_released_by_its_parents_unload_is_checked_after_the_parent() -> None:
    """The child's check waits for the parent's unload to end: a leak in the child is
    reported after it, and cannot turn into the parent's UnloadError."""
    child = Model("child")
    kept: list[Any] = []

    @stepfsm.stateful
    class Parent:
        name = "parent"

        def load(self) -> None:
            child.load()  # a hold on the child, taken by this load
            kept.append(child.model)

        def unload(self) -> None:
            child.unload()  # lets go of that hold: the child unloads here
            assert stepfsm.state(child) is State.UNLOADED

    parent = Parent()
    parent.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)  # as under pytest's -W error
        with pytest.raises(LeakWarning, match="Model 'child'"):
            parent.unload()
    assert stepfsm.state(parent) is State.UNLOADED  # the parent's unload succeeded
    assert stepfsm.state(child) is State.UNLOADED
    del kept[:]
