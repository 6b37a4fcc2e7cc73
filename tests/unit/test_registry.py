"""The per-process registry, status(), duplicate loads, history, listeners and logging."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import pytest

import stepfsm
from stepfsm import DuplicateLoadWarning, State, registry
from stepfsm.machine import load_method
from tests.conftest import FakeStep
from tests.fakes import Boom, Step


@stepfsm.stateful
class Configured:
    """A plain class with value equality: same configuration = equal."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.weights: object = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Configured) and other.model == self.model

    __hash__ = None  # type: ignore[assignment]

    def load(self) -> None:
        self.weights = object()

    def unload(self) -> None:
        self.weights = None


def test_lifecycles_are_created_lazily_and_tracked_weakly() -> None:
    """A lifecycle exists only once asked for, and goes away with its object."""
    obj = FakeStep("temp")
    assert registry.find(obj) is None
    lc = stepfsm.lifecycle(obj)
    assert stepfsm.lifecycle(obj) is lc
    assert registry.find(obj) is lc
    del obj
    gc.collect()
    assert all(other is not lc for other in registry.live())
    assert lc.step is None
    assert lc.name == "<dead step>"


def test_status_lists_live_steps_as_a_table() -> None:
    """status() rows carry name, class, state, since and load time; str() is a table."""
    a, b = FakeStep("alpha"), FakeStep("beta")
    a.load()
    stepfsm.lifecycle(b)
    rows = {row.name: row for row in stepfsm.status()}
    assert rows["FakeStep 'alpha'"].state is State.LOADED
    assert rows["FakeStep 'alpha'"].load_seconds is not None
    assert rows["FakeStep 'beta'"].state is State.UNLOADED
    assert rows["FakeStep 'beta'"].since is None
    text = str(stepfsm.status())
    lines = text.splitlines()
    assert lines[0].split() == [
        "step",
        "class",
        "state",
        "since",
        "last",
        "load",
        "holders",
        "holds",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert any("FakeStep 'alpha'" in line and "loaded" in line for line in lines)
    assert repr(stepfsm.status()) == str(stepfsm.status())
    html = stepfsm.status()._repr_html_()
    assert html.startswith("<table>")
    assert "<td>FakeStep &#x27;alpha&#x27;</td>" in html


def test_status_of_nothing_says_so() -> None:
    """With no live stateful step, status() says so in words."""
    assert str(registry.Status([])) == "no stateful steps are alive in this process"


def test_unnamed_steps_are_shown_by_class_and_address() -> None:
    """A step without a name attribute is shown as 'Class at 0x…'."""
    obj = Configured("m")
    assert stepfsm.lifecycle(obj).name == f"Configured at {id(obj):#x}"


def test_duplicate_load_of_same_configuration_warns() -> None:
    """Loading a second equal object while the first is loaded warns, naming the first."""
    first = Configured("llama")
    first.load()
    second = Configured("llama")
    with pytest.warns(DuplicateLoadWarning) as record:
        second.load()
    message = str(record[0].message)
    assert f"Configured at {id(second):#x} has the same configuration as" in message
    assert f"Configured at {id(first):#x}, which is still loaded" in message
    assert "stepfsm.unload_all()" in message
    assert record[0].filename == __file__
    other = Configured("mistral")
    other.load()  # a different configuration: no warning (filterwarnings=error would fail)


def test_identity_equality_never_counts_as_duplicate() -> None:
    """Objects that only compare by identity are never duplicates."""
    one, two = FakeStep("same"), FakeStep("same")
    one.load()
    two.load()
    assert stepfsm.is_loaded(two)


def test_duplicate_check_survives_a_broken_eq() -> None:
    """An __eq__ that raises is treated as 'different', never breaking the load."""

    @stepfsm.stateful
    class Broken:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

        __hash__ = None  # type: ignore[assignment]

        def load(self) -> None: ...
        def unload(self) -> None: ...

    a, b = Broken(), Broken()
    a.load()
    b.load()
    assert stepfsm.is_loaded(b)


def test_history_records_every_transition(step: FakeStep) -> None:
    """history holds trigger, source, destination, times, thread and error."""
    step.load()
    step.fail_unload = Boom("x")
    with pytest.raises(stepfsm.UnloadError):
        step.unload()
    records = stepfsm.lifecycle(step).history
    assert [(r.trigger, r.source, r.dest) for r in records] == [
        ("begin_load", State.UNLOADED, State.LOADING),
        ("finish_load", State.LOADING, State.LOADED),
        ("begin_unload", State.LOADED, State.UNLOADING),
        ("fail", State.UNLOADING, State.FAILED),
    ]
    assert records[1].started == records[0].started
    assert records[1].duration >= 0
    assert records[0].duration == 0.0
    assert isinstance(records[3].error, Boom)
    assert stepfsm.lifecycle(step).last_load_seconds == records[1].duration


def test_listeners_get_each_transition_and_can_unsubscribe(step: FakeStep) -> None:
    """Per-lifecycle and global listeners see every transition; unsubscribing stops them."""
    seen: list[tuple[str, str]] = []
    everywhere: list[str] = []
    stop = stepfsm.lifecycle(step).subscribe(lambda lc, r: seen.append((lc.name, r.trigger)))
    stop_all = stepfsm.subscribe(lambda lc, r: everywhere.append(r.trigger))
    step.load()
    step.unload()
    assert seen == [
        ("FakeStep 'gen_0'", "begin_load"),
        ("FakeStep 'gen_0'", "finish_load"),
        ("FakeStep 'gen_0'", "begin_unload"),
        ("FakeStep 'gen_0'", "finish_unload"),
    ]
    assert everywhere == [t for _, t in seen]
    stop()
    stop_all()
    step.load()
    assert len(seen) == 4
    assert len(everywhere) == 4


def test_listener_sees_begin_before_the_load_runs(step: FakeStep) -> None:
    """A listener hears begin_load before the user's load code starts."""
    order: list[str] = []
    stepfsm.lifecycle(step).subscribe(lambda lc, r: order.append(r.trigger))
    real_load = FakeStep.load.__wrapped__  # type: ignore[attr-defined]

    def load_spy(self: FakeStep) -> None:
        order.append("user load")
        real_load(self)

    load_method(load_spy)(step)
    assert order == ["begin_load", "user load", "finish_load"]


def test_raising_listener_is_logged_not_propagated(
    step: FakeStep, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged and the step carries on."""

    def bad(lc: Any, record: Any) -> None:
        raise RuntimeError("listener bug")

    stepfsm.lifecycle(step).subscribe(bad)
    with caplog.at_level(logging.ERROR, logger="stepfsm"):
        step.load()
    assert stepfsm.is_loaded(step)
    assert "listener" in caplog.text
    assert "listener bug" in caplog.text


def test_subscribe_rejects_non_callables(step: FakeStep) -> None:
    """subscribe() needs a callable, and says what it got."""
    with pytest.raises(TypeError, match=r"fn\(lifecycle, record\), but 3 is a int, not a function"):
        stepfsm.subscribe(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"but 'x' is a str, not a function"):
        stepfsm.lifecycle(step).subscribe("x")  # type: ignore[arg-type]


def test_logger_reports_transitions_and_durations(
    step: FakeStep, caplog: pytest.LogCaptureFixture
) -> None:
    """Logger 'stepfsm': DEBUG per transition, INFO per load/unload, WARNING per failure."""
    with caplog.at_level(logging.DEBUG, logger="stepfsm"):
        step.load()
        step.unload()
        step.fail_load = Boom("oom")
        with pytest.raises(stepfsm.LoadError):
            step.load()
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("DEBUG", "FakeStep 'gen_0': begin_load unloaded -> loading") in levels
    assert any(
        lvl == "INFO" and msg.startswith("loaded FakeStep 'gen_0' in ") for lvl, msg in levels
    )
    assert any(
        lvl == "INFO" and msg.startswith("unloaded FakeStep 'gen_0' in ") for lvl, msg in levels
    )
    assert (
        "WARNING",
        "load of FakeStep 'gen_0' failed with Boom: oom; the step is now 'failed'",
    ) in levels


def test_logger_at_info_reports_loads_and_unloads_only(
    step: FakeStep, caplog: pytest.LogCaptureFixture
) -> None:
    """At INFO: one line per load and per unload, with its duration; no transition lines."""
    with caplog.at_level(logging.INFO, logger="stepfsm"):
        step.load()
        step.unload()
    messages = [(r.levelname, r.getMessage().split(" in ")[0]) for r in caplog.records]
    assert messages == [("INFO", "loaded FakeStep 'gen_0'"), ("INFO", "unloaded FakeStep 'gen_0'")]
    seconds = float(caplog.records[0].getMessage().split(" in ")[1].removesuffix(" s"))
    assert seconds == pytest.approx(stepfsm.lifecycle(step).last_load_seconds, abs=1e-3)


def test_history_records_are_the_objects_listeners_got(step: FakeStep) -> None:
    """Reading the history twice gives the same record objects, the ones listeners were given
    (the testing kit finds "what ran since" by identity)."""
    lc = stepfsm.lifecycle(step)
    got: list[stepfsm.TransitionRecord] = []
    lc.subscribe(lambda _lc, record: got.append(record))
    step.load()
    step.unload()
    first, second = lc.history, lc.history
    assert len(first) == 4
    assert all(a is b for a, b in zip(first, second, strict=True))
    assert all(a is b for a, b in zip(got, first, strict=True)), "listeners got other objects"
    assert lc.last_load_seconds == first[1].duration


def test_lifecycle_repr_and_since(step: FakeStep) -> None:
    """A lifecycle's repr names the step, its state and since when."""
    lc = stepfsm.lifecycle(step)
    assert repr(lc) == "<Lifecycle of FakeStep 'gen_0': unloaded>"
    step.load()
    assert repr(lc).startswith("<Lifecycle of FakeStep 'gen_0': loaded since ")
    assert lc.since is not None


def test_status_renders_in_jupyter_with_the_table() -> None:
    """status()'s Jupyter bundle is the HTML table (plus the SVG diagram when dot exists)."""
    import shutil

    a = FakeStep("alpha")
    a.load()
    bundle = stepfsm.status()._repr_mimebundle_()
    assert "FakeStep 'alpha'" in bundle["text/plain"]
    assert bundle["text/plain"].startswith("step ")
    assert bundle["text/html"].startswith("<table>")
    assert "<td>loaded</td>" in bundle["text/html"]
    if shutil.which("dot"):
        assert "<svg" in bundle["text/html"]
        assert "loaded (1)" in bundle["text/html"]


def test_transitions_logs_nothing_about_stepfsms_machine(
    step: FakeStep, caplog: pytest.LogCaptureFixture
) -> None:
    """stepfsm's engine states and events log nothing through transitions' logger
    (stepfsm logs its transitions itself), and nothing filters the records of the
    user's own machines."""
    from transitions import Machine

    with caplog.at_level(logging.DEBUG):
        step.load()
        step.unload()
        step.fail_load = RuntimeError("planned")
        with pytest.raises(stepfsm.LoadError):
            step.load()
        step.unload()  # the clean-up of the failed step
        model = type("Model", (), {})()
        Machine(model, states=["a", "b"], initial="a", name="mine")
        model.to_b()  # type: ignore[attr-defined]
    engine = [r.getMessage() for r in caplog.records if r.name == "transitions.core"]
    assert engine
    assert all(m.startswith("mine: ") for m in engine), engine
    assert logging.getLogger("transitions.core").filters == []


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda: registry.forget_where(lambda step: False), id="forget_where"),
        pytest.param(registry.live, id="live"),
        pytest.param(stepfsm.status, id="status"),
        pytest.param(stepfsm.unload_all, id="unload_all"),
    ],
)
def test_registry_reads_survive_steps_dying_mid_iteration(read: Callable[[], object]) -> None:
    """A garbage collection inside a read of the tables may run the weakref callbacks of

    dying steps, which remove their entries: the read must not see the table change size
    (found in CI: ``RuntimeError: dictionary changed size during iteration``).
    """
    # more entries than CPython's free list of 2-tuples, so iterating allocates
    keep = [Step(f"s{i}") for i in range(5000)]
    for step in keep:
        stepfsm.lifecycle(step)

    def drop_one(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and keep:
            keep.pop()  # its last reference: the weakref callback runs now

    threshold = gc.get_threshold()
    gc.callbacks.append(drop_one)
    gc.set_threshold(1)  # a collection at every allocation of a tracked object
    try:
        read()
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(drop_one)
    assert len(keep) < 5000, "no collection ran during the read: the test proves nothing"


def test_a_refused_operation_does_not_move_a_step_in_the_load_order() -> None:
    """A refused load() of a loaded step leaves its place in unload_all()'s order alone."""
    first, second = FakeStep("first"), FakeStep("second")
    first.load()
    second.load()
    with pytest.raises(stepfsm.AlreadyLoadedError):
        first.load()  # refused; its recovery path must not re-register the step
    assert list(stepfsm.unload_all()) == ["FakeStep 'second'", "FakeStep 'first'"]
