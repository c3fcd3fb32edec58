import json

import numpy as np
import pytest
import torch

from kernels.reference import moe_layer_ref
from realrun.expert_cache import ExpertCache
from realrun.runner import RealMoE, RealrunConfig, routing_logits
from sim.app.cli import main
from sim.common.errors import ConfigError
from sim.policies import CACHE
from traces.format import RoutingTrace, TraceMeta, make_tokens


def _trace(T=24, L=2, E=8, K=2, seed=0):
    rng = np.random.default_rng(seed)
    ex = np.stack([rng.permuted(np.tile(np.arange(E), (L, 1)), axis=1)[:, :K] for _ in range(T)])
    return RoutingTrace(ex.astype(np.int16), None,
                        make_tokens(["r0"] * T, np.arange(T), "prefill", "chat"),
                        TraceMeta("toy", L, E, K, "test"))


def test_routing_logits_reproduce_recorded_topk_in_order():
    ex = np.array([[3, 1], [0, 7], [5, 4]])
    logits = routing_logits(ex, 8)
    assert torch.equal(torch.topk(logits, 2).indices, torch.as_tensor(ex))


@pytest.mark.parametrize("policy", ["lru", "lifo", "fifo"])
def test_layer_output_is_independent_of_the_cache(policy):
    """Chunks of at most `capacity` resident experts give the full model's output exactly."""
    cfg = RealrunConfig(hidden=32, intermediate=32, cache_policy=policy, capacity_frac=0.25,
                        batch_tokens=6)
    moe = RealMoE(cfg, num_layers=1, num_experts=8, top_k=2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((6, 32), generator=g)
    ex = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [1, 6], [3, 4]])
    logits = routing_logits(ex, 8)
    out = moe.layer(0, x, logits)
    w = moe.host_weights[0]
    ref = moe_layer_ref(x, logits, w["w13"], w["w2"], 2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    moe.caches[0].check()
    assert moe.caches[0].misses == 8  # every expert loaded once, in chunks of 2
    assert len(moe.caches[0].policy.resident) == 2


def test_expert_cache_copies_real_weights_into_slots():
    E = 4
    host = {"w13": torch.arange(E * 6, dtype=torch.float32).reshape(E, 2, 3),
            "w2": torch.arange(E * 3, dtype=torch.float32).reshape(E, 3, 1)}
    c = ExpertCache(host, CACHE.make("lru", capacity=2, num_keys=E), "cpu")
    assert c.ensure(0, [2, 0]) == [0, 2]
    assert c.ensure(1, [3]) == [3]  # evicts 0 (least recent, smaller id)
    c.check()
    assert int(c.slot_of[0]) == -1
    s = int(c.slot_of[3])
    assert torch.equal(c.slots["w13"][s], host["w13"][3])
    assert c.stats.bytes == 3 * c.expert_bytes == 3 * (6 + 3) * 4
    # prefetch: the policy picks the victim outside `protect`, the slot table follows
    assert c.prefetch(2, [1], protect=[3]) == [1]
    c.check()
    assert c.policy.resident == {1, 3}
    assert torch.equal(c.slots["w2"][int(c.slot_of[1])], host["w2"][1])


def test_replay_metrics_and_determinism():
    tr = _trace()
    cfg = RealrunConfig(hidden=16, intermediate=16, cache_policy="lru", capacity_frac=0.5,
                        batch_tokens=8)
    m1, t1 = RealMoE(cfg, 2, 8, 2).run_trace(tr)
    m2, _ = RealMoE(cfg, 2, 8, 2).run_trace(tr)
    assert m1 == m2
    assert m1["accesses"] == m1["hits"] + m1["misses"] > 0
    assert m1["h2d_bytes"] == m1["misses"] * (3 * 16 * 16 * 4)
    assert t1["wall_time_s"] > 0


def test_oracle_policies_are_refused():
    with pytest.raises(ConfigError, match="oracle"):
        RealMoE(RealrunConfig(hidden=16, intermediate=16, cache_policy="belady"), 1, 8, 2)


@pytest.mark.slow
def test_cli_replay_and_calibrate(tmp_path, capsys):
    rd = tmp_path / "replay"
    assert main(["realrun", "replay", f"hydra.run.dir={rd}", "workload.num_requests=1",
                 "trace.tokens_per_request=2", "shrink=128", "model=deepseek-v2-lite",
                 "policy.cache=lifo"]) == 0
    m = json.loads((rd / "metrics.json").read_text())
    assert m["cache_policy"] == "lifo" and m["tokens"] == 2 and 0 <= m["hit_rate"] <= 1
    assert (rd / "timings.json").exists()
    cd = tmp_path / "cal"
    assert main(["realrun", "calibrate", f"hydra.run.dir={cd}", "device=cpu", "model.dtype=fp32",
                 "shrink=256", "tokens=[2]", "copy_experts=[1]", "contexts=[16]", "reps=1",
                 "warmup=0", "block_size=16"]) == 0
    from sim.cost.table import read_profile

    df = read_profile(cd / "profile.csv")
    assert sorted(df["op"].unique()) == ["attention", "copy", "expert", "gate", "iteration"]
    assert (df["time_s"] > 0).all()
    assert json.loads((cd / "meta.json").read_text())["device"] == "cpu"


def test_calibration_profile_feeds_the_simulators_table_model(tmp_path):
    """realrun's calibration rows are what sim/cost/table.py reads: every op it measured is
    answered from the profile (no analytic fallback), for the model and device it names."""
    from realrun.calibrate import calibrate_model, write_profile
    from sim.cost import AnalyticCost
    from sim.cost.table import TableCost
    from sim.world.config import HardwareConfig, ModelConfig

    model = ModelConfig(hidden_size=32, expert_intermediate_size=16, num_experts=8, top_k=2,
                        num_layers=2, num_heads=2, head_dim=8, dtype="fp32")
    rows, facts = calibrate_model(model, "cpu", tokens=[1, 4], copy_experts=[1, 4], contexts=[8],
                                  warmup=0, reps=1, label="h100-sxm")
    assert facts["copies_in_line"] and 0.0 <= facts["copy_compute_overlap"] <= 1.0
    csv = write_profile(rows, tmp_path, {"device": "h100-sxm"})
    t = TableCost.from_csv(csv, AnalyticCost(model, HardwareConfig()))
    assert t.expert_s(np.array([1, 4])).tolist() == [r["time_s"] for r in rows if r["op"] == "expert"]
    t.gate_s(4)
    t.copy_s(3 * 32 * 16 * 4)
    t.attention_s(2, 1, 4, 1)
    t.iteration_s(2, 1, 4, 4, 2)
    rep = t.report()
    assert not any(rep["fallback"].values()) and not any(rep["out_of_range"].values())
