"""A perfect next-layer prefetch on real DeepSeek-V2-Lite prompts (one A100-40GB, half the
experts; issue 21's "Done when"): it moves no more than 1.02 x the bytes of no prefetch under
LRU, LIFO and FIFO, every access is a hit, a late prefetch hit, a miss or a reroute, and with
LRU some prefetched experts are still in flight when their layer needs them.

By hand: an expert of DeepSeek-V2-Lite is 3 x 2048 x 1408 bf16 = 17,301,504 B; on the A100's
25 GB/s host link with 10 us latency one copy takes 0.702 ms, more than a decode layer's
compute (attention and six small experts, a fraction of a millisecond), so a copy issued at
layer l's gate cannot land by the time layer l + 1 needs it.
Before the fix (prefetch victims among the running layer's experts, no active set), LIFO moved
1.7 x the bytes on six prompts; with the active set but no protection of active experts, 1.03 x.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from sim.engine.run import simulate
from sim.world.config import register_configs, to_sim_config
from sim.world.facts import model_named
from sim.world.model import expert_bytes
from tests.conftest import shared_path
from traces.format import write_trace
from traces.import_moe_beyond import import_moe_beyond_csv


@pytest.fixture(scope="module")
def ds_trace(tmp_path_factory):
    d = shared_path("routing", "deepseek-v2-lite")
    files = sorted(d.glob("prompt_*_data.csv"), key=lambda p: int(p.stem.split("_")[1]))[:12]
    out = tmp_path_factory.mktemp("ds") / "ds12.parquet"
    write_trace(import_moe_beyond_csv(files), out)
    return out


def _run(trace, cache: str, prefetch: str):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = to_sim_config(compose("sim", overrides=[
            "model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1", "trace=file",
            f"trace.path={trace}", "cluster.expert_budget_fraction=0.5", "workload.num_requests=12",
            "workload.rate_rps=4", "workload.prompt_tokens_mean=64", "workload.output_tokens_mean=16",
            f"policy.cache={cache}", f"policy.prefetch={prefetch}"]))
    cfg.output.progress = "off"
    return simulate(cfg)[1]


def test_one_copy_outlasts_a_layer_by_hand():
    eb = expert_bytes(model_named("deepseek-v2-lite"))
    assert eb == 3 * 2048 * 1408 * 2 == 17_301_504
    assert eb / 25.0e9 + 10e-6 == pytest.approx(0.000702, abs=1e-6)


@pytest.mark.parametrize("cache", ["lru", "lifo", "fifo"])
def test_perfect_prefetch_moves_no_more_bytes(ds_trace, cache):
    none, perfect = _run(ds_trace, cache, "none"), _run(ds_trace, cache, "perfect")
    for m in (none, perfect):
        assert m["hits"] + m["late_prefetch_hits"] + m["misses"] + m["rerouted"] == m["accesses"]
    assert perfect["h2d_bytes"] <= 1.02 * none["h2d_bytes"]
    p = perfect["prefetch"]
    assert p["issued"] == perfect["prefetched"] > 0
    assert p["issued"] == p["used"] + p["evicted_unused"] + p["pending"]
    assert p["late"] == perfect["late_prefetch_hits"] <= p["used"]
    if cache == "lru":
        assert perfect["late_prefetch_hits"] > 0
