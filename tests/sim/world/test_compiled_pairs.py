"""The token split over the plan's holder pairs (sim/world/pair_split.py) and the kernels of
sim/world/compiled_pairs.py: the dense references' integers and floats."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.world.token_split import split_tokens
from sim.world.traffic import gpu_traffic

pytest.importorskip("numba", reason="numba is not installed: the numpy references run")

from sim.world import compiled  # noqa: E402
from sim.world.pair_split import pair_table, split_pairs  # noqa: E402


def _placement(rng, L, E, G, p):
    hold = rng.random((L, E, G)) < p
    hold[np.arange(L)[:, None], np.arange(E)[None, :], rng.integers(0, G, size=(L, E))] = True
    share = hold / hold.sum(axis=2, keepdims=True)
    pairs = np.argwhere(hold.reshape(L * E, G))
    return hold, SimpleNamespace(L=L, E=E, share=share, pair_key=pairs[:, 0],
                                 pair_gpu=pairs[:, 1], single_owner=False,
                                 topo=SimpleNamespace(expert_parallel=G))


def test_split_pairs_hand_figure():
    """Expert 0 on GPUs 0 and 1, expert 1 on GPU 0 alone, 4 and 2 tokens: GPU 0 starts at 2
    (expert 1), expert 0's tokens raise GPU 1 to 2, then one each: GPU 0 computes 1 of expert 0,
    GPU 1 3. Pairs (key 0, GPU 0), (key 0, GPU 1), (key 1, GPU 0): 1, 3, 2."""
    hold = np.array([[[True, True], [True, False]]])
    _, plan = _placement(np.random.default_rng(0), 1, 2, 2, 0.0)
    plan.share = hold / hold.sum(axis=2, keepdims=True)
    plan.pair_key, plan.pair_gpu = np.array([0, 0, 1]), np.array([0, 1, 0])
    tab = pair_table(plan, compiled)
    assert tab.ptr.tolist() == [0, 2, 3] and tab.group.tolist() == [0, 1, 0]
    assert split_pairs(np.array([[4, 2]]), tab, compiled).tolist() == [1, 3, 2]
    assert pair_table(plan, compiled) is tab  # kept on the plan


def test_split_pairs_refines():
    """A chain of replicas (GPU 0-1 through expert 0, 1-2 through expert 1, expert 2 on GPU 0)
    (tests/sim/world/test_compiled.py): over the holder slots too the split reaches 4, 4, 3
    tokens per GPU (11 on 3 GPUs, the bound 4), the dense split's, with and without passes."""
    hold = np.zeros((1, 3, 3), dtype=bool)
    hold[0, 0, [0, 1]] = True
    hold[0, 1, [1, 2]] = True
    hold[0, 2, 0] = True
    pairs = np.argwhere(hold.reshape(3, 3))
    plan = SimpleNamespace(share=hold / hold.sum(axis=2, keepdims=True), pair_key=pairs[:, 0],
                           pair_gpu=pairs[:, 1])
    tab = pair_table(plan, compiled)
    counts = np.array([[4, 4, 3]])
    tok = split_pairs(counts, tab, compiled)
    assert tok.tolist() == split_tokens(counts, hold)[0][hold[0]].tolist()
    assert sorted(np.bincount(tab.group, weights=tok, minlength=3).tolist()) == [3.0, 4.0, 4.0]
    greedy = split_pairs(counts, tab, compiled, passes=1)
    assert greedy.tolist() == split_tokens(counts, hold, passes=1)[0][hold[0]].tolist()


@pytest.mark.parametrize("seed", range(30))
def test_split_pairs_equal_dense_split(seed):
    rng = np.random.default_rng(700 + seed)
    L, E, G = int(rng.integers(1, 4)), int(rng.integers(2, 40)), int(rng.choice([2, 5, 16, 32]))
    hold, plan = _placement(rng, L, E, G, float(rng.choice([0.0, 0.03, 0.2, 0.5])))
    tab = pair_table(plan, compiled)
    for _ in range(4):
        c = rng.integers(0, int(rng.choice([3, 40, 800])), size=(L, E))
        c[rng.random(c.shape) < 0.4] = 0
        for passes in (1, 8):
            ref = split_tokens(c, hold, passes)
            got = split_pairs(c, tab, compiled, passes)
            assert got.dtype == np.int64
            assert np.array_equal(ref.reshape(L * E, G)[plan.pair_key, plan.pair_gpu], got)
            assert got.sum() == c.sum()
        # the share per pair through the chain, and through BLAS: the dense share's floats
        share = ref / np.maximum(c, 1)[:, :, None]
        share_p = got / np.maximum(c.ravel(), 1)[tab.pair_key]
        src = rng.integers(0, 30, size=(G, L * E))
        src[rng.random(src.shape) < 0.5] = 0
        dense = compiled.traffic_share(src, share, plan.pair_key, plan.pair_gpu)
        assert np.array_equal(compiled.traffic_share(src, share_p, tab.pair_key, tab.pair_gpu, L),
                              dense)
        assert np.array_equal(gpu_traffic(plan, src, share_p, compiled=False),
                              gpu_traffic(plan, src, share, compiled=False))


