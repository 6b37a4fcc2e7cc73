"""stepfsm on a real local Ray cluster (docs/design.md §13): every Ray test is in this module.

One cluster for the module (``ray.init(address="local", num_cpus=2,
include_dashboard=False)``: a new one even if another runs on this machine),
shut down after it; its wall time, the pipelines' run times and the
benchmarks' figures are listed under "stepfsm measurements" at the end of
pytest's output, a passing run's too (``tests.support.measured``). Workers
import this repository's modules by name (``PYTHONPATH``), as a cluster's
nodes import your code. What is checked:

* errors: a guarded actor method before ``load()`` is a ``NotLoadedError`` at
  the caller's ``ray.get`` (plain ``ray.remote`` and ``sr.remote``), a failed
  load a ``LoadError``, with their attributes;
* settings travel: a step sent to a task arrives ``unloaded`` with the
  driver's instance and class policies (a ``warn`` is in force there), also
  for a class made stateful at run time;
* ``cluster_status()`` lists the steps of two actors with their pids (and the
  driver's own), when each entered its state, its last load time and bytes
  held; ``cluster_unload_all()`` unloads them; bad input says what to do;
* distilabel's ``RayPipeline`` with ``install()`` in the driver: every step
  (the generator too) and LLM is stateful in its actor with the driver's
  policies in force, ``cluster_status()`` called in an actor during the run
  lists the steps of both actors, and a failing load (before or after
  ``super().load()``, with a failing clean-up too) ends ``run()`` with an
  error naming the step and its cause in < 60 s;
* the benchmarks' targets (``benchmarks/bench_ray.py``): ≤ 5 ms of reporting
  per transition, ``cluster_status()`` of 100 steps in 4 actors ≤ 200 ms.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stepfsm
from tests.integration.ray_steps import LateStateful, TinyLLM, inspect_step
from tests.support import measured, require

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HAVE_RAY = importlib.util.find_spec("ray") is not None
HAVE_DISTILABEL = importlib.util.find_spec("distilabel") is not None
#: distilabel's and datasets' caches: read when distilabel is first imported.
_CACHE = tempfile.mkdtemp(prefix="stepfsm-ray-")
if "datasets" not in sys.modules:
    os.environ.setdefault("HF_HOME", os.path.join(_CACHE, "hf"))
    os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE, "hf", "datasets"))


# ------------------------------------------------------------- bad input first


def test_ray_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray, cluster_status() raises ImportError naming the extra to install."""
    import stepfsm.integrations.ray as sr

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"needs Ray.*pip install 'stepfsm\[ray\]'"):
        sr.cluster_status()
    with pytest.raises(ImportError, match="pip install 'stepfsm"):
        sr.remote(TinyLLM)


def test_ray_not_initialised_says_to_call_ray_init() -> None:
    """Before ray.init(), each cluster-wide call says what to call first."""
    require(HAVE_RAY, "ray")
    import ray

    import stepfsm.integrations.ray as sr

    assert not ray.is_initialized(), "run this before the module's cluster starts"
    for call in (sr.cluster_status, sr.cluster_unload_all, sr.report_here):
        with pytest.raises(RuntimeError, match=r"Ray is not initialised here\. Call ray\.init"):
            call()


def test_remote_refuses_a_class_that_is_not_stateful() -> None:
    require(HAVE_RAY, "ray")
    import stepfsm.integrations.ray as sr

    with pytest.raises(TypeError, match="decorate it with @stepfsm.stateful"):
        sr.remote(LateStateful)


# ------------------------------------------------------------------ the cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster for this module; reports the module's wall time at the end."""
    require(HAVE_RAY, "ray")
    import ray

    started = time.monotonic()
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ready = time.monotonic() - started
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        root.handlers[:] = handlers
        root.setLevel(level)
        measured(
            f"tests/integration/test_ray.py: Ray cluster up in {ready:.1f} s; the module's "
            f"Ray tests took {time.monotonic() - started:.1f} s"
        )


