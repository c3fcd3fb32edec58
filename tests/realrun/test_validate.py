"""realrun validate: the executor serves the simulator's scenario with the same policy calls
(hits, misses, streamed, prefetched and bytes identical per iteration), its MoE output is the
reference MoE layer's whatever the cache does, the table model prices a profile the way its
arithmetic says, and the command runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from kernels.reference import moe_layer_ref
from realrun import serve as serve_mod
from realrun.model import TinyMoE
from sim.app import realrun_validate as V
from sim.cost.analytic import AnalyticCost
from sim.cost.table import TableCost
from sim.serving.testing import random_pool
from sim.world.config import ClusterConfig, HardwareConfig, ModelConfig, SimConfig

TOY = ModelConfig(name="toy", num_layers=3, num_experts=8, top_k=2, shared_experts=1,
                  hidden_size=32, expert_intermediate_size=16, num_heads=2, num_kv_heads=2,
                  head_dim=8, vocab_size=100, dtype="fp32")


def _cfg(cache="lru", prefetch="none", frac=0.5, requests=6):
    cfg = SimConfig(model=TOY, hardware=HardwareConfig(name="a100-40gb", memory_bytes=40 * 10**9),
                    cluster=ClusterConfig(name="1x1", nodes=1, gpus_per_node=1, expert_parallel=1,
                                          expert_budget_fraction=frac, reserved_bytes=0))
    cfg.workload.num_requests = requests
    cfg.workload.prompt_tokens_mean = 12
    cfg.workload.output_tokens_mean = 5
    cfg.serving.token_budget = 32
    cfg.policy.cache, cfg.policy.prefetch = cache, prefetch
    cfg.output.progress = "off"
    return cfg


def _scenario(**kw):
    return V.scenario(_cfg(**kw), 1, "fp32", pool=random_pool(3, 8, 2, 4, 64, np.random.default_rng(0)))


@pytest.mark.parametrize("cache,prefetch,frac", [
    ("lru", "none", 0.5), ("lifo", "none", 0.5), ("lru", "emoe_l", 0.5),
    # (every request reaches realrun at time 0, before any is observed: eMoE-A makes no
    # prediction there, so the predict-and-load path runs with the task-aware predictor)
    ("keep_predicted", "emoe_task", 0.5), ("lru", "none", 0.1)])
def test_realrun_counts_what_the_simulator_counts(cache, prefetch, frac):
    sc = _scenario(cache=cache, prefetch=prefetch, frac=frac)
    sim_it, sim_total, _ = V.simulate(sc, AnalyticCost(sc.cfg.model, sc.cfg.hardware))
    real_it, res = V.serve(sc, "cpu", 0)
    m, it = V.compare(sim_it, real_it, sim_total, res.counts, res.expert_bytes)
    assert m["counts_identical"] and m["iterations"] == len(it) > 5
    assert m["hits_real"] == m["hits_sim"] > 0 and m["misses_real"] == m["misses_sim"] > 0
    assert m["bytes_real"] == m["bytes_sim"] == res.copied_bytes > 0
    for c in V.COMPARED:
        assert (it[f"{c}_sim"] == it[f"{c}_real"]).all(), c
    if prefetch != "none":
        assert m["prefetched_real"] > 0
    if frac == 0.1:  # 2 slots for 3 layers' keys: whole layers stream through the staging buffer
        assert m["streamed_real"] > 0
    assert (it["real_s"] > 0).all() and (it["sim_s"] > 0).all()


def test_the_first_layers_only_as_many_as_fit():
    cfg = _cfg()
    sc = V.scenario(cfg, 1, "fp32", pool=random_pool(3, 8, 2, 4, 64, np.random.default_rng(0)),
                    layers=2)
    assert sc.cfg.model.num_layers == 2 and sc.pool.experts.shape[1] == 2
    sim_it, sim_total, _ = V.simulate(sc, AnalyticCost(sc.cfg.model, sc.cfg.hardware))
    real_it, res = V.serve(sc, "cpu", 0)
    m, _ = V.compare(sim_it, real_it, sim_total, res.counts, res.expert_bytes)
    assert m["counts_identical"] and m["accesses_real"] > 0
    with pytest.raises(Exception, match="layers=4"):
        V.scenario(cfg, 1, "fp32", pool=random_pool(3, 8, 2, 4, 64, np.random.default_rng(0)),
                   layers=4)


def test_a_count_difference_is_an_error():
    sc = _scenario()
    sim_it, sim_total, _ = V.simulate(sc, AnalyticCost(sc.cfg.model, sc.cfg.hardware))
    real_it, res = V.serve(sc, "cpu", 0)
    real_it.loc[3, "hits"] += 1
    with pytest.raises(Exception, match="counts differ.*hits"):
        V.compare(sim_it, real_it, sim_total, res.counts, res.expert_bytes)


def test_a_late_prefetch_hit_in_the_simulator_is_a_hit_in_realrun():
    """On a device whose copies overlap compute the simulator tells a prefetched expert still in
    flight when needed apart (``late_prefetch_hits``); realrun's counts are the policy's, with no
    clock: the same access is a hit there. The two sides agree on hits + late_prefetch_hits."""
    from dataclasses import replace

    sc = _scenario()
    sim_it, sim_total, _ = V.simulate(sc, AnalyticCost(sc.cfg.model, sc.cfg.hardware))
    real_it, res = V.serve(sc, "cpu", 0)
    assert sim_total.hits > 2
    late = replace(sim_total, hits=sim_total.hits - 2, late_prefetch_hits=sim_total.late_prefetch_hits + 2)
    m, _ = V.compare(sim_it, real_it, late, res.counts, res.expert_bytes)
    assert m["counts_identical"] and m["resident_hits_sim"] == m["resident_hits_real"] == res.counts.hits
    worse = replace(sim_total, hits=sim_total.hits - 2)  # two hits gone, not late: a difference
    with pytest.raises(Exception, match="counts differ.*hits"):
        V.compare(sim_it, real_it, worse, res.counts, res.expert_bytes)


def test_moe_output_is_the_reference_layer_whatever_the_cache_does(monkeypatch):
    """Every routed-expert computation of a served scenario (tiny cache: hits, loads, evictions,
    streaming) equals kernels.reference's MoE layer on the host weights of that layer."""
    sc = _scenario(cache="lifo", frac=0.2)
    seen = {"n": 0}
    last: dict = {}
    gate, ffn = TinyMoE.gate, serve_mod.expert_ffn

    def gate_spy(self, l, x, experts):
        last.update(moe=self, l=l, logits=self.logits(l, x, experts))
        return gate(self, l, x, experts)

    def ffn_spy(x, routed, table, w13, w2, K, block_size=16):
        out = ffn(x, routed, table, w13, w2, K, block_size)
        moe, l = last["moe"], last["l"]
        E = moe.sh.E
        ref = moe_layer_ref(x, last["logits"], moe.host_w13[l * E:(l + 1) * E],
                            moe.host_w2[l * E:(l + 1) * E], K)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        seen["n"] += 1
        return out

    server = serve_mod.RealServer(V.world(sc, AnalyticCost(sc.cfg.model, sc.cfg.hardware)))
    monkeypatch.setattr(TinyMoE, "gate", gate_spy)  # after the warm-up (its weights are zeros)
    monkeypatch.setattr(serve_mod, "expert_ffn", ffn_spy)
    res = server.run()
    assert seen["n"] >= 3 * 10 and res.counts.misses > 0 and res.counts.evictions > 0


