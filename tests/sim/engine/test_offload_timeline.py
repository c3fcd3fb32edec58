"""Offloading worked out by hand, event by event (SimPy's style): experts computed on the host CPU,
llama.cpp's batch rule, layer streaming, a per-layer cache of k experts, no cache at all. The
tiny world of test_sim_timeline: 2 layers x 4 experts, top-1, one GPU; an expert is 6 bytes and
copies at 2,000 B/s (3 ms); attention 1 ms per layer, an expert 2 ms on the GPU, 4 ms on the host
CPU, the hidden states to the host and back 0.5 ms (StubCost)."""

from __future__ import annotations

import pytest

from sim.serving.testing import StubCost, pool_from_rows, tiny_config, workload
from sim.world.model import layer_weight_bytes
from sim.world.offload_config import HostConfig
from tests.sim.sim_test_helpers import assert_log, run_recorded

# tokens: pos0 -> (L0 e0, L1 e1), pos1 -> (e0, e2), pos2 -> (e3, e1); keys = layer * 4 + expert
ROWS = [[[0], [1]], [[0], [2]], [[3], [1]]]
HOST = HostConfig(name="stub", memory_bytes_per_s=1.0, flops_per_s={"avx2": 1.0})


def _run(cfg, prompt=2, output=2, rows=ROWS):
    _, events, metrics = run_recorded(cfg, workload([0.0], [prompt], [output]),
                                      pool_from_rows(rows), StubCost())
    return events, metrics


def _cpu_config(mode="cpu", **kw):
    cfg = tiny_config(layers=2, experts=4, budget_fraction=0.25, **kw)  # 2 slots: warm keys 0, 1
    cfg.policy.cache = "static"
    cfg.offload.expert_exec = mode
    cfg.host = HOST
    return cfg


def test_missed_experts_run_on_the_host_cpu_and_nothing_is_copied():
    log, m = _run(_cpu_config())
    want = [
        # iteration 1 (prefill, 2 tokens): L0 needs key 0 (resident, warm)
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        # L1 needs keys 5, 6: not resident, computed on the host: 0.5 ms transfers + 2 x 4 ms
        ("attention L1", "compute", 0, 0.003, 0.004),
        ("experts L1", "compute", 0, 0.004, 0.0125),
        # iteration 2 (decode pos 2): key 3 on the host (0.5 + 4 ms), key 5 again (static: never kept)
        ("attention L0", "compute", 0, 0.0125, 0.0135),
        ("experts L0", "compute", 0, 0.0135, 0.018),
        ("attention L1", "compute", 0, 0.018, 0.019),
        ("experts L1", "compute", 0, 0.019, 0.0235),
    ]
    assert_log(log, want)
    assert m["ttft_s"]["p50"] == pytest.approx(0.0125)
    assert m["e2e_s"]["p50"] == pytest.approx(0.0235)
    off = m["offload"]
    assert off["experts_on_cpu"] == 4  # keys 5, 6, then 3, 5
    assert off["experts_on_cpu_by_layer"] == [1, 3]
    assert off["expert_copy_bytes"] == 0 and off["stream_bytes"] == 0
    assert off["host_expert_s"] == pytest.approx(0.0085 + 0.0045 + 0.0045)
    assert off["gpu_expert_s"] == pytest.approx(0.002)  # key 0 at layer 0 of the prefill, only
    assert off["bound"] == "cpu"
    # the cache saw 4 misses and kept none of them (static: they stream through)
    assert m["misses"] == 4 and m["streamed"] == 4 and m["fetch_stall_s"] == 0.0


def test_llama_cpp_rule_copies_a_large_batch_and_computes_a_small_one_on_the_cpu():
    # offload.cpu_max_tokens = 2: the 2-token prefill copies (3 ms per expert, not kept), the
    # 1-token decode computes on the host
    cfg = _cpu_config("auto")
    cfg.offload.cpu_max_tokens = 2
    log, m = _run(cfg)
    want = [
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        ("attention L1", "compute", 0, 0.003, 0.004),
        ("copy L1 x2", "copy", 0, 0.004, 0.010),
        ("experts L1", "compute", 0, 0.010, 0.014),
        ("attention L0", "compute", 0, 0.014, 0.015),
        ("experts L0", "compute", 0, 0.015, 0.0195),
        ("attention L1", "compute", 0, 0.0195, 0.0205),
        ("experts L1", "compute", 0, 0.0205, 0.025),
    ]
    assert_log(log, want)
    assert m["offload"]["experts_on_cpu"] == 2 and m["offload"]["expert_copy_bytes"] == 2 * 6
    assert m["h2d_bytes"] == 4 * 6  # the caches' view: every miss a load; 2 of them ran on the host