@pytest.mark.parametrize("seed", range(30))
def test_slot_passes_two_holders_equal_reference(seed):
    """Experts on 2 GPUs (the split placement's redundant experts; the slot kernels unroll
    them), mixed with experts on 3 to 5: from the same start, the integer passes (greedy, then
    up to 7 with ``skip_unmoved``) give token_split's integers and the continuous passes its
    floats, byte for byte; equal loads and tokens often (the tie order decides)."""
    from sim.world import token_split

    rng = np.random.default_rng(2100 + seed)
    M, J, G = int(rng.integers(1, 20)), int(rng.integers(1, 10)), int(rng.choice([4, 16, 64]))
    hj = np.zeros((M, J, G), dtype=bool)
    for m, j in np.ndindex(M, J):
        k = 2 if rng.random() < 0.8 else int(rng.integers(3, min(6, G + 1)))
        hj[m, j, rng.choice(G, size=k, replace=False)] = True
    hj[rng.random((M, J)) < 0.1] = False  # padding: no holder, no tokens
    nn = rng.integers(0, int(rng.choice([3, 40, 400])), size=(M, J)) * hj.any(axis=2)
    base = rng.integers(0, int(rng.choice([2, 50, 500])), size=(M, G))
    start = rng.integers(0, 10**6, size=M)
    tiepos = token_split._tie_rank(G, start)
    tie = np.argsort(tiepos, axis=-1)
    hl, nh = compiled.holders(hj)
    slots = np.zeros((M, J, hl.shape[2]), dtype=np.int64)
    ref = token_split._integer_passes(1, np.zeros((M, J, G), dtype=np.int64), base.copy(), hj,
                                      nn, tie, False)
    got = compiled.pairs.slot_passes(1, slots, base.copy(), hl, nh, nn, tiepos, False)
    m_i, j_i, i_i = np.nonzero(hl >= 0)
    assert np.array_equal(got[m_i, j_i, i_i], ref[m_i, j_i, hl[m_i, j_i, i_i]])
    load = base + ref.sum(axis=1)
    fr = token_split._refine(ref.astype(np.float64), load.astype(np.float64), hj, nn, 7)
    fs = compiled.pairs.slot_refine(got.astype(np.float64), load.astype(np.float64), hl, nh,
                                    nn, 7)
    assert fs[m_i, j_i, i_i].tobytes() == fr[m_i, j_i, hl[m_i, j_i, i_i]].tobytes()
    ar = token_split._round(fr, hj, nn, start)
    ar_s = np.zeros_like(got)
    ar_s[m_i, j_i, i_i] = ar[m_i, j_i, hl[m_i, j_i, i_i]]
    ref2 = token_split._integer_passes(7, ar.copy(), base + ar.sum(axis=1), hj, nn, tie, True)
    got2 = compiled.pairs.slot_passes(7, ar_s, base + ar.sum(axis=1), hl, nh, nn, tiepos, True)
    assert np.array_equal(got2[m_i, j_i, i_i], ref2[m_i, j_i, hl[m_i, j_i, i_i]])


def test_fill2_hand_figure():
    """2 holders at loads 5 and 2, 4 tokens: the level (4 + 7) // 2 = 5, 1 left over: GPU 1
    rises to 5 (3 tokens), then the leftover to the first in the tie order: GPU 0 if it comes
    first (1, 3), else GPU 1 (0, 4). 1 token with loads 0 and 9: all to the lower (1, 0)."""
    assert compiled.pairs._fill2(5, 2, 4, 0, 1) == (1, 3)
    assert compiled.pairs._fill2(5, 2, 4, 1, 0) == (0, 4)
    assert compiled.pairs._fill2(0, 9, 1, 1, 0) == (1, 0)


def test_split_pairs_bad_input():
    _, plan = _placement(np.random.default_rng(1), 2, 3, 4, 0.3)
    tab = pair_table(plan, compiled)
    with pytest.raises(ConfigError, match="2 layers x 3 experts"):
        split_pairs(np.zeros((2, 4), dtype=np.int64), tab, compiled)
    with pytest.raises(ConfigError, match="nonnegative"):
        split_pairs(-np.ones((2, 3), dtype=np.int64), tab, compiled)
    plan.pair_gpu = plan.pair_gpu[::-1].copy()
    plan.share = plan.share.copy()  # a new placement: rebuilt, and its pairs checked
    with pytest.raises(ConfigError, match="not the nonzeros"):
        pair_table(plan, compiled)


