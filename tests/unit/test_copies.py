"""Copies and processes: pickle, copy, deepcopy, pydantic model_copy and os.fork.

docs/design.md §5: a loaded state belongs to the process that loaded it. Every
copy (pickle, ``copy.copy``, ``copy.deepcopy``, ``model_copy``) and every
object seen in a forked child starts ``unloaded`` with a fresh lock and no
holders. Copies carry configuration, not resources: what the step's own load
set goes into a copy with its pre-load value, an attribute the load added is
left out, a value the user changed after the load is kept, and an in-place
mutation made during the load is carried (the documented limit). In a forked
child the attributes are left exactly as they were.
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

import stepfsm
from stepfsm import (
    DuplicateLoadWarning,
    Lifecycle,
    LoadError,
    ReleasedObject,
    State,
    StepStateError,
    UnloadError,
    errors,
    registry,
)
from tests.conftest import FakeStep
from tests.fakes import Boom
from tests.support import holding, under_claim

pydantic = pytest.importorskip("pydantic")
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError  # noqa: E402

# ---------------------------------------------------------------- test steps

#: Gates a test can put in a FileStep's load or unload: (id(step), "load"/"unload") -> event.
#: Kept outside the step so that the step itself still pickles.
GATES: dict[tuple[int, str], threading.Event] = {}


def wait_at_gate(step: object, where: str) -> None:
    gate = GATES.get((id(step), where))
    if gate is not None:
        assert gate.wait(10), "test gate never opened"


@stepfsm.stateful(guard=("read",))
class FileStep:
    """A plain step whose load opens a file (unpicklable) and sets or adds attributes."""

    def __init__(self, path: Path, name: str = "reader") -> None:
        self.name = name
        self.path = path
        self.fh: TextIO | None = None  # set by load: an open file cannot be pickled
        self.mode = "cold"  # replaced by load
        self.items: list[str] = []  # mutated in place by load (not tracked)
        self.fail_after_open: BaseException | None = None
        self.fail_unload: BaseException | None = None

    def load(self) -> None:
        self.fh = open(self.path)  # noqa: SIM115 - the handle is the resource
        self.mode = "warm"
        self.cache = {"added": "by load"}  # an attribute the load adds
        self.items.append("seen by load")
        wait_at_gate(self, "load")
        if self.fail_after_open is not None:
            raise self.fail_after_open

    def unload(self) -> None:
        wait_at_gate(self, "unload")
        if self.fail_unload is not None:
            raise self.fail_unload
        if self.fh is not None:
            self.fh.close()
        self.fh = None
        self.mode = "cold"
        self.__dict__.pop("cache", None)

    def read(self) -> str:
        assert self.fh is not None
        self.fh.seek(0)
        return self.fh.read()


class SubFileStep(FileStep):
    """A subclass whose own load override sets one more resource."""

    def load(self) -> None:
        super().load()
        self.lock = threading.Lock()  # unpicklable, added by the subclass's load

    def unload(self) -> None:
        super().unload()
        self.lock = None  # else the release check reports the lock still held


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "weights.txt"
    path.write_text("w" * 64)
    return path


@pytest.fixture
def loaded_file_step(data_file: Path) -> Iterator[FileStep]:
    """A FileStep that is loaded (and is closed again at the end)."""
    step = FileStep(data_file)
    step.load()
    yield step
    if stepfsm.state(step) is not State.UNLOADED:
        step.fail_unload = None
        stepfsm.lifecycle(step).unload(force=True)


def pickle_copy(obj: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> Any:
    return pickle.loads(pickle.dumps(obj, protocol=protocol))


COPIERS = [
    pytest.param(pickle_copy, id="pickle"),
    pytest.param(copy.copy, id="copy"),
    pytest.param(copy.deepcopy, id="deepcopy"),
]


def assert_fresh(lc: Lifecycle, original: Lifecycle | None = None) -> None:
    """``lc`` is a brand-new, unloaded lifecycle: its own free lock, no holders, no history."""
    assert lc.state is State.UNLOADED
    assert lc.holders == ()
    assert lc.error is None
    assert lc.history == ()
    assert lc.statistics().owner is None
    if original is not None:
        assert lc is not original
        assert original.statistics().owner is None or lc.statistics().owner is None


# ------------------------------------------------------ plain classes: copies


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_unloaded_step_is_unloaded_with_its_own_lifecycle(
    data_file: Path, copier: Callable[[Any], Any]
) -> None:
    """A copy of an unloaded step is unloaded, equal in configuration, with its own lifecycle."""
    step = FileStep(data_file)
    original = stepfsm.lifecycle(step)
    twin = copier(step)
    assert_fresh(stepfsm.lifecycle(twin), original)
    assert (twin.path, twin.fh, twin.mode, twin.items) == (data_file, None, "cold", [])


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_loaded_step_is_unloaded_without_the_open_file(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """A copy of a step whose load opened a file is unloaded and has the pre-load None."""
    twin = copier(loaded_file_step)
    assert_fresh(stepfsm.lifecycle(twin), stepfsm.lifecycle(loaded_file_step))
    assert twin.fh is None
    assert twin.mode == "cold"
    assert twin.name == "reader"
    with pytest.raises(stepfsm.NotLoadedError, match=r"FileStep 'reader' is not loaded"):
        twin.read()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_loaded_step_pickles_under_every_protocol(
    loaded_file_step: FileStep, protocol: int
) -> None:
    """Every pickle protocol leaves the open file out of a loaded step's pickle."""
    twin = pickle_copy(loaded_file_step, protocol)
    assert (twin.fh, twin.mode, stepfsm.state(twin)) == (None, "cold", State.UNLOADED)