def test_cost_rule_sends_each_miss_where_it_finishes_sooner():
    # copy 3 ms vs host 4 ms: the prefill's two misses at L1: the first to the link (3 < 4),
    # the second to the host (4 < 6); then the GPU waits for its copy (3 ms) and computes it
    # (2 ms) while the host takes 0.5 + 4 = 4.5 ms: the layer's experts end at max(5, 4.5)
    log, m = _run(_cpu_config("cost"))
    want = [
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        ("attention L1", "compute", 0, 0.003, 0.004),
        ("copy L1 x1", "copy", 0, 0.004, 0.007),
        ("experts L1", "compute", 0, 0.007, 0.0115),
    ]
    assert_log(log[:5], want)
    # the decode's single misses (keys 3, then 5) are copied: 3 ms on the link beats 4 on the host
    assert m["offload"]["experts_on_cpu"] == 1
    # GPU experts: key 0 (2 ms), key 5 at L1 (2 ms, under the host's 4.5), keys 3 and 5 (2 + 2 ms)
    assert m["offload"]["gpu_expert_s"] == pytest.approx(0.008)
    assert m["offload"]["expert_copy_bytes"] == 3 * 6


def test_layer_streaming_copies_each_streamed_layer_before_it_runs():
    # half the experts fit: layer 0 stays resident, layer 1 (attention + 4 experts) streams
    cfg = tiny_config(layers=2, experts=4, budget_fraction=0.5)
    cfg.offload.layer_streaming = True
    S = layer_weight_bytes(cfg.model)
    assert S == 4 * 2 + 4 * 6  # attention's 4 bf16 parameters and 4 experts of 6 bytes
    c = S / 2000.0  # 16 ms
    log, m = _run(cfg)
    want = [
        ("attention L0", "compute", 0, 0.000, 0.001),
        ("experts L0", "compute", 0, 0.001, 0.003),
        ("stream L1", "copy", 0, 0.003, 0.003 + c),
        ("attention L1", "compute", 0, 0.003 + c, 0.004 + c),
        ("experts L1", "compute", 0, 0.004 + c, 0.008 + c),  # keys 5, 6: 2 x 2 ms
        ("attention L0", "compute", 0, 0.008 + c, 0.009 + c),
        ("experts L0", "compute", 0, 0.009 + c, 0.011 + c),
        ("stream L1", "copy", 0, 0.011 + c, 0.011 + 2 * c),
    ]
    assert_log(log[:8], want)
    off = m["offload"]
    assert off["stream_bytes"] == 2 * S and off["expert_copy_bytes"] == 0
    assert m["fetch_stall_s"] == pytest.approx(2 * c)
    assert off["bound"] == "copy"


def test_per_layer_cache_of_k_experts_and_no_cache():
    cfg = tiny_config(layers=2, experts=4)
    cfg.cluster.experts_per_layer = 1  # one slot per layer: warm keys 0 and 4
    log, m = _run(cfg)
    assert m["cache_slots"] == 2 and m["cache_scope"] == "per_layer"
    # L0: key 0 hit, then key 3 misses; L1 (warm key 4): keys 5, 6 miss together, 5 evicts 4 and
    # 6 streams through (no slot left outside the step), then key 5 hits
    assert (m["hits"], m["misses"], m["streamed"]) == (2, 3, 1)
    cfg.policy.cache = "none"  # nothing kept: every access a miss, copied for its step
    log, m = _run(cfg)
    assert (m["hits"], m["misses"], m["streamed"]) == (0, 5, 5)
    assert m["h2d_bytes"] == 5 * 6


def test_static_fill_frequency_places_the_most_used_experts():
    # L0 always picks expert 3: with one slot, front-loading keeps key 0 (never used), the
    # frequency fill keeps key 3 (every L0 access hits); L1's experts 1, 2 always miss
    rows = [[[3], [1]], [[3], [2]], [[3], [1]]]
    for fill, hits in (("first", 0), ("frequency", 2)):
        cfg = tiny_config(layers=2, experts=4, budget_fraction=0.125)
        cfg.policy.cache = "static"
        cfg.policy.cache_args = {"fill": fill}
        _, m = _run(cfg, rows=rows)
        assert (m["hits"], m["misses"]) == (hits, 5 - hits), fill  # 5 accesses: {3}, {5, 6}, {3}, {5}
