"""analysis/explain.py: each rule on a hand-made metrics dict, then on real simulator runs."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.explain import bottleneck_sentence, compare_sentence


def _m(**kw):
    base = {"accesses": 1000, "hits": 500, "misses": 500, "hit_rate": 0.5, "prefetched": 0,
            "loads": 500, "busy_share": 0.9, "fetch_stall_share": 0.1,
            "host_link_utilisation": {"mean": 0.2, "max": 0.2},
            "distinct_experts_per_iteration": {"mean": 100.0, "max": 100}, "cache_slots": 200.0,
            "iterations_over_slots": 0.0, "evictions_reused_share": 0.0, "cache_scope": "global",
            "expert_bytes": 17_000_000, "prefetch": {"issued": 0, "used": 0},
            "config": {"policy": {"cache": "lru", "prefetch": "none"}}}
    base.update(kw)
    return base


def test_rule1_all_resident_compute_bound():
    s = bottleneck_sentence(_m(accesses=0, hits=0, misses=0, hit_rate=1.0, busy_share=0.81,
                               fetch_stall_share=0.0))
    assert s == "all experts resident: compute-bound (GPU busy 81 %)"
    idle = bottleneck_sentence(_m(accesses=0, misses=0, busy_share=0.3))
    assert "waits for requests 70 % of the time" in idle


def test_rule2_prefetch_flood():
    s = bottleneck_sentence(_m(prefetched=62433, loads=64000, fetch_stall_share=0.6,
                               host_link_utilisation={"mean": 1.0, "max": 1.0},
                               prefetch={"issued": 62433, "used": 66}))
    assert "prefetch floods the host link: 62,367 of 62,433 prefetched experts were never used" in s
    assert "(1,060.2 GB wasted)" in s and "busy 100 %" in s


def test_rule3a_working_set_over_slots():
    s = bottleneck_sentence(_m(hits=0, misses=1000, hit_rate=0.0, fetch_stall_share=0.9,
                               host_link_utilisation={"mean": 0.97, "max": 0.97},
                               distinct_experts_per_iteration={"mean": 1664.0, "max": 1664},
                               cache_slots=832.0, iterations_over_slots=1.0,
                               evictions_reused_share=0.5))
    assert s == ("LRU: each iteration touches 1,664 experts in layer order with 832 slots: every "
                 "access misses; 50 % of evictions throw out an expert the same iteration needs "
                 "later; the host link is busy 97 % of the time")


def test_rule3b_link_saturated_and_3c_latency():
    s = bottleneck_sentence(_m(fetch_stall_share=0.4, host_link_utilisation={"mean": 0.99, "max": 0.99}))
    assert s.startswith("LRU: the host link is saturated (busy 99 %): copies, not compute, set TPOT")
    s = bottleneck_sentence(_m(fetch_stall_share=0.6))
    assert "wait for copies 60 % of the iteration though the host link is busy only 20 %" in s


def test_rule4_compute_bound_with_misses():
    s = bottleneck_sentence(_m())
    assert s.startswith("LRU: compute-bound: layers wait for copies only 10 % of the iteration")


def test_old_metrics_say_which_key_is_missing():
    with pytest.raises(ValueError, match="busy_share"):
        bottleneck_sentence({"accesses": 1, "misses": 0})


def test_compare_working_set_and_scope():
    sim = _m(hits=90, misses=910, hit_rate=0.09, distinct_experts_per_iteration={"mean": 1664.0,
             "max": 1664}, cache_slots=832.0, evictions_reused_share=0.5)
    rep = {"hit_rate": 0.73, "distinct_experts_per_iteration": {"mean": 156.0, "max": 156},
           "cache_slots": 832.0, "cache_scope": "per_layer", "iteration_unit": "token",
           "evictions_reused_share": 0.0}
    s = compare_sentence(sim, rep)
    assert s.startswith("LRU hit rate: simulator 9 %, replay 73 %: the simulator interleaves a batch")
    assert "1,664 experts against 832 slots (2.00 per slot)" in s
    assert "156 experts against 832 slots (0.19 per slot)" in s
    assert "global (one per GPU, swept in layer order every iteration)" in s
    assert "50 % of the simulator's evictions" in s


def test_compare_late_prefetch_hits_count_as_hits():
    sim = _m(hits=500, late_prefetch_hits=490, hit_rate=0.5)
    rep = {"hit_rate": 0.99, "distinct_experts_per_iteration": {"mean": 100.0, "max": 100},
           "cache_slots": 200.0, "cache_scope": "global"}
    assert compare_sentence(sim, rep) == "LRU hit rate: simulator 99 %, replay 99 %: they agree"


# -- real runs ----------------------------------------------------------------------------------
def _sim(budget: float, cache: str = "lru"):
    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Simulation
    from sim.serving.binding import bind
    from sim.serving.testing import StubCost, random_pool, tiny_config, workload

    cfg = tiny_config(layers=4, experts=8, top_k=2, budget_fraction=budget, token_budget=64,
                      host_bytes_per_s=2000.0)
    cfg.policy.cache = cache
    rng = np.random.default_rng(0)
    pool = random_pool(4, 8, 2, entries=6, tokens=40, rng=rng)
    wl = workload([0.0] * 6, [8] * 6, [24] * 6)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    sim.run()
    return compute_metrics(sim)


def test_real_all_resident_run_is_compute_bound():
    s = bottleneck_sentence(_sim(1.0))
    assert s.startswith("all experts resident: compute-bound (GPU busy 100 %)"), s


def test_real_lru_small_budget_names_the_link_or_the_working_set():
    m = _sim(0.25)
    s = bottleneck_sentence(m)
    assert m["distinct_experts_per_iteration"]["mean"] > m["cache_slots"]
    assert "each iteration touches" in s and "with 8 slots" in s, s


def test_the_report_sentence_prefers_a_runs_own_why_and_skips_old_runs():
    """The report's sentence per run (analysis.report_sim.run_why): the run's own ``why`` field,
    else the bottleneck from its figures, else nothing (metrics written before the figures)."""
    from analysis.report_sim import run_why

    m = _m()
    assert run_why(m) == bottleneck_sentence(m) != ""
    assert run_why({**m, "why": "measured on a GPU"}) == "measured on a GPU"
    assert run_why({"hit_rate": 0.5}) == ""


def test_offloaded_run_says_where_experts_ran_and_what_bounded_it():
    from analysis.explain import bottleneck_sentence, offload_sentence

    off = {"experts_on_cpu": 30, "experts_on_cpu_by_layer": [0, 10, 20], "stream_bytes": 0,
           "copy_stall_s": 0.5, "host_expert_s": 2.0, "gpu_expert_s": 0.25, "bound": "cpu"}
    m = {"misses": 40, "config": {"policy": {"cache": "static", "prefetch": "none"}}, "offload": off}
    s = offload_sentence(m)
    assert s == ("static: 75 % of the missed experts ran on the host CPU (layers 1-2); the steps are "
                 "bound by the host CPU's experts (copy wait 0.5 s, host experts 2 s, GPU experts 0.25 s)")
    assert bottleneck_sentence(m) == s  # said first, before the cache rules (which need more figures)
    streamed = {**m, "offload": {**off, "experts_on_cpu": 0, "stream_bytes": 3.2e9, "bound": "copy"}}
    assert "layer streaming copied 3.2 GB of weights; the steps are bound by waiting for copies" \
        in offload_sentence(streamed)
    assert offload_sentence({"offload": {"experts_on_cpu": 0, "stream_bytes": 0}}) is None
    assert offload_sentence({"hit_rate": 0.5}) is None
