"""Cache scope ``per_layer`` (issue 21, defect 6): a GPU's slots are shared out over its layers
by the largest-remainder rule (sim/serving/plan.py ``layer_shares``); the per-layer caches hold
together what one cache over all layers would, and nothing is moved to the KV cache."""

from __future__ import annotations

import numpy as np

from sim.engine.simulation import Simulation
from sim.serving.binding import bind
from sim.serving.plan import layer_shares
from sim.serving.testing import StubCost, random_pool, tiny_config, workload


def test_layer_shares_by_hand():
    # Mixtral on 8 GPUs: one expert per layer per GPU, 32 layers, half the experts: 16 slots,
    # every quota 16 x 1 / 32 = 0.5: the 16 left-over slots go to layers 0-15 (ties: lower first)
    assert layer_shares(16, [1] * 32) == [1] * 16 + [0] * 16
    # quotas 7 x (4, 2, 2) / 8 = 3.5, 1.75, 1.75: floors 3, 1, 1; two left over: remainders
    # 4, 6, 6 (in eighths): layers 1 and 2
    assert layer_shares(7, [4, 2, 2]) == [3, 2, 2]
    # an even split stays even; every slot or none
    assert layer_shares(12, [8, 8, 8]) == [4, 4, 4]
    assert layer_shares(24, [8, 8, 8]) == [8, 8, 8] and layer_shares(0, [8, 8]) == [0, 0]
    for slots, experts in [(5, [3, 1, 4, 1, 5]), (13, [2, 7, 1, 8]), (1, [1, 1, 1])]:
        s = layer_shares(slots, experts)
        assert sum(s) == slots and all(0 <= a <= n for a, n in zip(s, experts))


def test_half_an_expert_per_layer_keeps_its_budget():
    """4 layers x 2 experts on 2 GPUs (EP 2): each GPU holds one expert per layer, half of them
    cached. One cache over all layers: floor(0.5 x 4) = 2 slots. Per layer the old rule gave each
    layer floor(0.5 x 1) = 0 slots and the GPU's 2 slots went to the KV cache; now layers 0
    and 1 get one slot each, the GPU keeps 2 slots, and the KV capacity is the global scope's."""
    L, E = 4, 2
    pool = random_pool(L, E, 1, entries=2, tokens=10, rng=np.random.default_rng(1))
    wl = workload([0.0, 0.01], [3, 3], [2, 2])
    plans = {}
    for scope in ("global", "per_layer"):
        cfg = tiny_config(layers=L, experts=E, gpus_per_node=2, ep=2, budget_fraction=0.5)
        cfg.cluster.cache_scope = scope
        sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)),
                         StubCost(), np.random.default_rng(0))
        sim.run()
        plans[scope] = sim.plan
    per = plans["per_layer"]
    assert per.layer_slots == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert per.capacity_slots == [2, 2] == plans["global"].capacity_slots
    assert per.kv_capacity_tokens == plans["global"].kv_capacity_tokens
