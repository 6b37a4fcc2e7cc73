"""The distilabel integration in one process: guards, acquires, pydantic, install/uninstall.

These tests build real distilabel objects (LLMs, embeddings, steps, tasks,
pipelines) but never run a pipeline; ``test_pipeline.py`` does.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import pickle
import warnings
from types import ModuleType
from typing import Any

import pytest

from tests.integration.distilabel import require

require("distilabel")

import pydantic  # noqa: E402
from distilabel.models.llms.base import LLM  # noqa: E402
from distilabel.pipeline import Pipeline  # noqa: E402
from distilabel.steps import LoadDataFromDicts  # noqa: E402
from distilabel.steps.base import _Step  # noqa: E402
from distilabel.steps.tasks import TextGeneration  # noqa: E402
from distilabel.steps.tasks.base import _Task  # noqa: E402

import stepfsm  # noqa: E402
from tests.integration.distilabel import offline  # noqa: E402

CONVERSATION = [[{"role": "user", "content": "hi"}]]
NOT_LOADED = r"is not loaded \(state 'unloaded'\), so {op}\(\) cannot run\. Call load\(\)"


def task_over(llm: LLM) -> TextGeneration:
    """A TextGeneration task over ``llm``, built inside a pipeline (as distilabel expects)."""
    with Pipeline(name="stepfsm-task"):
        return TextGeneration(llm=llm)


def loader() -> LoadDataFromDicts:
    """A LoadDataFromDicts step with two rows, built inside a pipeline."""
    with Pipeline(name="stepfsm-loader"):
        return LoadDataFromDicts(data=[{"instruction": "a"}, {"instruction": "b"}])


# ----------------------------------------------------------------- guards


@pytest.mark.parametrize("method", ["generate", "generate_outputs"])
def test_llm_methods_raise_not_loaded_before_load(installed: ModuleType, method: str) -> None:
    """generate() and generate_outputs() of an unloaded LLM raise NotLoadedError naming it."""
    llm = offline.EchoLLM()
    with pytest.raises(
        stepfsm.NotLoadedError, match=r"EchoLLM at 0x\w+ " + NOT_LOADED.format(op=method)
    ):
        getattr(llm, method)(CONVERSATION)
    llm.load()
    assert getattr(llm, method)(CONVERSATION)[0]["generations"] == ["echo: hi"], "no output"


def test_async_agenerate_is_guarded_and_stays_a_coroutine(installed: ModuleType) -> None:
    """AsyncLLM.agenerate stays ``async def``, raises NotLoadedError before load, runs after."""
    llm = offline.EchoAsyncLLM()
    assert inspect.iscoroutinefunction(llm.agenerate), "the guard made agenerate synchronous"
    with pytest.raises(stepfsm.NotLoadedError, match=NOT_LOADED.format(op="agenerate")):
        asyncio.run(llm.agenerate(CONVERSATION[0]))
    llm.load()
    result = asyncio.run(llm.agenerate(CONVERSATION[0]))
    assert result["generations"] == ["async: hi"], f"unexpected output {result}"


def test_embeddings_encode_is_guarded(installed: ModuleType) -> None:
    """Embeddings.encode raises NotLoadedError before load and runs after it."""
    embeddings = offline.CountEmbeddings()
    with pytest.raises(stepfsm.NotLoadedError, match=r"CountEmbeddings at 0x\w+ is not loaded"):
        embeddings.encode(["a b"])
    embeddings.load()
    assert embeddings.encode(["a b"]) == [[3.0, 2.0]], "wrong embedding"


def test_image_generation_model_is_guarded(installed: ModuleType) -> None:
    """ImageGenerationModel.generate raises NotLoadedError before load and runs after it."""
    images = offline.BlankImages()
    with pytest.raises(stepfsm.NotLoadedError, match=NOT_LOADED.format(op="generate")):
        images.generate(["a cat"])
    images.load()
    assert images.generate(["a cat"]) == [[{"images": [""]}]], "wrong images"


def test_step_process_is_guarded_and_stays_a_generator(installed: ModuleType) -> None:
    """Step.process stays a generator; its first next() raises NotLoadedError naming the step."""
    step = loader()
    batches = step.process()
    assert inspect.isgenerator(batches), "the guard made process() return a non-generator"
    with pytest.raises(
        stepfsm.NotLoadedError,
        match=r"LoadDataFromDicts 'load_data_from_dicts_0' " + NOT_LOADED.format(op="process"),
    ):
        next(batches)
    step.load()
    rows, last = next(step.process())
    assert (rows, last) == ([{"instruction": "a"}, {"instruction": "b"}], True), "wrong batch"


def test_guarded_calls_pass_through_inside_the_objects_own_load(installed: ModuleType) -> None:
    """A warm-up generate() inside the LLM's own load() runs instead of raising NotLoadedError."""

    class WarmedUpLLM(offline.EchoLLM):
        def load(self) -> None:
            super().load()
            self.generate(CONVERSATION)  # warm-up, while the state is still 'loading'

    llm = WarmedUpLLM()
    llm.load()
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "warm-up broke the load"