PROFILE = """op,device,dtype,tokens,experts,hidden,intermediate,bytes,time_s,context,sequences
attention,cpu,fp32,1,0,32,0,0,0.0001,1,1
attention,cpu,fp32,64,0,32,0,0,0.0004,2080,1
attention,cpu,fp32,4,0,32,0,0,0.0002,40,4
attention,cpu,fp32,16,0,32,0,0,0.0005,600,16
gate,cpu,fp32,1,8,32,0,0,0.00001,0,0
gate,cpu,fp32,64,8,32,0,0,0.00003,0,0
iteration,cpu,fp32,1,0,32,0,0,0.000001,0,0
iteration,cpu,fp32,64,0,32,0,0,0.000002,0,0
expert,cpu,fp32,1,1,32,16,0,0.00002,0,0
expert,cpu,fp32,64,1,32,16,0,0.00006,0,0
copy,cpu,fp32,0,0,0,0,6144,0.000004,0,0
copy,cpu,fp32,0,0,0,0,393216,0.000256,0,0
"""


def test_doubled_copy_time_adds_each_iterations_bytes_at_the_copy_rate(tmp_path):
    """Copies are serial with the layer (no prefetch): doubling every copy time adds, per
    iteration, exactly that iteration's copy time: its bytes over the profile's bandwidth (the
    profile's copies have no fixed latency), and nothing else moves."""
    sc = _scenario()
    fallback = AnalyticCost(sc.cfg.model, sc.cfg.hardware)
    base_p, slow_p = tmp_path / "base.csv", tmp_path / "slow.csv"
    base_p.write_text(PROFILE)
    df = pd.read_csv(base_p)
    df.loc[df["op"] == "copy", "time_s"] *= 2
    df.to_csv(slow_p, index=False)
    base, slow = TableCost.from_csv(base_p, fallback, "cpu"), TableCost.from_csv(slow_p, fallback, "cpu")
    bw = 6144 / 0.000004
    assert base.host_link_bytes_per_s == pytest.approx(bw) and base.host_link_latency_s < 1e-15
    assert slow.host_link_bytes_per_s == pytest.approx(bw / 2)
    b_it, _, rep = V.simulate(sc, base)
    s_it, _, _ = V.simulate(sc, slow)
    assert rep == {"out_of_range": {}, "fallback": {}}
    assert (b_it["h2d_bytes"] == s_it["h2d_bytes"]).all() and b_it["h2d_bytes"].sum() > 0
    np.testing.assert_allclose(s_it["sim_s"] - b_it["sim_s"], b_it["h2d_bytes"] / bw, rtol=1e-6,
                               atol=1e-12)