@pytest.mark.parametrize("copier", COPIERS)
def test_attribute_added_by_load_is_absent_from_the_copy(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """An attribute the load added is left out of a copy."""
    twin = copier(loaded_file_step)
    assert not hasattr(twin, "cache")
    assert loaded_file_step.cache == {"added": "by load"}


@pytest.mark.parametrize("copier", COPIERS)
def test_attribute_changed_after_load_keeps_the_users_value(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """An attribute the user changed after the load keeps the user's value in a copy."""
    loaded_file_step.mode = "tuned by hand"
    loaded_file_step.cache = {"set": "by the user"}
    twin = copier(loaded_file_step)
    assert twin.mode == "tuned by hand"
    assert twin.cache == {"set": "by the user"}
    assert twin.fh is None  # still reverted: the user did not touch it


@pytest.mark.parametrize("copier", COPIERS)
def test_in_place_mutation_during_load_is_carried(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """An in-place mutation made by the load is carried into a copy (the documented limit)."""
    twin = copier(loaded_file_step)
    assert twin.items == ["seen by load"]


@pytest.mark.parametrize("copier", COPIERS)
def test_original_stays_loaded_and_intact_after_copying(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """Copying a loaded step leaves the original loaded, with its file open and its attributes."""
    before = dict(vars(loaded_file_step))
    copier(loaded_file_step)
    lc = stepfsm.lifecycle(loaded_file_step)
    assert lc.state is State.LOADED
    assert vars(loaded_file_step) == before
    assert loaded_file_step.fh is before["fh"]
    assert not loaded_file_step.fh.closed
    assert loaded_file_step.read() == "w" * 64


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_held_step_has_no_holders(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """A copy of a step with holders starts with none; the original keeps its holders."""
    lc = stepfsm.lifecycle(loaded_file_step)
    lc.acquire("worker-1")
    twin = copier(loaded_file_step)
    assert stepfsm.lifecycle(twin).holders == ()
    with pytest.raises(StepStateError, match=r"has no hold by 'worker-1' to release"):
        stepfsm.lifecycle(twin).release("worker-1")
    assert lc.holders == ("'worker-1'",)
    lc.release("worker-1")


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_loads_and_unloads_on_its_own(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """A copy loads its own resource and unloads it without touching the original's."""
    twin = copier(loaded_file_step)
    twin.load()
    assert twin.fh is not None
    assert twin.fh is not loaded_file_step.fh
    assert twin.read() == loaded_file_step.read()
    twin.unload()
    assert stepfsm.state(twin) is State.UNLOADED
    assert stepfsm.state(loaded_file_step) is State.LOADED
    assert not loaded_file_step.fh.closed


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_a_copy_of_a_reloaded_step_has_pre_load_values(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """After a reload, copies still get the values from before the latest load."""
    stepfsm.reload(loaded_file_step)
    twin = copier(copier(loaded_file_step))
    assert (twin.fh, twin.mode, hasattr(twin, "cache")) == (None, "cold", False)


@pytest.mark.parametrize("copier", COPIERS)
def test_subclass_copy_leaves_out_what_its_own_load_added(
    data_file: Path, copier: Callable[[Any], Any]
) -> None:
    """A subclass of a stateful class copies without what its own load override added."""
    step = SubFileStep(data_file, name="sub")
    step.load()
    try:
        twin = copier(step)
        assert (twin.fh, hasattr(twin, "lock"), stepfsm.state(twin)) == (
            None,
            False,
            State.UNLOADED,
        )
    finally:
        step.unload()


@pytest.mark.timeout(10)
def test_pickling_does_not_take_the_steps_lock(loaded_file_step: FileStep) -> None:
    """Pickling a step whose lock is held elsewhere neither blocks nor deadlocks."""
    lc = stepfsm.lifecycle(loaded_file_step)
    with holding(lc):
        twin = pickle_copy(loaded_file_step)
        shallow = copy.copy(loaded_file_step)
    assert (twin.fh, shallow.fh) == (None, None)


@pytest.mark.timeout(10)
def test_copy_while_another_thread_loads_is_unloaded() -> None:
    """A copy made while another thread is loading the original starts unloaded."""
    step = FakeStep("gen_0")
    gate = threading.Event()
    step.gate = gate
    loader = threading.Thread(target=step.load, daemon=True)
    loader.start()
    deadline = time.monotonic() + 5
    while step.loads < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert stepfsm.state(step) is State.LOADING
    twin = copy.copy(step)
    gate.set()
    loader.join(5)
    assert not loader.is_alive()
    assert_fresh(stepfsm.lifecycle(twin), stepfsm.lifecycle(step))
    assert twin.handle is None
    assert stepfsm.state(step) is State.LOADED


def in_transition(step: FileStep, where: str) -> tuple[threading.Event, threading.Thread]:
    """Start ``step``'s load or unload in another thread; return once it waits at its gate."""
    gate = GATES[(id(step), where)] = threading.Event()
    thread = threading.Thread(target=getattr(step, where), daemon=True)
    thread.start()
    expected = State.LOADING if where == "load" else State.UNLOADING
    deadline = time.monotonic() + 5
    while not (stepfsm.state(step) is expected and (where == "unload" or step.items)):
        assert time.monotonic() < deadline, f"the {where} never started"
        time.sleep(0.001)
    return gate, thread


def open_gate(step: FileStep, where: str, gate: threading.Event, thread: threading.Thread) -> None:
    gate.set()
    thread.join(5)
    assert not thread.is_alive()
    del GATES[(id(step), where)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("copier", COPIERS)
def test_copy_while_another_thread_unloads_leaves_out_the_resource(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """A copy made while another thread is unloading the step has the pre-load values."""
    gate, thread = in_transition(loaded_file_step, "unload")
    try:
        twin = copier(loaded_file_step)
    finally:
        open_gate(loaded_file_step, "unload", gate, thread)
    assert_fresh(stepfsm.lifecycle(twin))
    assert (twin.fh, twin.mode, hasattr(twin, "cache")) == (None, "cold", False)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("copier", COPIERS)
def test_copy_while_another_thread_loads_leaves_out_what_the_load_set_so_far(
    data_file: Path, copier: Callable[[Any], Any]
) -> None:
    """A copy made while another thread's load has opened the file has the pre-load values."""
    step = FileStep(data_file)
    gate, thread = in_transition(step, "load")
    try:
        assert step.fh is not None  # the running load has already opened the file
        twin = copier(step)
    finally:
        open_gate(step, "load", gate, thread)
        step.unload()
    assert_fresh(stepfsm.lifecycle(twin))
    assert (twin.fh, twin.mode, hasattr(twin, "cache")) == (None, "cold", False)


# ------------------------------------------------ failed steps (partial loads)


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_step_whose_load_failed_leaves_out_the_partial_resource(
    data_file: Path, copier: Callable[[Any], Any]
) -> None:
    """A step whose load opened a file and then raised copies without that file, unloaded."""
    step = FileStep(data_file)
    step.fail_after_open = Boom("tokenizer missing")
    with pytest.raises(LoadError, match="failed with Boom: tokenizer missing"):
        step.load()
    assert step.fh is not None  # `failed` may still hold part of the resource
    try:
        twin = copier(step)
        assert_fresh(stepfsm.lifecycle(twin), stepfsm.lifecycle(step))
        assert (twin.fh, twin.mode, hasattr(twin, "cache")) == (None, "cold", False)
    finally:
        step.unload()  # clean-up closes the file


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_step_whose_unload_failed_leaves_out_the_resource(
    loaded_file_step: FileStep, copier: Callable[[Any], Any]
) -> None:
    """A step whose unload raised (still holding its file) copies without the file, unloaded."""
    loaded_file_step.fail_unload = Boom("device busy")
    with pytest.raises(UnloadError, match="failed with Boom: device busy"):
        loaded_file_step.unload()
    assert loaded_file_step.fh is not None
    twin = copier(loaded_file_step)
    assert_fresh(stepfsm.lifecycle(twin))
    assert (twin.fh, twin.mode) == (None, "cold")


@stepfsm.stateful
class SlottedStep:
    """A step that keeps its resource in a slot instead of ``__dict__``."""

    __slots__ = ("__weakref__", "handle", "name")

    def __init__(self) -> None:
        self.name = "slotted"
        self.handle: Any = None

    def load(self) -> None:
        self.handle = threading.Lock()  # unpicklable

    def unload(self) -> None:
        self.handle = None


@pytest.mark.parametrize("copier", COPIERS)
def test_copy_of_loaded_slotted_step_has_the_pre_load_slot_value(
    copier: Callable[[Any], Any],
) -> None:
    """A slot attribute set by the load goes into a copy with its pre-load value."""
    step = SlottedStep()
    step.load()
    twin = copier(step)
    assert (twin.handle, twin.name, stepfsm.state(twin)) == (None, "slotted", State.UNLOADED)


# -------------------------------------------------------------- pydantic v2


class Unpicklable:
    """A stand-in for a CUDA context: cannot be pickled or deep-copied."""

    def __reduce__(self) -> Any:
        raise TypeError("a device context cannot be pickled")


@stepfsm.stateful(guard=("embed",))
class Embedder(BaseModel):
    """A pydantic v2 step that keeps its client in private attributes set by load."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "embedder"
    dim: int = 4
    tags: list[str] = []
    _client: Any = PrivateAttr(default=None)
    _warmups: int = PrivateAttr(default=0)

    def load(self) -> None:
        self._client = Unpicklable()
        self._warmups += 1

    def unload(self) -> None:
        self._client = None

    def embed(self, text: str) -> list[int]:
        assert self._client is not None
        return [len(text)] * self.dim


#: Resources of OffsiteEmbedder, kept outside the model: id(model) -> resource.
OFFSITE: dict[int, object] = {}


@stepfsm.stateful
class OffsiteEmbedder(BaseModel):
    """A pydantic step whose load keeps its resource outside the model (no private attrs)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "offsite"
    dim: int = 4

    def load(self) -> None:
        OFFSITE[id(self)] = Unpicklable()

    def unload(self) -> None:
        OFFSITE.pop(id(self), None)


MODEL_COPIERS = [
    pytest.param(lambda m: m.model_copy(), id="model_copy"),
    pytest.param(lambda m: m.model_copy(deep=True), id="model_copy-deep"),
    pytest.param(copy.copy, id="copy"),
    pytest.param(copy.deepcopy, id="deepcopy"),
    pytest.param(pickle_copy, id="pickle"),
]


@pytest.fixture
def embedder() -> Iterator[Embedder]:
    model = Embedder(name="emb_0", dim=3, tags=["a"])
    yield model
    if stepfsm.state(model) is not State.UNLOADED:
        stepfsm.lifecycle(model).unload(force=True)


def test_pydantic_model_loads_and_unloads(embedder: Embedder) -> None:
    """A decorated pydantic model loads, runs guarded methods and unloads."""
    with pytest.raises(stepfsm.NotLoadedError, match=r"Embedder 'emb_0' is not loaded"):
        embedder.embed("hi")
    embedder.load()
    assert stepfsm.state(embedder) is State.LOADED
    assert embedder.embed("hi") == [2, 2, 2]
    assert isinstance(embedder._client, Unpicklable)
    embedder.unload()
    assert (stepfsm.state(embedder), embedder._client) == (State.UNLOADED, None)


def test_pydantic_config_still_applies_while_loaded(embedder: Embedder) -> None:
    """extra="forbid" and validate_assignment keep working on a stateful, loaded model."""
    embedder.load()
    embedder.dim = 5
    assert embedder.dim == 5
    with pytest.raises(ValidationError, match="dim"):
        embedder.dim = "five"  # type: ignore[assignment]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Embedder(name="x", unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="Object has no attribute 'surprise'"):
        embedder.surprise = 1  # type: ignore[attr-defined]


def test_model_dump_is_the_same_in_every_state(embedder: Embedder) -> None:
    """model_dump() and model_dump_json() hold only the fields, whatever the lifecycle state."""
    expected = {"name": "emb_0", "dim": 3, "tags": ["a"]}
    dumps = [embedder.model_dump()]
    stepfsm.lifecycle(embedder)
    dumps.append(embedder.model_dump())
    embedder.load()
    dumps.append(embedder.model_dump())
    assert embedder.model_dump_json() == '{"name":"emb_0","dim":3,"tags":["a"]}'
    assert embedder.model_fields_set == {"name", "dim", "tags"}
    embedder.unload()
    dumps.append(embedder.model_dump())
    assert dumps == [expected] * 4


def test_equality_ignores_the_lifecycle() -> None:
    """Two models with the same fields compare equal whatever their lifecycles hold."""
    fresh, used, configured = Embedder(), Embedder(), Embedder()
    used.load()
    used.unload()
    used._warmups = 0  # pydantic compares private attributes; put back what the load changed
    stepfsm.lifecycle(configured).on_repeat = "warn"
    assert stepfsm.lifecycle(used).history  # its lifecycle has a history, fresh's has none
    assert fresh == used == configured


def test_equality_is_the_same_loaded_or_not() -> None:
    """A loaded model equals its unloaded twin when its resource lives outside the model."""
    loaded_one, twin = OffsiteEmbedder(), OffsiteEmbedder()
    loaded_one.load()
    try:
        assert stepfsm.state(loaded_one) is State.LOADED
        assert loaded_one == twin
        assert loaded_one.model_dump() == twin.model_dump()
    finally:
        loaded_one.unload()


def test_failed_model_equals_a_fresh_one() -> None:
    """A model whose load failed before setting anything equals a fresh one."""

    class Fragile(Embedder):
        def load(self) -> None:
            raise Boom("no GPU")

    fragile = Fragile()
    with pytest.raises(LoadError, match="Boom: no GPU"):
        fragile.load()
    assert stepfsm.state(fragile) is State.FAILED
    assert fragile == Fragile()
    assert fragile.model_dump() == Fragile().model_dump()


@pytest.mark.parametrize("copier", MODEL_COPIERS)
def test_copy_of_loaded_model_is_unloaded_with_pre_load_private_attrs(
    embedder: Embedder, copier: Callable[[Any], Any]
) -> None:
    """model_copy, copy, deepcopy and pickle of a loaded model give an unloaded copy."""
    embedder.load()
    twin = copier(embedder)
    assert_fresh(stepfsm.lifecycle(twin), stepfsm.lifecycle(embedder))
    assert twin.__pydantic_private__ == {"_client": None, "_warmups": 0}
    assert twin.model_dump() == embedder.model_dump()
    with pytest.raises(stepfsm.NotLoadedError, match="is not loaded"):
        twin.embed("x")
    # the original is untouched
    assert stepfsm.state(embedder) is State.LOADED
    assert isinstance(embedder._client, Unpicklable)
    assert embedder._warmups == 1


@pytest.mark.parametrize("copier", MODEL_COPIERS)
def test_copy_of_unloaded_model_is_a_plain_copy(
    embedder: Embedder, copier: Callable[[Any], Any]
) -> None:
    """A copy of a model that was never loaded is an ordinary, equal, unloaded copy."""
    twin = copier(embedder)
    assert twin == embedder
    assert twin is not embedder
    assert_fresh(stepfsm.lifecycle(twin), stepfsm.lifecycle(embedder))


@pytest.mark.parametrize("copier", MODEL_COPIERS)
def test_private_attr_changed_after_load_keeps_the_users_value(
    embedder: Embedder, copier: Callable[[Any], Any]
) -> None:
    """A private attribute the user changed after the load keeps the user's value in a copy."""
    embedder.load()
    embedder._warmups = 10
    twin = copier(embedder)
    assert twin.__pydantic_private__ == {"_client": None, "_warmups": 10}


@pytest.mark.parametrize("copier", MODEL_COPIERS)
def test_field_changed_after_load_is_carried(
    embedder: Embedder, copier: Callable[[Any], Any]
) -> None:
    """A field changed after the load is configuration and goes into the copy."""
    embedder.load()
    embedder.tags = ["b", "c"]
    twin = copier(embedder)
    assert twin.tags == ["b", "c"]


def test_model_copy_with_update_is_unloaded(embedder: Embedder) -> None:
    """model_copy(update=...) of a loaded model is unloaded, with the update applied."""
    embedder.load()
    twin = embedder.model_copy(update={"dim": 8})
    assert (twin.dim, twin._client, stepfsm.state(twin)) == (8, None, State.UNLOADED)


@pytest.mark.parametrize("copier", MODEL_COPIERS)
def test_model_copy_loads_on_its_own_with_a_duplicate_warning(
    embedder: Embedder, copier: Callable[[Any], Any]
) -> None:
    """A copy of a loaded model loads its own client, warning that the original is loaded too."""
    embedder.load()
    twin = copier(embedder)
    with pytest.warns(DuplicateLoadWarning, match=r"has the same configuration as Embedder"):
        twin.load()
    try:
        assert twin._client is not embedder._client
        assert twin.embed("abc") == [3, 3, 3]
    finally:
        twin.unload()
    assert stepfsm.state(embedder) is State.LOADED


# ---------------------------------------------------------------- os.fork

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available")


def run_in_child(check: Callable[[], None], timeout: float = 20.0) -> None:
    """Fork; run ``check`` in the child and fail here with its traceback if it raised."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read_fd)
            check()
            message, code = b"ok", 0
        except BaseException:
            message = traceback.format_exc().encode()
        finally:
            try:
                os.write(write_fd, message[-60_000:])
            finally:
                os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            raise AssertionError(f"the forked child did not finish in {timeout} s: deadlock?")
        time.sleep(0.005)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, f"the child failed:\n{report}"
    assert report == "ok"


class Scene:
    """Steps in every situation at fork time, and the threads that keep them there."""

    def __init__(self, data_file: Path) -> None:
        self.loaded = FakeStep("loaded")
        self.loaded.load()
        self.held = FakeStep("held")
        stepfsm.lifecycle(self.held).acquire("parent")
        self.failed = FakeStep("failed")
        self.failed.fail_load = Boom("no GPU")
        with pytest.raises(LoadError, match="Boom: no GPU"):
            self.failed.load()
        self.file = FileStep(data_file)
        self.file.load()
        self.model = Embedder(name="forked")
        self.model.load()
        self.mid_load = FakeStep("mid_load")
        self.mid_unload = FakeStep("mid_unload")
        self.mid_unload.load()
        # the test keeps a copy of its attributes (the handle too) while another thread
        # unloads it: a leak the release check would rightly report
        stepfsm.lifecycle(self.mid_unload).on_leak = "ignore"
        self.locked = FakeStep("locked")
        self.gates = [threading.Event(), threading.Event()]
        self.mid_load.gate, self.mid_unload.gate = self.gates
        self.release_lock = threading.Event()
        lock_taken = threading.Event()
        locked = stepfsm.lifecycle(self.locked)

        def hold_lock() -> None:
            under_claim(locked, lambda: (lock_taken.set(), self.release_lock.wait(10)))

        self.threads = [
            threading.Thread(target=self.mid_load.load, daemon=True),
            threading.Thread(target=self.mid_unload.unload, daemon=True),
            threading.Thread(target=hold_lock, daemon=True),
        ]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 5
        while not (
            self.mid_load.loads == 1 and self.mid_unload.unloads == 1 and lock_taken.is_set()
        ):
            assert time.monotonic() < deadline, "the scene never got ready"
            time.sleep(0.001)
        assert stepfsm.state(self.mid_load) is State.LOADING
        assert stepfsm.state(self.mid_unload) is State.UNLOADING
        assert stepfsm.lifecycle(self.locked).statistics().owner is not None

    @property
    def steps(self) -> list[Any]:
        return [
            self.loaded,
            self.held,
            self.failed,
            self.file,
            self.model,
            self.mid_load,
            self.mid_unload,
            self.locked,
        ]

    def finish(self) -> None:
        self.release_lock.set()
        for gate in self.gates:
            gate.set()
        for thread in self.threads:
            thread.join(5)
            assert not thread.is_alive()
        self.mid_load.gate = self.mid_unload.gate = None


@fork_only
@pytest.mark.timeout(60)
def test_forked_child_sees_every_lifecycle_unloaded_with_attributes_kept(
    data_file: Path, request: pytest.FixtureRequest
) -> None:
    """In a forked child every lifecycle is unloaded, unlocked and unheld; attributes are kept."""
    # the snapshot below keeps every step's attributes (handles too) while the scene's
    # threads unload them: leaks the release check would rightly report
    leaks_ignored = stepfsm.configure(on_leak="ignore")
    request.addfinalizer(leaks_ignored.restore)
    scene = Scene(data_file)
    flag = "__stepfsm_loaded__"  # the guards' loaded flag: cleared in the child, like the state
    snapshot = {id(s): {k: v for k, v in vars(s).items() if k != flag} for s in scene.steps}
    private = dict(scene.model.__pydantic_private__ or {})

    def check() -> None:
        for step in scene.steps:
            lc = stepfsm.lifecycle(step)
            assert (lc.state, lc.holders, lc.error) == (State.UNLOADED, (), None), lc.name
            stats = lc.statistics()
            assert not stats.running_user_code, lc.name
            assert stats.owner is None, f"{lc.name}: still claimed in the child"
            assert lc.history == (), lc.name
            assert flag not in vars(step), f"{lc.name}: still flagged loaded in the child"
            assert vars(step) == snapshot[id(step)], f"{lc.name}: attributes changed"
        assert scene.model.__pydantic_private__ == private
        assert scene.loaded.handle is not None
        assert not scene.loaded.handle.closed
        assert not scene.file.fh.closed
        assert registry.loaded_table() == {}
        assert {row.state for row in stepfsm.status()} == {State.UNLOADED}

    try:
        run_in_child(check)
    finally:
        scene.finish()
    # the parent is untouched
    assert stepfsm.state(scene.loaded) is State.LOADED
    assert stepfsm.lifecycle(scene.held).holders == ("'parent'",)
    assert stepfsm.state(scene.failed) is State.FAILED
    assert stepfsm.state(scene.mid_load) is State.LOADED
    assert stepfsm.state(scene.mid_unload) is State.UNLOADED
    stepfsm.lifecycle(scene.held).release("parent")


@fork_only
@pytest.mark.timeout(60)
def test_forked_child_loads_and_unloads_its_own(data_file: Path) -> None:
    """A forked child can load, use and unload every step for itself, whatever its parent state."""
    scene = Scene(data_file)
    parent_handle = scene.loaded.handle

    def check() -> None:
        scene.mid_load.gate = scene.mid_unload.gate = None  # the parent's threads are not here
        scene.failed.fail_load = None
        for step in scene.steps:
            step.load()
            assert stepfsm.state(step) is State.LOADED
        assert scene.loaded.handle is not parent_handle
        assert scene.loaded.use(3) == 3
        assert scene.model.embed("ab") == [2, 2, 2, 2]
        with pytest.raises(StepStateError, match=r"has no hold by 'parent'"):
            stepfsm.lifecycle(scene.held).release("parent")
        for step in reversed(scene.steps):
            step.unload()
            assert stepfsm.state(step) is State.UNLOADED
        assert not parent_handle.closed

    try:
        run_in_child(check)
    finally:
        scene.finish()
    assert stepfsm.state(scene.loaded) is State.LOADED
    assert scene.loaded.handle is parent_handle
    assert not parent_handle.closed
    stepfsm.lifecycle(scene.held).release("parent")


@stepfsm.stateful
class Spawner:
    """A step whose load forks a worker (as a pipeline might), once."""

    def __init__(self) -> None:
        self.name = "spawner"
        self.resource: object | None = None
        self.child_check: Callable[[], None] | None = None

    def load(self) -> None:
        self.resource = object()
        check, self.child_check = self.child_check, None
        if check is not None:
            run_in_child(check)

    def unload(self) -> None:
        self.resource = None


@fork_only
@pytest.mark.timeout(60)
def test_fork_inside_a_load_gives_a_child_that_loads_normally() -> None:
    """A child forked from inside a load sees the step unloaded and can run a real load."""
    spawner = Spawner()

    def check() -> None:
        lc = stepfsm.lifecycle(spawner)
        assert (lc.state, lc.statistics().owner) == (State.UNLOADED, None)
        spawner.load()  # a real transition, not a pass-through of the parent's load
        assert [r.trigger for r in lc.history] == ["begin_load", "finish_load"]
        spawner.unload()
        assert lc.state is State.UNLOADED

    spawner.child_check = check
    spawner.load()
    assert stepfsm.state(spawner) is State.LOADED
    spawner.unload()


@stepfsm.stateful(guard=("use",))
class Busy:
    """A minimal step (no locks of its own, unlike the conftest doubles) for fork races."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.resource: object | None = None

    def load(self) -> None:
        self.resource = object()

    def unload(self) -> None:
        self.resource = None

    def use(self, x: int) -> int:
        assert self.resource is not None
        return x


@fork_only
@pytest.mark.timeout(60)
def test_forked_child_after_heavy_threading_is_not_deadlocked() -> None:
    """Forking while other threads load and unload steps never leaves a lock held in the child."""
    steps = [Busy(f"busy_{i}") for i in range(4)]
    stop = threading.Event()

    def churn(step: Busy) -> None:
        while not stop.is_set():
            with stepfsm.loaded(step):
                assert step.use(1) == 1

    threads = [threading.Thread(target=churn, args=(s,), daemon=True) for s in steps]
    for thread in threads:
        thread.start()

    def check() -> None:
        for step in steps:
            lc = stepfsm.lifecycle(step)
            assert lc.statistics().owner is None
            assert lc.state is State.UNLOADED
            with stepfsm.loaded(step):
                assert step.use(2) == 2
            assert lc.state is State.UNLOADED

    try:
        for _ in range(3):
            run_in_child(check)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert all(stepfsm.state(s) is State.UNLOADED for s in steps)


# --------------------------------------------------------------------- errors


def error_samples() -> dict[type[BaseException], BaseException]:
    """One instance of every error class stepfsm defines, built as stepfsm builds them."""
    cause = ValueError("CUDA out of memory")
    return {
        errors.StepFSMError: errors.StepFSMError("something went wrong"),
        errors.StepStateError: errors.StepStateError(
            "refused", step="FakeStep 'gen_0'", state=State.UNLOADED, operation="release"
        ),
        errors.AlreadyLoadedError: errors.AlreadyLoadedError("FakeStep 'gen_0'", 1.7e9, 2.25),
        errors.NotLoadedError: errors.NotLoadedError(
            "FakeStep 'gen_0'", State.UNLOADED, "use", 1.7e9
        ),
        errors.StepFailedError: errors.StepFailedError("FakeStep 'gen_0'", "use", cause, 1.7e9),
        errors.StepInUseError: errors.StepInUseError(
            "FakeStep 'gen_0'", State.LOADED, "unload", ("Task 't1'", "'worker'")
        ),
        errors.TransitionInProgressError: errors.TransitionInProgressError(
            "FakeStep 'gen_0'", State.LOADING, "load", 0.5
        ),
        errors.BudgetExceededError: errors.BudgetExceededError(
            "FakeStep 'gen_0'",
            State.UNLOADED,
            "gpu:0",
            16 * 2**30,
            12 * 2**30,
            8 * 2**30,
            [("FakeStep 'gen_1'", 12 * 2**30, "held by 'notebook'")],
            30.0,
        ),
        errors.TransitionError: errors.TransitionError("FakeStep 'gen_0'", "load", cause),
        errors.LoadError: errors.LoadError("FakeStep 'gen_0'", "load", cause),
        errors.GroupLoadError: errors.GroupLoadError(
            [("FakeStep 'gen_0'", errors.LoadError("FakeStep 'gen_0'", "load", cause))],
            ["FakeStep 'gen_1'"],
        ),
        errors.UnloadError: errors.UnloadError("FakeStep 'gen_0'", "unload", cause),
        errors.DefinitionError: errors.DefinitionError("FakeStep has no load() method"),
        errors.DiagramError: errors.DiagramError("Graphviz 'dot' is not installed"),
        errors.ResourceLeakError: errors.ResourceLeakError(
            "FakeStep 'gen_0'",
            [ReleasedObject("model", "torch.nn.Linear", 4096, ("Out[3]",))],
            4096,
        ),
    }


def comparable(error: BaseException) -> dict[str, Any]:
    """An error's attributes, with exceptions replaced by (type, args) so they compare."""
    return {
        key: (type(value), value.args) if isinstance(value, BaseException) else value
        for key, value in vars(error).items()
    }


def test_error_samples_cover_every_error_class() -> None:
    """The pickling samples include every exception class stepfsm.errors defines."""
    defined = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.StepFSMError)
        and cls.__module__ == errors.__name__
    }
    assert defined == set(error_samples())


@pytest.mark.parametrize("cls", list(error_samples()), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_every_error_round_trips_through_pickle(cls: type[BaseException], protocol: int) -> None:
    """Every stepfsm error pickles to the same class, message and attributes."""
    error = error_samples()[cls]
    twin = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(twin) is cls
    assert str(twin) == str(error)
    assert comparable(twin) == comparable(error)


def test_errors_raised_by_a_real_step_pickle(step: FakeStep) -> None:
    """Errors raised by live operations (with causes and states) survive pickling."""
    raised: list[BaseException] = []
    step.fail_load = Boom("no GPU")
    with pytest.raises(LoadError, match="Boom: no GPU") as load_error:
        step.load()
    raised.append(load_error.value)
    with pytest.raises(stepfsm.StepFailedError, match="after Boom: no GPU") as failed:
        step.use()
    raised.append(failed.value)
    step.fail_load = None
    stepfsm.lifecycle(step).acquire("w")
    with pytest.raises(stepfsm.StepInUseError, match=r"held by 1 holder \('w'\)") as in_use:
        step.unload()
    raised.append(in_use.value)
    with pytest.raises(stepfsm.AlreadyLoadedError, match="is already loaded") as again:
        step.load()
    raised.append(again.value)
    stepfsm.lifecycle(step).release("w")
    for error in raised:
        twin = pickle.loads(pickle.dumps(error))
        assert (type(twin), str(twin)) == (type(error), str(error))
        assert comparable(twin) == comparable(error)
        assert twin.state is error.state  # type: ignore[attr-defined]