def test_migration_mode_warns_then_runs_the_call(installed: ModuleType) -> None:
    """install(on_unloaded_use="warn") turns the guard into UnloadedUseWarning and runs the call."""
    installed.install(on_unloaded_use="warn")
    step = loader()
    with pytest.warns(stepfsm.UnloadedUseWarning, match=r"'load_data_from_dicts_0' is not loaded"):
        rows, _ = next(step.process())
    assert rows == [{"instruction": "a"}, {"instruction": "b"}], "the call did not run"
    llm = offline.EchoLLM()
    with (
        pytest.warns(stepfsm.UnloadedUseWarning, match="generate"),
        pytest.raises(AssertionError, match="without weights"),  # what distilabel alone does
    ):
        llm.generate(CONVERSATION)


# ------------------------------------------------------ tasks acquire llms


def test_task_load_reuses_a_hand_loaded_llm_and_leaves_it_loaded(installed: ModuleType) -> None:
    """Task.load() acquires a hand-loaded LLM (no second load); the task's unload releases it."""
    llm = offline.EchoLLM()
    llm.load()
    weights = llm._weights
    task = task_over(llm)
    assert task.llm is llm, "distilabel copied the LLM into the task"
    task.load()
    assert offline.COUNTS["EchoLLM.load"] == 1, "the task loaded the LLM a second time"
    assert stepfsm.lifecycle(llm).holders == ("TextGeneration 'text_generation_0'",), "no hold"
    rows = next(task.process([{"instruction": "x"}]))
    assert rows[0]["generation"] == "echo: x", f"unexpected rows {rows}"
    task.unload()
    assert stepfsm.state(task) is stepfsm.State.UNLOADED, "the task did not unload"
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "the task's unload unloaded the user's LLM"
    assert stepfsm.lifecycle(llm).holders == (), "the task's hold was not released"
    assert offline.held() == [weights], "the LLM's resource changed"


def test_task_load_loads_and_its_unload_unloads_an_unloaded_llm(installed: ModuleType) -> None:
    """A task whose load loaded its LLM also unloads it, so nothing stays held."""
    llm = offline.EchoLLM()
    task = task_over(llm)
    task.load()
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "the task did not load its LLM"
    assert len(offline.held()) == 1, "expected exactly one resource"
    task.unload()
    assert stepfsm.state(llm) is stepfsm.State.UNLOADED, "the LLM the task loaded stayed loaded"
    assert offline.held() == [], "a resource is still held"


# ----------------------------------------------------------------- pydantic


def _fingerprint(llm: LLM, task: TextGeneration, pipeline: Pipeline) -> dict[str, Any]:
    return {
        "llm.model_dump": llm.model_dump(),
        "llm.dump": llm.dump(),
        "task.dump": task.dump(),
        "task.signature": task.signature,
        "pipeline.signature": pipeline.signature,
        "aggregated_steps_signature": pipeline.aggregated_steps_signature,
        "cache": pipeline._cache_location,
    }


def test_dumps_signatures_and_cache_key_do_not_change(not_installed: ModuleType) -> None:
    """model_dump(), dump(), signatures and the cache location ignore install() and load/unload."""
    llm = offline.EchoLLM()
    pipeline = offline.build_pipeline(llm, cache_dir="/nonexistent/cache")
    task = pipeline.dag.get_step("text_generation_0")["step"]
    plain = _fingerprint(llm, task, pipeline)
    not_installed.install()
    assert _fingerprint(llm, task, pipeline) == plain, "install() changed a dump or signature"
    llm.load()
    assert _fingerprint(llm, task, pipeline) == plain, "load() changed a dump or signature"
    task.load()
    assert _fingerprint(llm, task, pipeline) == plain, "the task's load changed them"
    task.unload()
    llm.unload()
    assert _fingerprint(llm, task, pipeline) == plain, "unload() changed a dump or signature"