def _eplb_run(nodes, gpus_per_node, ep, seed):
    from sim.cost import AnalyticCost
    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Simulation
    from sim.serving.binding import bind
    from sim.serving.testing import random_pool, tiny_config, workload

    cfg = tiny_config(layers=3, experts=16, top_k=2, nodes=nodes, gpus_per_node=gpus_per_node,
                      ep=ep)
    cfg.policy.placement = "eplb"
    cfg.policy.placement_args = {"num_redundant": 8}
    pool = random_pool(3, 16, 2, entries=6, tokens=60, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    n = 12
    wl = workload(np.cumsum(rng.exponential(0.01, n)).tolist(), rng.integers(5, 40, n).tolist(),
                  rng.integers(1, 8, n).tolist())
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)),
                     AnalyticCost(cfg.model, cfg.hardware), np.random.default_rng(0))
    sim.run()
    return sim, compute_metrics(sim)


@pytest.mark.parametrize("seed", range(3))
def test_layer_costs_over_pairs_equal_dense(seed, monkeypatch):
    """A replica with replicated experts (eplb, 8 redundant) across 2 nodes: its layer costs
    and all-to-all times over the holder pairs with the links' loads compiled (the wide path,
    forced from 2 GPUs) are the dense path's floats, for one batch and for whole runs."""
    import json

    from sim.serving.layer_costs import batch_shape, layer_costs
    from sim.world import token_split

    sim, m_dense = _eplb_run(2, 4, 8, seed)
    plan = sim.plan
    assert not plan.single_owner and (plan.share > 0).sum(axis=2).max() > 1
    shape = batch_shape(sim.req, np.arange(4), np.array([9, 1, 30, 6]))
    counts = np.bincount(plan.pool_keys[shape.rows].ravel(), minlength=plan.L * plan.E)
    dense = layer_costs(plan, sim.walk.cost, counts, shape, 8)
    net = sim.walk.timing.net
    gpus = list(range(8))
    t_dense = net.layer_times(gpus, dense.a2a, 0.0)[0]
    monkeypatch.setattr(token_split, "COMPILED_MIN_GPUS", 2)
    wide = layer_costs(plan, sim.walk.cost, counts, shape, 8)
    assert wide.a2a[1].shape == plan.pair_key.shape  # the share per pair
    assert wide.comp.tobytes() == dense.comp.tobytes()
    assert wide.load.tobytes() == dense.load.tobytes()
    from sim.serving.walk import walk_kernels

    fused = layer_costs(plan, sim.walk.cost, counts, shape, 8, kern=walk_kernels())  # moe_owned
    assert fused.comp.tobytes() == dense.comp.tobytes()
    assert fused.load.tobytes() == dense.load.tobytes()
    assert np.array_equal(wide.a2a[0], dense.a2a[0])
    net._cache = (None, None, None)
    assert net.layer_times(gpus, wide.a2a, 0.0)[0] == t_dense
    _, m_wide = _eplb_run(2, 4, 8, seed)
    assert json.dumps(m_wide, sort_keys=True) == json.dumps(m_dense, sort_keys=True)


@pytest.mark.parametrize("seed", range(4))
def test_moe_owned_over_pairs_equals_the_analytic_moe(seed):
    """layer_costs' wide path with the walk's kernels: moe_owned over a large replica's holder
    pairs (more than analytic._SPARSE_MOE of them, mostly idle: moe_s then sums the active ones
    only) gives moe_s's and the bincount's floats."""
    from sim.cost import analytic
    from sim.cost.analytic import MOE_BLOCK_TOKENS, MOE_LAUNCHES, AnalyticCost
    from sim.serving import compiled_walk as kern
    from sim.serving.testing import tiny_config

    rng = np.random.default_rng(2300 + seed)
    cfg = tiny_config(layers=3, experts=8, top_k=2)
    cost = AnalyticCost(cfg.model, cfg.hardware)
    groups = int(rng.integers(64, 4000))
    P = analytic._SPARSE_MOE + int(rng.integers(0, 20000))
    tok = rng.integers(0, 700, size=P) * (rng.random(P) < float(rng.choice([0.05, 0.5])))
    group = np.sort(rng.integers(0, groups, size=P))
    comp, load = kern.moe_owned(tok, group, groups, MOE_BLOCK_TOKENS, cost._expert_flops_per_token,
                                cost._expert_weight_bytes, cost._act_bytes_per_token, cost.flops_s,
                                cost.hbm_s, MOE_LAUNCHES * cost.hw.kernel_latency_s)
    assert comp.tobytes() == cost.moe_s(tok, group, groups).tobytes()
    assert load.tobytes() == np.bincount(group, weights=tok, minlength=groups).tobytes()
    assert (comp > 0).sum() == (load > 0).sum() > 0
