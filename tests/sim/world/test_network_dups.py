"""The all-to-all sends a token once to each GPU that holds any of its experts (issue 21, defect
7): by hand on top-2 and top-6 routings, on the links, and alike through the prefix counts and the
pool's rows."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.serving import token_counts
from sim.serving.binding import bind
from sim.serving.testing import StubCost
from sim.world.network import Network
from sim.world.traffic import count_tokens, duplicate_destinations, gpu_traffic, source_counts
from tests.sim.world.network_helpers import _net_cfg, _sim, _topo, _wl


# -- a token crosses once to each GPU that holds any of its experts (issue 21, defect 7) ----------
def _owner_plan(L, E, G, K, pool_keys):
    """A single-owner plan: GPU g owns experts g * E/G .. (g+1) * E/G - 1 of every layer."""
    owner = np.arange(E) // (E // G)
    lg_index = (np.arange(L)[:, None] * G + owner[None, :]).ravel()
    share = np.zeros((L, E, G))
    share[:, np.arange(E), owner] = 1.0
    return SimpleNamespace(L=L, E=E, K=K, share=share, topo=SimpleNamespace(expert_parallel=G),
                           single_owner=True, lg_index=lg_index, tensor_parallel=1, moe_tp=False,
                           pool_dups=duplicate_destinations(pool_keys, lg_index, L, K, G))


def test_top2_all_to_all_once_per_destination_gpu():
    """The routing of test_traffic_matrix_of_a_hand_made_routing, counted once per GPU.

    By hand, layer 0: token 0 (on GPU 0) -> e0 (GPU 0), e2 (GPU 1); token 1 -> e1 (0), e3 (1):
    GPU 0 sends [2, 2]; token 2 (on GPU 1) -> e0, e1, both GPU 0: once; token 3 -> e2, e3, both
    GPU 1: once: GPU 1 sends [1, 1] (per expert it was [2, 2]). Layer 1: token 0 -> e1 (0), e3
    (1); token 1 -> e2, e3 (GPU 1 twice: once): GPU 0 sends [1, 2] (was [1, 3]); tokens 2 and 3
    each go to both GPUs: [2, 2]."""
    L, E, G, K = 2, 4, 2, 2
    routing = [[(0, 2), (1, 3)], [(1, 3), (2, 3)], [(0, 1), (0, 2)], [(2, 3), (3, 0)]]
    keys = np.array([[e for e in l0] + [4 + e for e in l1] for l0, l1 in routing], dtype=np.int16)
    plan = _owner_plan(L, E, G, K, keys)
    # the tokens that add nothing: token 1's e3 at layer 1 (GPU 1 already), token 2's e1 and
    # token 3's e3 at layer 0; the index is layer * G + GPU, L * G = 4 elsewhere
    assert plan.pool_dups.tolist() == [[4, 4, 4, 4], [4, 4, 4, 3], [4, 0, 4, 4], [4, 1, 4, 4]]
    want = [[[2, 2], [1, 1]], [[1, 2], [2, 2]]]
    dups = source_counts(plan.pool_dups, G, L * G + 1)
    assert gpu_traffic(plan, source_counts(keys, G, L * E), dups=dups).tolist() == want
    # count_tokens, per-block path (T * K = 8 is not < G * E = 8): the same
    counts, m = count_tokens(plan, keys, G)
    assert m.tolist() == want and counts.tolist() == np.bincount(keys.ravel(), minlength=8).tolist()
    # 800 tokens: 200 times each
    assert count_tokens(plan, np.repeat(keys, 200, axis=0), G)[1].tolist() == (200 * np.array(want)).tolist()
    # token by token (tokens 0 and 2: T * K = 4 < 8): token 0 on GPU 0, token 2 on GPU 1; layer 0:
    # [1, 1] and [1, 0] (e0, e1 both on GPU 0); layer 1: [1, 1] and [1, 1]
    assert count_tokens(plan, keys[[0, 2]], G)[1].tolist() == [[[1, 1], [1, 0]], [[1, 1], [1, 1]]]


def test_top6_all_to_all_once_per_destination_gpu_on_the_links():
    """One layer of 12 experts, top-6, on 3 GPUs (GPU g owns experts 4g .. 4g+3). Token A, on
    GPU 0, routes to e0, e1, e2 (GPU 0), e4, e5 (GPU 1), e8 (GPU 2): it goes to GPUs 1 and 2 once
    each (per expert it was 2 and 1); token B, on GPU 1, routes to e4-e7 (GPU 1), e8, e9 (GPU 2):
    it goes to GPU 2 once (was 2). On NVLink of 100 B/s, hidden 1 (2 bytes a token), no latency:
    GPU 0 sends 2 tokens (4 B, 0.04 s), GPU 2 receives 2 (4 B): 0.04 s; per expert GPU 0 sent
    3 tokens and GPU 2 received 3: 0.06 s."""
    L, E, G, K = 1, 12, 3, 6
    keys = np.array([[0, 1, 2, 4, 5, 8], [4, 5, 6, 7, 8, 9]], dtype=np.int16)
    plan = _owner_plan(L, E, G, K, keys)
    counts, m = count_tokens(plan, keys, G)  # T * K = 12 < G * E = 36: token by token
    assert m.tolist() == [[[1, 1, 1], [0, 1, 1], [0, 0, 0]]]
    assert gpu_traffic(plan, source_counts(keys, G, E),
                       dups=source_counts(plan.pool_dups, G, G + 1)).tolist() == m.tolist()
    per_expert = gpu_traffic(plan, source_counts(keys, G, E))
    assert per_expert.tolist() == [[[3, 2, 1], [0, 4, 2], [0, 0, 0]]]
    net = Network(_topo(1, 3, 3, nv_bw=100.0), hidden=1)
    assert net.layer_times([0, 1, 2], m, 0.0)[0] == pytest.approx([0.04])
    assert net.layer_times([0, 1, 2], per_expert, 0.0)[0] == pytest.approx([0.06])


def test_prefix_counts_and_rows_send_a_token_once_per_gpu_alike(pool, monkeypatch):
    """The simulator counts the all-to-all from the pool's prefix counts (policy.cache_arrays) or
    from the tokens' rows: with 4 experts of a layer per GPU (8 experts, top-2, EP 2) tokens
    often have both experts on one GPU; both ways write the same metrics, and the run is faster
    than with every token sent once per expert (a slow network: 2 kB/s)."""
    from sim.engine.metrics import metrics_json

    monkeypatch.setattr(token_counts, "PREFIX_RENT", 0.0)  # (the prefix counts from the first)
    out = {}
    for arrays in (True, False):
        cfg = _net_cfg(1, 2, 2, bw=2e3)
        cfg.policy.cache_arrays = arrays
        sim, m = _sim(cfg, _wl(), pool)
        assert sim.plan.pool_dups is not None and (sim.walk.prefix is not None) == arrays
        out[arrays] = metrics_json(m)
    assert out[True] == out[False]
    sim, m = _sim(_net_cfg(1, 2, 2, bw=2e3), _wl(), pool)
    per_expert = dataclasses.replace(sim.plan, pool_dups=None)
    cfg = _net_cfg(1, 2, 2, bw=2e3)
    sim2 = Simulation(cfg, _wl(), pool, bind(pool, _wl(), "wrap", np.random.default_rng(0)),
                      StubCost(attn_s=0.001, expert_s_each=0.002), np.random.default_rng(0))
    sim2.world.plan = sim2.plan = sim2.walk.plan = per_expert
    sim2.run()
    assert compute_metrics(sim2)["sim_time_s"] > m["sim_time_s"]