def test_equality_and_copies_carry_configuration_only(installed: ModuleType) -> None:
    """A lifecycle never enters __eq__; a copy of a loaded LLM equals a fresh, unloaded one."""
    llm = offline.EchoLLM()
    stepfsm.lifecycle(llm)
    assert llm == offline.EchoLLM(), "an existing lifecycle changed __eq__"
    llm.load()
    for copied in (copy.deepcopy(llm), llm.model_copy(deep=True), pickle.loads(pickle.dumps(llm))):
        assert copied == offline.EchoLLM(), f"the copy carries loaded state: {copied!r}"
        assert stepfsm.state(copied) is stepfsm.State.UNLOADED, "a copy arrived loaded"
    assert offline.held() == [llm._weights], "copying opened or closed a resource"


def test_extra_forbid_and_validate_assignment_still_apply(installed: ModuleType) -> None:
    """A loaded LLM still validates assignments and refuses unknown fields."""
    llm = offline.EchoLLM()
    llm.load()
    llm.prefix = "new: "
    assert llm.generate(CONVERSATION)[0]["generations"] == ["new: hi"], "assignment lost"
    with pytest.raises(pydantic.ValidationError, match="Input should be a valid string"):
        llm.prefix = 3  # type: ignore[assignment]
    with pytest.raises(pydantic.ValidationError, match="no attribute 'bogus'"):
        llm.bogus = 1  # type: ignore[attr-defined]
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        offline.EchoLLM(bogus=1)


def test_dump_and_from_dict_round_trip(installed: ModuleType) -> None:
    """dump() -> from_dict() gives an equal, unloaded object, for a loaded LLM and its task."""
    llm = offline.EchoLLM()
    llm.load()
    dumped = llm.dump()
    again = offline.EchoLLM.from_dict(copy.deepcopy(dumped))  # from_dict pops type_info
    assert again.dump() == dumped, "the round trip changed the LLM's dump"
    assert stepfsm.state(again) is stepfsm.State.UNLOADED, "from_dict made a loaded LLM"
    assert stepfsm.state(llm) is stepfsm.State.LOADED, "dump() unloaded the LLM"
    task = task_over(llm)
    task.load()
    with Pipeline(name="stepfsm-roundtrip"):
        rebuilt = TextGeneration.from_dict(copy.deepcopy(task.dump()))
    assert rebuilt.dump() == task.dump(), "the round trip changed the task's dump"
    assert stepfsm.state(rebuilt.llm) is stepfsm.State.UNLOADED, "the rebuilt LLM is loaded"


# ----------------------------------------------------- classes and install


def test_stateful_decorator_works_on_a_distilabel_subclass_without_install(
    not_installed: ModuleType,
) -> None:
    """@stepfsm.stateful on an LLM subclass alone gives it a lifecycle, guards and clean copies."""

    @stepfsm.stateful(guard=("generate",))
    class DecoratedLLM(offline.EchoLLM):
        pass

    assert not stepfsm.is_stateful(offline.EchoLLM), "the decorator leaked to the base class"
    llm = DecoratedLLM()
    with pytest.raises(stepfsm.NotLoadedError, match=NOT_LOADED.format(op="generate")):
        llm.generate(CONVERSATION)
    llm.load()
    with pytest.raises(stepfsm.AlreadyLoadedError, match="already loaded.*ensure_loaded"):
        llm.load()
    assert offline.COUNTS["EchoLLM.load"] == 1, "the second load() ran the load body"
    assert copy.deepcopy(llm)._weights is None, "a copy carries the loaded weights"
    assert llm.model_dump() == offline.EchoLLM().model_dump(), "the decorator changed model_dump"


def test_subclass_defined_after_install_is_covered(installed: ModuleType) -> None:
    """A user's LLM class (and its subclass) written after install() is stateful and guarded."""

    class NotebookLLM(offline.EchoLLM):
        def load(self) -> None:
            super().load()

    class Tuned(NotebookLLM):
        prefix: str = "tuned: "

    for cls in (NotebookLLM, Tuned):
        llm = cls()
        assert stepfsm.is_stateful(llm), f"{cls.__name__} is not stateful"
        with pytest.raises(stepfsm.NotLoadedError, match=NOT_LOADED.format(op="generate")):
            llm.generate(CONVERSATION)
        llm.load()
        with pytest.raises(stepfsm.AlreadyLoadedError, match=f"{cls.__name__} at 0x"):
            llm.load()
        llm.unload()
    assert offline.COUNTS["EchoLLM.load"] == 2, "a repeated load() ran the load body"


