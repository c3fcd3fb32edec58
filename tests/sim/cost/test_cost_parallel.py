"""Issue 13's cost model: tensor parallelism pays exactly the all-reduce formula, FlashAttention
prefill grows linearly in context per query chunk, fused MoE pads per expert block, one GPU pays
no collective; the per-layer cache scope replays count for count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.cost import AnalyticCost, Parallel
from sim.cost.analytic import ATTENTION_TILE_TOKENS, MOE_BLOCK_TOKENS, kv_read_tokens
from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Recorder, Simulation
from sim.replay.cache import replay_log
from sim.serving.binding import bind
from sim.serving.cache_log import CacheLog
from sim.serving.testing import StubCost, pool_from_rows, random_pool, tiny_config, workload
from sim.world.config import HardwareConfig, ModelConfig

MIX = ModelConfig()
H100 = HardwareConfig()


def test_tp2_layer_pays_two_ring_all_reduces():
    c = AnalyticCost(MIX, H100, Parallel(gpus=2, tp=2))
    T = 64
    nbytes = T * MIX.hidden_size * 2.0
    one = H100.nvlink_latency_s + 2.0 * (2 - 1) / 2 * nbytes / H100.nvlink_bytes_per_s
    assert c.all_reduce_s(nbytes, 2) == pytest.approx(one, rel=1e-12)
    assert c.layer_collectives_s(T) == pytest.approx(2 * one, rel=1e-12)
    # one GPU, or TP 1: no collective
    assert AnalyticCost(MIX, H100).layer_collectives_s(T) == 0.0
    assert AnalyticCost(MIX, H100, Parallel(gpus=8, tp=1)).layer_collectives_s(T) == 0.0
    assert c.all_reduce_s(nbytes, 1) == 0.0


def test_tp2_timeline_attention_carries_the_all_reduces_and_no_all_to_all():
    # 1 layer x 2 experts, top-1, 2 GPUs, TP 2 = the replica: tokens are not split across ranks,
    # so no all-to-all; each layer's attention window is attention + the TP all-reduces
    pool = pool_from_rows([[[0]], [[1]]])
    cfg = tiny_config(layers=1, experts=2, gpus_per_node=2, ep=2)
    cfg.cluster.tensor_parallel = 2
    cost = StubCost(attn_s=0.001, expert_s_each=0.002, a2a_s=0.0005, collectives_s=0.0003)
    rec = Recorder(0.0, float("inf"))
    wl = workload([0.0], [2], [1])
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)), cost,
                     np.random.default_rng(0), recorder=rec)
    sim.run()
    kinds = {e[1] for e in rec.events}
    assert "all_to_all" not in kinds
    att = [e for e in rec.events if e[0] == "attention L0"]
    assert [e[4] - e[3] for e in att] == pytest.approx([0.0013, 0.0013])
    assert compute_metrics(sim)["sim_time_s"] == pytest.approx(0.0013 + 0.002)


def test_prefill_attention_grows_linearly_in_context_per_chunk():
    tile = ATTENTION_TILE_TOKENS
    # one decode token reads its context once; a chunk's tiles read the KV up to their last query
    assert kv_read_tokens(np.array([99]), np.array([1])) == 100
    assert kv_read_tokens(np.array([0]), np.array([2 * tile])) == tile + 2 * tile
    c = AnalyticCost(MIX, H100)
    n = 512  # one prefill chunk of n tokens after s tokens of context

    def chunk(s):
        pairs = n * s + n * (n + 1) // 2
        return c.attention_s(n, 0, pairs, 1, kv_tokens=kv_read_tokens(np.array([s]), np.array([n])))

    t = [chunk(s) for s in (0, 8192, 16384, 24576)]
    d = np.diff(t)
    assert d[0] > 0 and d == pytest.approx([d[0]] * 3, rel=1e-9)  # affine in s: not quadratic
    # the KV bytes read per chunk are (tiles x context), far below one read per (query, key) pair
    s = 16384
    assert kv_read_tokens(np.array([s]), np.array([n])) < n * s / tile * 1.1


def test_fused_moe_one_launch_per_group_and_block_padding():
    c = AnalyticCost(MIX, H100)
    # 8 experts with one token each in one group: one launch sequence, weights read once each
    one = c.moe_s(np.ones(8), np.zeros(8, dtype=np.int64), 1)[0]
    assert one < float(c.expert_s(np.ones(8)).sum())  # per-expert launches cost more
    # compute-bound: tokens are padded to the block per expert
    big = c.moe_s(np.array([MOE_BLOCK_TOKENS * 1000 + 1]), np.zeros(1, dtype=np.int64), 1)[0]
    flops = (MOE_BLOCK_TOKENS * 1001) * 2.0 * 3 * MIX.hidden_size * MIX.expert_intermediate_size
    assert big == pytest.approx(5 * H100.kernel_latency_s + flops / (H100.bf16_flops * 0.6), rel=1e-9)
    assert c.moe_s(np.zeros(3), np.arange(3), 3).tolist() == [0.0, 0.0, 0.0]


def test_moe_tp_shards_expert_weights_over_the_group():
    c1 = AnalyticCost(MIX, H100)
    c8 = AnalyticCost(MIX, H100, Parallel(gpus=8, tp=8, moe_tp=True))
    g = np.zeros(1, dtype=np.int64)
    w1 = c1.moe_s(np.array([1.0]), g, 1)[0] - 5 * H100.kernel_latency_s
    w8 = c8.moe_s(np.array([1.0]), g, 1)[0] - 5 * H100.kernel_latency_s
    assert w8 == pytest.approx(w1 / 8, rel=0.05)


@pytest.mark.parametrize("policy", ["lru", "lfu", "lifo"])
def test_per_layer_cache_scope_replays_count_for_count(policy):
    L, E = 3, 8
    pool = random_pool(L, E, 2, entries=4, tokens=40, rng=np.random.default_rng(1))
    cfg = tiny_config(layers=L, experts=E, top_k=2, budget_fraction=0.5)
    cfg.cluster.cache_scope = "per_layer"
    cfg.policy.cache = policy
    rng = np.random.default_rng(2)
    wl = workload(np.cumsum(rng.exponential(0.01, 10)).tolist(), rng.integers(1, 20, 10).tolist(),
                  rng.integers(1, 10, 10).tolist())
    log = CacheLog()
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)),
                     StubCost(), np.random.default_rng(0), cache_log=log)
    sim.run()
    st = sim.replicas[0].states[0]
    assert sim.plan.layer_slots == [[4, 4, 4]] and st.capacity == 12
    total = None
    for lid, events in sorted(log.events.items()):
        counts = replay_log(events, policy, sim.plan.layer_slots[0][lid % L], L * E)
        total = counts if total is None else dataclasses.replace(total).add(counts)
    assert total.record(6) == st.counts().record(6)
    assert st.counts().misses > 0