@pytest.fixture
def sr(ray_cluster: Any) -> Any:
    import stepfsm.integrations.ray as module

    return module


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` until it returns something true (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {timeout} s: {check}")
        time.sleep(0.1)


# ----------------------------------------------------------------- actors


def test_a_plain_ray_actor_raises_not_loaded_at_the_callers_ray_get(ray_cluster: Any) -> None:
    """ray.remote(StatefulClass): a guarded call before load() is a NotLoadedError here."""
    ray = ray_cluster
    from ray.exceptions import RayTaskError

    actor = ray.remote(TinyLLM).remote("plain_0")
    with pytest.raises(stepfsm.NotLoadedError) as caught:
        ray.get(actor.generate.remote("hi"))
    error = caught.value
    assert isinstance(error, RayTaskError)
    assert (error.step, error.state, error.operation) == (
        "TinyLLM 'plain_0'",
        stepfsm.State.UNLOADED,
        "generate",
    )
    assert "is not loaded (state 'unloaded'), so generate() cannot run" in str(error)
    ray.get(actor.load.remote())
    assert ray.get(actor.generate.remote("hi")) == "HI"
    ray.kill(actor)


def test_a_failed_load_in_an_actor_is_a_load_error_with_its_cause(ray_cluster: Any) -> None:
    """The LoadError crosses the process boundary with step, operation and cause."""
    ray = ray_cluster
    actor = ray.remote(TinyLLM).remote("broken", fail="CUDA out of memory")
    with pytest.raises(stepfsm.LoadError) as caught:
        ray.get(actor.load.remote())
    error = caught.value
    assert (error.step, error.operation, error.state) == (
        "TinyLLM 'broken'",
        "load",
        stepfsm.State.FAILED,
    )
    assert "failed with OSError: CUDA out of memory" in str(error)
    # Ray's dual exception: .cause is the stepfsm error itself, whose .cause is the original
    assert isinstance(error.cause, stepfsm.LoadError)
    assert repr(error.cause.cause) == "OSError('CUDA out of memory')"
    with pytest.raises(stepfsm.StepFailedError):
        ray.get(actor.generate.remote("hi"))
    ray.kill(actor)


def test_cluster_status_lists_the_steps_of_two_actors_with_their_pids(
    ray_cluster: Any, sr: Any
) -> None:
    """Two sr.remote actors and a driver step: one table, each row with node and pid."""
    ray = ray_cluster
    before = datetime.datetime.now()
    actor_class = sr.remote(TinyLLM)
    first, second = actor_class.remote("status_a"), actor_class.remote("status_b")
    with pytest.raises(stepfsm.NotLoadedError):
        ray.get(first.generate.remote("hi"))
    ray.get([first.load.remote(), second.load.remote()])
    pids = ray.get([first.pid.remote(), second.pid.remote()])
    assert len(set(pids)) == 2
    assert os.getpid() not in pids
    local = TinyLLM("status_driver")
    local.load()
    table = sr.cluster_status()  # no wait: a settled load is on the board when ray.get returns
    now = datetime.datetime.now()
    rows = {row.name: row for row in table}
    driver = rows["TinyLLM 'status_driver'"]
    assert (driver.pid, driver.actor, driver.state) == (os.getpid(), None, stepfsm.State.LOADED)
    # what the release estimate says TinyLLM's load holds (str.upper: nothing to count)
    assert isinstance(driver.nbytes, int)
    assert driver.nbytes >= 0
    for name, pid in zip(("status_a", "status_b"), pids, strict=True):
        row = rows[f"TinyLLM '{name}'"]
        assert (row.state, row.pid, row.cls) == (stepfsm.State.LOADED, pid, "TinyLLM")
        assert row.node
        assert row.actor
        assert row.actor.startswith("TinyLLM ")
        # when it was loaded (there), how long that took, what it holds: as in the driver
        assert row.since is not None
        assert before - datetime.timedelta(seconds=1) <= row.since <= now, row
        assert row.load_seconds is not None
        assert 0 <= row.load_seconds < 5, row
        assert row.holders == 0
        assert row.nbytes == driver.nbytes, row
    assert isinstance(table, stepfsm.Status)
    text = str(table)
    assert "node" in text
    assert "pid" in text
    assert str(pids[0]) in text
    print(table)
    ray.get(first.unload.remote())
    after = {row.name: row for row in sr.cluster_status()}
    unloaded = after["TinyLLM 'status_a'"]
    assert unloaded.state is stepfsm.State.UNLOADED
    loaded_since = rows["TinyLLM 'status_a'"].since
    assert unloaded.since is not None
    assert loaded_since is not None
    assert unloaded.since >= loaded_since
    assert unloaded.load_seconds == rows["TinyLLM 'status_a'"].load_seconds, "the last load's"
    assert unloaded.nbytes is None, "an unloaded step holds nothing"
    local.unload()
    for actor in (first, second):
        ray.kill(actor)
    wait_for(
        lambda: not [row for row in sr.cluster_status() if row.pid in pids],
        timeout=sr.LEASE + sr.GRACE + 10,
    )


def test_cluster_unload_all_unloads_every_process(ray_cluster: Any, sr: Any) -> None:
    """Loaded steps in two actors and in the driver: all unloaded, each reported once."""
    ray = ray_cluster
    actor_class = sr.remote(TinyLLM)
    actors = [actor_class.remote(f"bulk_{i}") for i in range(2)]
    ray.get([actor.load.remote() for actor in actors])
    local = TinyLLM("bulk_driver")
    local.load()
    done = sr.cluster_unload_all(timeout=30)
    names = sorted(step.name for step in done)
    assert {"TinyLLM 'bulk_0'", "TinyLLM 'bulk_1'", "TinyLLM 'bulk_driver'"} <= set(names)
    assert len(names) == len(set(names))
    assert ray.get([actor.state.remote() for actor in actors]) == ["unloaded", "unloaded"]
    assert stepfsm.state(local) is stepfsm.State.UNLOADED
    for actor in actors:
        ray.kill(actor)


# ------------------------------------------------------------ settings travel


def test_a_step_sent_to_a_task_arrives_unloaded_with_the_drivers_policies(
    ray_cluster: Any,
) -> None:
    """Instance settings travel with the instance: a 'warn' set here is in force there."""
    ray = ray_cluster
    step = TinyLLM("travelling")
    lc = stepfsm.lifecycle(step)
    lc.on_repeat, lc.timeout = "warn", 7.0
    step.load()
    info = ray.get(ray.remote(inspect_step).remote(step))
    assert info["pid"] != os.getpid()
    assert (info["state"], info["on_repeat"], info["timeout"]) == ("unloaded", "warn", 7.0)
    assert info["warnings"] == ["RepeatedLoadWarning"]
    assert stepfsm.state(step) is stepfsm.State.LOADED, "the driver's step stays loaded"
    step.unload()


def test_a_class_made_stateful_at_run_time_is_stateful_in_the_worker(ray_cluster: Any) -> None:
    """Class settings travel with the class, even when the worker imports it plain."""
    ray = ray_cluster
    stepfsm.stateful(guard=("generate",), on_repeat="warn")(LateStateful)
    try:
        info = ray.get(ray.remote(inspect_step).remote(LateStateful()))
    finally:
        from stepfsm.wrap import unmake_stateful

        unmake_stateful(LateStateful)
    assert info["stateful"], "the worker got a plain LateStateful"
    assert (info["state"], info["on_repeat"], info["warnings"]) == (
        "unloaded",
        "warn",
        ["RepeatedLoadWarning"],
    )


# ------------------------------------------------------------------ distilabel


@pytest.fixture
def distilabel(ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The distilabel integration installed for one test; caches and the root logger restored."""
    require(HAVE_DISTILABEL, "distilabel")
    monkeypatch.setenv("DISTILABEL_CACHE_DIR", str(tmp_path / "distilabel"))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    import stepfsm.integrations.distilabel as sd

    was_installed = sd.installed()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield sd
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    if not was_installed:
        sd.uninstall()


def _pipeline(name: str, cache: Path, last: Any, first: Any = None) -> Any:
    """A RayPipeline: ``first`` (a LoadDataFromDicts class) feeds what ``last()`` builds."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from tests.integration.distilabel import offline

    with Pipeline(name=name, cache_dir=str(cache)) as pipeline:
        data = (first or LoadDataFromDicts)(data=[{"instruction": i} for i in offline.INSTRUCTIONS])
        data >> last()
    return pipeline.ray()


def test_ray_pipeline_steps_and_llms_are_stateful_in_their_actors(
    distilabel: Any, tmp_path: Path
) -> None:
    """install() in the driver only: in their actors, the generator (a LoadDataFromDicts),
    TextGeneration and its LLM are stateful, with the driver's on_repeat='warn' in force
    (a second load() warns, and does not reload); cluster_status(), called in the
    generator's actor while the pipeline runs, shows the steps of both actors."""
    from distilabel.steps.tasks import TextGeneration

    from tests.integration.ray_distilabel_steps import WhereData, WhereLLM

    distilabel.install(on_repeat="warn")
    name = "stepfsm-ray-ok"
    pipeline = _pipeline(name, tmp_path, lambda: TextGeneration(llm=WhereLLM()), WhereData)
    before = datetime.datetime.now()
    started = time.monotonic()
    result = pipeline.run(use_cache=False)
    took = time.monotonic() - started
    after = datetime.datetime.now()
    rows = result["default"]["train"]
    assert len(rows) == 5
    llm_reports = [json.loads(text) for text in rows["generation"]]
    data_reports = [json.loads(text) for text in rows["where"]]
    for report in [*llm_reports, *data_reports]:
        assert report["pid"] != os.getpid()
        assert report["installed"], report
        assert report["stateful"], report
        assert (report["state"], report["on_repeat"]) == ("loaded", "warn"), report
        # the policy in force, not only the attribute: a second load warns and returns
        assert report["repeat_load_warnings"] == ["RepeatedLoadWarning"], report
        assert "repeat_load_error" not in report, report
        assert report["state_after_repeat"] == "loaded", report
    for report in llm_reports:
        assert report["TextGeneration"], report
    data = data_reports[0]
    assert data["LoadDataFromDicts"], data
    llm_pid = llm_reports[0]["pid"]
    assert {report["pid"] for report in llm_reports} == {llm_pid}
    assert {report["pid"] for report in data_reports} == {data["pid"]}
    assert data["pid"] != llm_pid, "the two steps ran in one process"

    # cluster_status() in the generator's actor, once every step was loaded
    table = {row["name"]: row for row in data["cluster"] if row["pid"] != os.getpid()}
    expected = {
        "WhereData 'where_data_0'": (data["pid"], "where_data_0"),
        "TextGeneration 'text_generation_0'": (llm_pid, "text_generation_0"),
    }
    for step, (pid, step_name) in expected.items():
        row = table.get(step)
        assert row is not None, f"{step} is not in cluster_status(): {sorted(table)}"
        assert (row["pid"], row["state"]) == (pid, "loaded"), row
        assert row["node"], row
        assert row["actor"], row
        assert f"-{step_name}-" in row["actor"], row  # distilabel-<pipeline>-<step>-<replica>
        assert row["since"] is not None, row
        assert before.timestamp() - 1 <= row["since"] <= after.timestamp() + 1, row
        assert row["load_seconds"] is not None, row
        assert 0 <= row["load_seconds"] < took, row
        assert row["nbytes"] is None or (isinstance(row["nbytes"], int) and row["nbytes"] >= 0)
    llm_rows = [
        row for row in data["cluster"] if row["cls"] == "WhereLLM" and row["pid"] != os.getpid()
    ]
    assert [(row["pid"], row["state"]) for row in llm_rows] == [(llm_pid, "loaded")], llm_rows
    assert (
        table["WhereData 'where_data_0'"]["actor"]
        != table["TextGeneration 'text_generation_0'"]["actor"]
    )
    measured(f"RayPipeline.run() with stepfsm installed: {took:.1f} s")


def _failing_step(kind: str) -> Any:
    """The pipeline's last step for one failing load (``benchmarks/bench_ray.py``'s scenarios)."""
    from distilabel.steps.tasks import TextGeneration

    from tests.integration.distilabel import offline
    from tests.integration.ray_distilabel_steps import LateFailLLM

    if kind == "early":
        return offline.EarlyFailStep()
    if kind == "late":
        return TextGeneration(llm=LateFailLLM())
    return TextGeneration(llm=offline.BrokenCleanupLLM())


@pytest.mark.parametrize(
    ("kind", "step", "cause"),
    [
        pytest.param(
            "early",
            "EarlyFailStep 'early_fail_step_0'",
            "OSError: model file not found (pretend)",
            id="step-raises-before-super-load",
        ),
        pytest.param(
            "late",
            "TextGeneration 'text_generation_0'",
            "OSError: weights are corrupt (pretend)",
            id="llm-raises-after-super-load",
        ),
        pytest.param(
            "cleanup",
            "TextGeneration 'text_generation_0'",
            "OSError: driver crashed mid-load (pretend)",
            id="llm-raises-after-super-load-and-its-unload-too",
        ),
    ],
)
def test_a_failing_load_ends_the_ray_pipeline_with_a_clear_error(
    distilabel: Any, tmp_path: Path, kind: str, step: str, cause: str
) -> None:
    """A load that raises in a step's actor: run() raises, naming the step and the cause,
    within 60 s (distilabel alone hangs, or returns an empty result; docs/distilabel.md).

    Before ``super().load()`` (distilabel's clean-up unload then needs a logger), after
    it in the LLM, and after it with a clean-up unload that raises too.
    """
    distilabel.install()
    pipeline = _pipeline(f"stepfsm-ray-fail-{kind}", tmp_path, lambda: _failing_step(kind))
    started = time.monotonic()
    with pytest.raises(RuntimeError) as caught:
        pipeline.run(use_cache=False)
    took = time.monotonic() - started
    text = str(caught.value)
    name = step.split("'")[1]
    assert "Failed to load all the steps" in text
    assert f"step '{name}' failed to load" in text
    assert cause in text
    error = caught.value.__cause__
    assert isinstance(error, stepfsm.LoadError)
    assert error.step == step
    assert cause in str(error)
    assert took < 60, f"the run took {took:.0f} s to report the failed load"
    measured(f"RayPipeline.run() with a failing load ({kind}) raised after {took:.1f} s")


# ------------------------------------------------------------------ benchmarks


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_ray", ROOT / "benchmarks" / "bench_ray.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reporting_costs_at_most_5_ms_per_transition(ray_cluster: Any) -> None:
    bench = _bench()
    without, with_, overhead = bench.reporting_overhead(ray_cluster, cycles=100)
    measured(
        f"load/unload cycle in an actor: {without * 1e3:.3f} ms without reporting, "
        f"{with_ * 1e3:.3f} ms with: {overhead * 1e3:.3f} ms per transition "
        f"(target <= {bench.TRANSITION_BUDGET_S * 1e3:.0f} ms)"
    )
    assert overhead <= bench.TRANSITION_BUDGET_S


def test_cluster_status_of_100_steps_in_4_actors_takes_at_most_200_ms(ray_cluster: Any) -> None:
    bench = _bench()
    median, rows, pids = bench.status_time(ray_cluster)
    measured(
        f"cluster_status() with {rows} steps across {len(pids)} actors: {median * 1e3:.1f} ms "
        f"(target <= {bench.STATUS_BUDGET_S * 1e3:.0f} ms)"
    )
    assert rows == 100
    assert len(pids) == 4
    assert median <= bench.STATUS_BUDGET_S