def _methods(classes: tuple[type, ...]) -> dict[tuple[type, str], Any]:
    return {(cls, name): value for cls in classes for name, value in vars(cls).items()}


CLASSES = (LLM, offline.EchoLLM, offline.HandleLLM, _Step, _Task, TextGeneration)


def test_install_is_idempotent(installed: ModuleType) -> None:
    """A second install() wraps nothing again and only replaces the policies."""
    before = _methods(CLASSES)
    installed.install(on_repeat="warn")
    assert _methods(CLASSES) == before, "the second install() changed class attributes"
    assert installed.LAYER.on_repeat == "warn", "the second install() ignored its policy"
    llm = offline.EchoLLM()
    llm.load()
    with pytest.warns(stepfsm.RepeatedLoadWarning, match="already loaded; load\\(\\) did nothing"):
        llm.load()
    assert offline.COUNTS["EchoLLM.load"] == 1, "the load body ran twice"


def test_uninstall_restores_distilabel_exactly(not_installed: ModuleType) -> None:
    """After uninstall() every class has its original attributes and a double load runs twice."""
    original = _methods(CLASSES)
    not_installed.install()

    class DefinedWhileInstalled(offline.EchoLLM):
        def load(self) -> None:
            super().load()

    assert _methods(CLASSES) != original, "install() changed nothing"
    not_installed.uninstall()
    assert _methods(CLASSES) == original, "uninstall() left a class attribute changed"
    assert "__stepfsm_patched__" not in vars(DefinedWhileInstalled), "a subclass kept its wrappers"
    for cls in (offline.EchoLLM, DefinedWhileInstalled):
        llm = cls()
        assert not stepfsm.is_stateful(llm), f"{cls.__name__} is still stateful"
        with pytest.raises(AssertionError, match="without weights"):  # no guard any more
            llm.generate(CONVERSATION)
        llm.load()
        llm.load()  # distilabel's behaviour: the load body runs again
    assert offline.COUNTS["EchoLLM.load"] == 4, "a double load no longer runs twice"
    assert len(offline.held()) == 4, "expected two resources per double-loaded LLM"


def test_step_logger_is_set_before_a_load_that_fails_early(installed: ModuleType) -> None:
    """A step whose load raises before super().load() has a logger, so its clean-up unload works."""
    installed.uninstall()
    with Pipeline(name="stepfsm-early"):
        plain = offline.EarlyFailStep()
    with pytest.raises(OSError, match="pretend"):
        plain.load()
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'debug'"):
        plain.unload()  # distilabel alone: the worker's clean-up raises here, and run() hangs
    installed.install()
    with Pipeline(name="stepfsm-early"):
        step = offline.EarlyFailStep()
    with pytest.raises(stepfsm.LoadError, match="OSError: model file not found") as raised:
        step.load()
    assert isinstance(raised.value.__cause__, OSError), "LoadError is not chained to the cause"
    assert step._logger is not None, "the step's logger was not set before its load"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.unload()  # the worker's clean-up: no error, no CleanupWarning
    assert stepfsm.state(step) is stepfsm.State.UNLOADED, "the clean-up did not unload the step"


def test_model_logger_is_set_before_a_load_that_fails_early(installed: ModuleType) -> None:
    """An LLM whose load raises before super().load() has a logger, so its logging unload works."""
    llm = offline.EarlyFailLLM()
    with pytest.raises(stepfsm.LoadError, match="OSError: CUDA out of memory"):
        llm.load()
    assert llm._logger is not None, "the LLM's logger was not set before its load"
    assert llm._logger.name == "distilabel.llm.echo-llm", "not distilabel's own logger name"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm.unload()  # the clean-up logs through self._logger
    assert [w.message for w in caught] == [], "the clean-up failed (CleanupWarning)"
    assert stepfsm.state(llm) is stepfsm.State.UNLOADED, "the clean-up did not unload the LLM"


def test_cleanup_unload_returns_even_when_warnings_are_errors(installed: ModuleType) -> None:
    """docs/design.md §2: a failed LLM's unload() returns though its clean-up raises.

    Even under ``-W error``, which turns the ``CleanupWarning`` into an error.
    """
    llm = offline.BrokenCleanupLLM()
    with pytest.raises(stepfsm.LoadError, match="driver crashed"):
        llm.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error", stepfsm.CleanupWarning)  # as in a worker forked by pytest
        llm.unload()
    assert stepfsm.state(llm) is stepfsm.State.FAILED, "the failed clean-up changed the state"
    assert isinstance(stepfsm.lifecycle(llm).cleanup_error, RuntimeError), "no cleanup_error"
