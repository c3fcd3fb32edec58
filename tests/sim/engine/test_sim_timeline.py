"""Timeline tests: tiny scenarios whose exact event log is worked out by hand (SimPy's style)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Policies, Recorder, Simulation
from sim.serving.binding import bind
from sim.serving.testing import StubCost, pool_from_rows, tiny_config, workload
from tests.sim.sim_test_helpers import assert_log, run_recorded

_run = run_recorded


def test_one_gpu_lru_misses_wait_for_copies():
    # 2 layers x 4 experts, top-1, one GPU holding 2 of its 8 experts (warm: keys 0, 1).
    # tokens: pos0 -> (L0 e0, L1 e1), pos1 -> (e0, e2), pos2 -> (e3, e1); keys = layer * 4 + e
    pool = pool_from_rows([[[0], [1]], [[0], [2]], [[3], [1]]])
    cfg = tiny_config(layers=2, experts=4, budget_fraction=0.25)
    cost = StubCost(attn_s=0.001, expert_s_each=0.002, host_link_bytes_per_s=2000.0)  # 6 B = 3 ms
    sim, log, m = _run(cfg, workload([0.0], [2], [2]), pool, cost)
    want = [
        # iteration 1 (prefill of 2 tokens) at t=0; L0 needs key 0 (hit)
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        # L1 needs keys 5, 6: both miss, LRU evicts 1 then 0; one 12-byte copy, 6 ms
        ("attention L1", "compute", 0, 0.003, 0.004),
        ("copy L1 x2", "copy", 0, 0.004, 0.010),
        ("experts L1", "compute", 0, 0.010, 0.014),
        # iteration 2 (decode of pos 2) at 0.014: key 3 misses (evicts 5), then key 5 misses again
        ("attention L0", "compute", 0, 0.014, 0.015),
        ("copy L0 x1", "copy", 0, 0.015, 0.018),
        ("experts L0", "compute", 0, 0.018, 0.020),
        ("attention L1", "compute", 0, 0.020, 0.021),
        ("copy L1 x1", "copy", 0, 0.021, 0.024),
        ("experts L1", "compute", 0, 0.024, 0.026),
    ]
    assert_log(log, want)
    assert m["requests_completed"] == 1
    assert m["ttft_s"]["p50"] == pytest.approx(0.014)
    assert m["e2e_s"]["p50"] == pytest.approx(0.026)
    assert m["expert_misses"] == 4 and m["expert_accesses"] == 5
    assert m["h2d_bytes"] == 4 * 6
    assert m["fetch_stall_s"] == pytest.approx(0.006 + 0.003 + 0.003)
    assert max(m["peak_expert_bytes_per_gpu"]) == 2 * 6


def test_two_gpus_pay_all_to_all_and_overlap_copies():
    # EP=2: GPU 0 holds experts 0,1 of each layer, GPU 1 experts 2,3; budget: 1 slot per layer
    pool = pool_from_rows([[[0], [3]]])
    cfg = tiny_config(layers=2, experts=4, gpus_per_node=2, ep=2, budget_fraction=0.5)
    # the all-to-all is timed on the network (sim/world/network.py): NVLink of infinite bandwidth and
    # 0.5 ms latency makes every all-to-all 0.5 ms
    cfg.hardware.nvlink_bytes_per_s, cfg.hardware.nvlink_latency_s = float("inf"), 0.0005
    cost = StubCost(attn_s=0.001, expert_s_each=0.002, host_link_bytes_per_s=2000.0)
    sim, log, m = _run(cfg, workload([0.0], [1], [1]), pool, cost)
    # warm caches: GPU0 keys {0, 1} (layer 0), GPU1 keys {2, 3} (layer 0) -> L1 key 7 misses on GPU1
    want = [
        ("attention L0", "compute", 0, 0.0, 0.001),
        ("a2a dispatch L0", "all_to_all", 0, 0.001, 0.0015),
        ("experts L0", "compute", 0, 0.0015, 0.0035),
        ("attention L0", "compute", 1, 0.0, 0.001),
        ("a2a dispatch L0", "all_to_all", 1, 0.001, 0.0015),
        ("a2a combine L0", "all_to_all", 0, 0.0035, 0.004),
        ("a2a combine L0", "all_to_all", 1, 0.0035, 0.004),
        ("attention L1", "compute", 0, 0.004, 0.005),
        ("a2a dispatch L1", "all_to_all", 0, 0.005, 0.0055),
        ("attention L1", "compute", 1, 0.004, 0.005),
        ("a2a dispatch L1", "all_to_all", 1, 0.005, 0.0055),
        ("copy L1 x1", "copy", 1, 0.005, 0.008),
        ("experts L1", "compute", 1, 0.008, 0.010),
        ("a2a combine L1", "all_to_all", 0, 0.010, 0.0105),
        ("a2a combine L1", "all_to_all", 1, 0.010, 0.0105),
    ]
    assert_log(log, want)
    assert m["requests_completed"] == 1 and m["e2e_s"]["p50"] == pytest.approx(0.0105)


def test_next_layer_prefetch_runs_ahead_of_the_layer():
    from sim.policies.base import PrefetchPolicy

    class NextIsTwo(PrefetchPolicy):
        predicts_next_layer = True

        def next_layer(self, ctx, layer, experts):
            return np.array([2])

    pool = pool_from_rows([[[0], [2]]])  # L0 -> key 0 (resident), L1 -> key 6 (not resident)
    cfg = tiny_config(layers=2, experts=4, budget_fraction=0.25)
    wl = workload([0.0], [1], [1])
    rec = Recorder(0.0, float("inf"))
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)), StubCost(),
                     np.random.default_rng(0), recorder=rec,
                     policies=Policies(prefetch=NextIsTwo(num_layers=2, num_experts=4, top_k=1)))
    sim.run()
    want = [
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        # issued at L0's gate (0.001), evicting LRU key 1, done at 0.004
        ("prefetch L1 e2", "copy", 0, 0.001, 0.004),
        ("attention L1", "compute", 0, 0.003, 0.004),
        ("experts L1", "compute", 0, 0.004, 0.006),  # no miss: 3 ms sooner than fetching on demand
    ]
    assert_log(rec.events, want)
    m = compute_metrics(sim)
    # landed at 0.004, when layer 1 is ready: a hit, not a late one
    assert m["prefetch"] == {"issued": 1, "used": 1, "late": 0, "evicted_unused": 0, "pending": 0,
                             "skipped": 0, "bytes_wasted": 0} and m["expert_misses"] == 0
    assert (m["hits"], m["late_prefetch_hits"]) == (2, 0)
    assert m["e2e_s"]["p50"] == pytest.approx(0.006)


def test_prefetch_of_a_request_routed_mid_iteration_yields_to_its_demand_copy():
    """Issue 21, defect 5, through the simulator: a request routed while the replica's iteration
    (walked at its start) runs issues its prefetch at its arrival; the iteration's demand copy
    keeps the link while it runs, the prefetch uses the time around it (sim/serving/link.py).

    2 layers x 4 experts, one GPU with 3 slots (warm keys 0, 1, 2), copies 6 B at 2000 B/s (3 ms).
    Pool rows: pos0 -> (L0 e0, L1 e3), pos1 -> (L0 e0, L1 e2); keys = layer * 4 + e.
    Request A (t = 0, one token): key 0 hits, key 7 misses (LRU evicts key 1): its copy runs
    0.004-0.007 s, booked when the iteration is walked at t = 0.
    Request B arrives at 0.002 s; the prefetch policy loads key 6 for it (evicting key 2): the
    copy starts at 0.002 s, moves 4 B by 0.004 s, waits for A's copy, moves its last 2 B in
    0.007-0.008 s. (Before the fix it was put at the link's clock, 0.004 s, sharing the rate
    with A's copy while that copy was still said to end at 0.007 s: it ended at 0.010 s.)
    B's iteration (0.009 s, two tokens): key 0 and key 7 hit, key 6 landed at 0.008 s, before
    L1's experts at 0.013 s: no stall."""
    from sim.policies.base import PrefetchPolicy

    class SecondRequestNeedsSix(PrefetchPolicy):
        plans_requests = True

        def on_request(self, ctx):
            return {1: np.array([2])} if ctx.request_index == 1 else {}

    pool = pool_from_rows([[[0], [3]], [[0], [2]]])
    cfg = tiny_config(layers=2, experts=4, budget_fraction=0.375)
    wl = workload([0.0, 0.002], [1, 2], [1, 1])
    rec = Recorder(0.0, float("inf"))
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)), StubCost(),
                     np.random.default_rng(0), recorder=rec,
                     policies=Policies(prefetch=SecondRequestNeedsSix(num_layers=2, num_experts=4,
                                                                      top_k=1)))
    sim.run()
    want = [
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        ("attention L1", "compute", 0, 0.003, 0.004),
        ("copy L1 x1", "copy", 0, 0.004, 0.007),
        ("experts L1", "compute", 0, 0.007, 0.009),
        ("prefetch L1 e2", "copy", 0, 0.002, 0.008),  # recorded when B is routed
        ("attention L0", "compute", 0, 0.009, 0.010),
        ("experts L0", "compute", 0, 0.010, 0.012),
        ("attention L1", "compute", 0, 0.012, 0.013),
        ("experts L1", "compute", 0, 0.013, 0.017),
    ]
    assert_log(rec.events, want)
    m = compute_metrics(sim)
    # key 6 landed at 0.008 s, before L1's experts could start at 0.013 s: used, not late
    assert m["prefetch"] == {"issued": 1, "used": 1, "late": 0, "evicted_unused": 0, "pending": 0,
                             "skipped": 0, "bytes_wasted": 0}
    assert m["requests_completed"] == 2 and m["sim_time_s"] == pytest.approx(0.017)
    assert m["fetch_stall_s"] == pytest.approx(0.003)
