"""The figures that say why (sim/engine/metrics.py ``why_metrics``), worked out by hand.

The hand case: 2 layers x 2 experts, top-2 (every token needs both experts of each layer), one
GPU, half the experts cached (2 slots), LRU, warm start (keys 0, 1 resident). Every iteration
touches the same 4 keys in layer order with 2 slots:

- iteration 1: layer 0 (keys 0, 1) hits; layer 1 (keys 2, 3) misses twice and evicts 0, 1 (used
  already: not re-used);
- every later iteration: keys 2, 3 are resident at its start; layer 0 misses twice and evicts
  2, 3, which layer 1 of the same iteration needs (2 re-used evictions); layer 1 misses twice,
  evicting 0, 1 (used already).

So with n iterations: misses 2 + 4 (n - 1), evictions the same, re-used 2 (n - 1); distinct
experts per iteration 4 against 2 slots, every iteration over the slots; the host link carries
misses x expert bytes, busy that over its bandwidth.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.serving.binding import bind
from sim.serving.testing import StubCost, pool_from_rows, tiny_config, workload


def _run(cache: str = "lru", budget: float = 0.5, arrays: bool = True, prefetch: str = "none"):
    cfg = tiny_config(layers=2, experts=2, top_k=2, budget_fraction=budget)
    cfg.policy.cache, cfg.policy.prefetch = cache, prefetch
    cfg.policy.cache_arrays = arrays
    pool = pool_from_rows([[[0, 1], [0, 1]]] * 8)
    wl = workload([0.0], [3], [4])  # prefill (one iteration) + 3 decode iterations
    rng = np.random.default_rng(0)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    sim.run()
    return sim, compute_metrics(sim)


@pytest.mark.parametrize("arrays", [True, False])
def test_lru_cyclic_working_set_by_hand(arrays):
    sim, m = _run(arrays=arrays)
    n = m["iterations"]
    assert n == 4
    assert m["misses"] == 2 + 4 * (n - 1) == m["evictions"]
    assert m["evictions_reused"] == 2 * (n - 1)
    assert m["evictions_reused_share"] == pytest.approx(2 * (n - 1) / (2 + 4 * (n - 1)))
    assert m["distinct_experts_per_iteration"] == {"mean": 4.0, "max": 4}
    assert m["cache_slots"] == 2.0
    assert m["iterations_over_slots"] == 1.0
    assert m["cache_scope"] == "global"
    eb = m["expert_bytes"]
    busy = m["misses"] * eb / 2000.0  # StubCost's host link: 2000 B/s
    assert m["host_link_busy_s"] == [pytest.approx(busy)]
    assert m["host_link_utilisation"]["max"] == pytest.approx(busy / m["sim_time_s"])
    # one replica, one GPU: its iterations fill the run (one request, served back to back)
    assert m["iteration_time_s"] == [pytest.approx(m["sim_time_s"])]
    assert m["busy_share"] == pytest.approx(1.0)
    assert m["fetch_stall_share"] == pytest.approx(m["fetch_stall_s"] / m["sim_time_s"])
    assert m["expert_compute_share"] == pytest.approx(sum(m["gpu_busy_s"]) / m["sim_time_s"])
    assert 0.5 < m["fetch_stall_share"] < 1.0  # each copy of 2 experts outlasts the compute


def test_all_resident_has_no_copies_and_no_cache_figures():
    _, m = _run(budget=1.0)
    assert m["h2d_bytes"] == 0 and m["host_link_busy_s"] == [0.0]
    assert m["host_link_utilisation"] == {"mean": 0.0, "max": 0.0}
    assert m["fetch_stall_share"] == 0.0 and m["evictions_reused"] == 0
    assert m["distinct_experts_per_iteration"] == {"mean": 0.0, "max": 0}  # no GPU has a cache
    assert m["expert_compute_share"] > 0


@pytest.mark.parametrize("arrays", [True, False])
def test_working_set_that_fits_by_hand(arrays):
    """Top-1, every token to expert 0 at both layers: each iteration touches keys 0 and 2 with
    2 slots. Warm start holds 0, 1; iteration 1: 0 hits, 2 misses and evicts 1 (not needed);
    then everything hits: one miss, one eviction, none re-used, no iteration over the slots."""
    cfg = tiny_config(layers=2, experts=2, top_k=1, budget_fraction=0.5)
    cfg.policy.cache_arrays = arrays
    pool = pool_from_rows([[[0], [0]]] * 8)
    wl = workload([0.0], [3], [4])
    rng = np.random.default_rng(0)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    sim.run()
    m = compute_metrics(sim)
    assert (m["misses"], m["evictions"], m["evictions_reused"]) == (1, 1, 0)
    assert m["distinct_experts_per_iteration"] == {"mean": 2.0, "max": 2}
    assert m["iterations_over_slots"] == 0.0