def test_copies_in_line_are_charged_where_prefetches_are_issued(tmp_path):
    """A profile whose meta.json says copies run in line (realrun's CPU): a prefetch's copy time
    is added where it is issued instead of overlapping; without prefetch nothing changes."""
    (tmp_path / "profile.csv").write_text(PROFILE)
    line = tmp_path / "line"
    line.mkdir()
    (line / "profile.csv").write_text(PROFILE)
    (line / "meta.json").write_text(json.dumps({"copies_in_line": True}))
    for prefetch in ("none", "emoe_l", "emoe_task"):  # (eMoE-A predicts nothing here)
        sc = _scenario(prefetch=prefetch)
        fb = AnalyticCost(sc.cfg.model, sc.cfg.hardware)
        over, inline = (TableCost.from_csv(d / "profile.csv", fb, "cpu") for d in (tmp_path, line))
        assert inline.copies_in_line and not over.copies_in_line
        a, ca, _ = V.simulate(sc, over)
        b, cb, _ = V.simulate(sc, inline)
        assert ca == cb  # the same decisions
        if prefetch == "none":
            assert a["sim_s"].tolist() == b["sim_s"].tolist()
        else:
            assert cb.prefetched > 0 and b["sim_s"].sum() > a["sim_s"].sum()


def test_attention_fit_is_linear_in_tokens_context_kv_and_sequences(tmp_path):
    p = tmp_path / "p.csv"
    rows = ["op,device,dtype,tokens,experts,hidden,intermediate,bytes,time_s,context,kv_tokens,"
            "sequences"]
    for T, ctx, kv, seq in ((1, 1, 1, 1), (64, 2080, 64, 1), (4, 40, 40, 4), (16, 600, 600, 16),
                            (32, 100, 40, 2), (128, 8256, 128, 1)):
        t = 1e-4 + 2e-6 * T + 3e-8 * ctx + 7e-8 * kv + 5e-6 * seq
        rows.append(f"attention,cpu,fp32,{T},0,32,0,0,{t},{ctx},{kv},{seq}")
    rows.append("iteration,cpu,fp32,1,0,32,0,0,0.000001,0,0,0")
    p.write_text("\n".join(rows) + "\n")
    t = TableCost.from_csv(p, AnalyticCost(TOY, HardwareConfig()), device="cpu")
    assert t.attention_s(10, 5, 300, 1, kv_tokens=80) == pytest.approx(
        1e-4 + 2e-6 * 15 + 3e-8 * 300 + 7e-8 * 80)
    # the per-sequence part, once per layer, is charged per iteration
    assert t.iteration_s(0, 1, 0, 0, 1) == pytest.approx(TOY.num_layers * 5e-6 + 1e-6)
    t.attention_s(200, 0, 10, 1)
    assert t.report()["out_of_range"] == {"attention": 1}


def test_cli_validate_end_to_end(tmp_path, capsys):
    from sim.app.cli import main
    from traces.format import RoutingTrace, TraceMeta, make_tokens, write_trace

    rng = np.random.default_rng(1)
    T = 96
    ex = np.argsort(rng.random((T, 2, 8)), axis=2)[:, :, :2].astype(np.int16)
    ids = [f"r{i // 24}" for i in range(T)]
    trace = RoutingTrace(ex, None, make_tokens(ids, np.arange(T) % 24, "prefill", "chat"),
                         TraceMeta("toy", 2, 8, 2, "test"))
    tp = tmp_path / "toy.parquet"
    write_trace(trace, tp)
    out = tmp_path / "run"
    assert main(["realrun", "validate", f"hydra.run.dir={out}", "trace=file", f"trace.path={tp}",
                 "model.num_layers=2", "model.num_experts=8", "model.top_k=2", "shrink=64",
                 "workload.num_requests=4", "workload.prompt_tokens_mean=8",
                 "workload.output_tokens_mean=4", "calibration.tokens=[1,8,32]",
                 "calibration.contexts=[16]", "calibration.copy_experts=[1,4]",
                 "calibration.reps=1", "calibration.warmup=0", "policy.cache=lifo"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["counts_identical"] and m["hits_sim"] == m["hits_real"]
    assert m["bytes_sim"] == m["bytes_real"] > 0
    for k in ("latency_error_median", "latency_error_p90", "e2e_error"):
        assert m[k] >= 0
    it = pd.read_csv(out / "iterations.csv")
    assert len(it) == m["iterations"] and {"tokens", "sim_s", "real_s", "hits_sim"} <= set(it.columns)
    for f in ("sim_vs_real.png", "error_cdf.png", "profile.csv", "meta.json", "timings.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "meta.json").read_text())["device"] == "cpu"
    assert "identical" in capsys.readouterr().out
