"""The static cache in arrays (sim/serving/static_arrays.py): an iteration served at once once the
caches are settled, worked out by hand against the policy's own ``access_steps``; unsettled
caches left to the general path; whole runs equal to the objects' with and without a warm
start."""

from __future__ import annotations

import numpy as np
import pytest

from sim.policies.base import CACHE
from sim.policies.cache.static import StaticCache
from sim.serving.lru_arrays import array_form
from sim.serving.static_arrays import StampedStatic, StaticStore
from sim.serving.testing import tiny_config
from sim.world.facts import CacheCounts
from tests.sim.sim_test_helpers import run_tiny

L, E = 2, 3  # keys 0 1 2 (layer 0), 3 4 5 (layer 1)


def _store(caps, homes):
    masks = []
    for h in homes:
        m = np.zeros(L * E, dtype=bool)
        m[h] = True
        masks.append(m)
    store = StaticStore(masks, L)
    caches = [StampedStatic(c, L * E, store, g) for g, c in enumerate(caps)]
    return store, caches


def test_registered_form():
    assert array_form(CACHE.get("static")) == (StaticStore, StampedStatic)
    assert StampedStatic.array_form is None  # (a subclass declares its own, or none)


def test_settled_iteration_by_hand():
    """GPU 0 holds keys 0 1 3 4 with 2 slots, warm with 0 and 3; GPU 1 holds 2 5 with 1 slot,
    warm with 5. The batch uses 0 1 2 3 5: GPU 0 hits 0 (layer 0) and 3 (layer 1), misses 1
    (layer 0, streamed); GPU 1 misses 2 (layer 0, streamed), hits 5 (layer 1). Nothing is
    evicted or loaded, and the policy's own access_steps says the same."""
    store, (c0, c1) = _store([2, 1], [[0, 1, 3, 4], [2, 5]])
    c0.insert(0, [0, 3])
    c1.insert(0, [5])
    for c in (c0, c1):
        c.counts = CacheCounts()
    used = np.zeros(L * E, dtype=bool)
    used[[0, 1, 2, 3, 5]] = True
    miss = store.serve(used, 0)
    assert miss.tolist() == [[1, 1], [0, 0]]  # (layer, GPU)
    assert store.why.tolist() == [[3, 2], [0, 0]]  # distinct keys asked; none resident missed
    assert (c0.counts.hits, c0.counts.misses, c0.counts.streamed, c0.counts.evictions) == (2, 1, 1, 0)
    assert (c1.counts.hits, c1.counts.misses, c1.counts.streamed, c1.counts.evictions) == (1, 1, 1, 0)
    assert c0.resident == {0, 3} and c1.resident == {5}  # (reading it: objects mode)
    ref0, ref1 = StaticCache(2, L * E), StaticCache(1, L * E)
    ref0.insert(0, [0, 3])
    ref1.insert(0, [5])
    ref0.counts, ref1.counts = CacheCounts(), CacheCounts()
    assert ref0.access_steps(0, [{0, 1}, {3}])[0] == [1, 0]
    assert ref1.access_steps(0, [{2}, {5}])[0] == [1, 0]
    assert ref0.counts == c0.counts and ref1.counts == c1.counts
    assert store.serve(used, 2).tolist() == [[1, 1], [0, 0]]  # (back to arrays: the same)
    assert c0.counts.streamed == 2 and c1.counts.misses == 2


def test_gpus_without_a_cache_or_a_used_key():
    """Three GPUs: GPU 0 (keys 0 3, 1 slot, warm with 3) and GPU 1 (keys 1 4, 1 slot, warm
    with 1) have caches, GPU 2 (keys 2 5) none (it holds all it needs). The batch uses 0 2 3
    5: GPU 0 misses 0 at layer 0 (streamed) and hits 3; GPU 1 uses nothing (the last GPU with
    a cache: its figures are zeros all the same); GPU 2's keys are nobody's misses."""
    masks = [np.isin(np.arange(L * E), h) for h in ([0, 3], [1, 4], [2, 5])]
    store = StaticStore(masks, L)
    c0, c1 = StampedStatic(1, L * E, store, 0), StampedStatic(1, L * E, store, 1)
    c0.insert(0, [3])
    c1.insert(0, [1])
    for c in (c0, c1):
        c.counts = CacheCounts()
    used = np.isin(np.arange(L * E), [0, 2, 3, 5])
    assert store.serve(used, 0).tolist() == [[1, 0, 0], [0, 0, 0]]
    assert store.why.tolist() == [[2, 0, 0], [0, 0, 0]]
    assert (c0.counts.hits, c0.counts.misses, c0.counts.streamed) == (1, 1, 1)
    assert c1.counts == CacheCounts()
    empty = StaticStore(masks, L)  # (no cache attached: every GPU holds all it needs)
    assert empty.serve(used, 0).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_unsettled_left_to_the_general_path():
    """A cache with a free slot and a home key not resident can still load: None (nothing
    changed); once the general path has filled it, the store serves. A cache holding every
    key it holds (fewer than its slots) is settled."""
    store, (c0,) = _store([3], [[0, 1, 3, 4]])
    c0.insert(0, [0, 3])
    used = np.zeros(L * E, dtype=bool)
    used[[1, 4]] = True
    counts = (c0.counts.hits, c0.counts.misses)
    assert store.serve(used, 0) is None and (c0.counts.hits, c0.counts.misses) == counts
    c0.access_steps(0, [{1}, {4}])  # loads 1 (the free slot), streams 4
    assert c0.resident == {0, 1, 3} and c0.counts.streamed == 1
    assert store.serve(used, 2).tolist() == [[0], [1]]  # 1 hits, 4 streams again
    assert c0.counts.streamed == 2
    store2, (c2,) = _store([5], [[0, 1]])
    c2.insert(0, [0, 1])
    used2 = np.zeros(L * E, dtype=bool)
    used2[[0, 1]] = True
    assert store2.serve(used2, 0).tolist() == [[0], [0]]


def test_counts_replaced_owe_nothing():
    store, (c0,) = _store([1], [[0, 3]])
    c0.insert(0, [0])
    used = np.zeros(L * E, dtype=bool)
    used[3] = True
    store.serve(used, 0)  # owes one miss, streamed
    c0.counts = CacheCounts()
    assert c0.counts == CacheCounts()


@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize("fill", ["first", "frequency"])
def test_whole_runs_equal_the_objects(warm, fill):
    """EP 4 (one expert of a layer per GPU) and one GPU with every expert, half the experts
    cached, warm or cold (the caches fill through the general path first): the same
    metrics.json with and without the arrays."""
    for shape in ("ep4", "ep1"):
        out = []
        for arrays in (True, False):
            if shape == "ep4":
                cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=4, ep=4,
                                  budget_fraction=0.5, token_budget=24)
            else:
                cfg = tiny_config(layers=3, experts=6, top_k=2, budget_fraction=0.5,
                                  token_budget=24)
            cfg.policy.cache, cfg.policy.cache_args = "static", {"fill": fill}
            cfg.cluster.warm_start = warm
            cfg.policy.cache_arrays = arrays
            sim_, metrics = run_tiny(cfg, 5, n=16)
            assert (sim_.replicas[0].stamps is not None) == arrays
            out.append(metrics)
        assert out[0] == out[1], shape


def test_a_bad_fill_is_refused_on_the_arrays_too():
    from sim.common.errors import ConfigError

    cfg = tiny_config(layers=2, experts=4, top_k=1)
    cfg.policy.cache, cfg.policy.cache_args = "static", {"fill": "sideways"}
    with pytest.raises(ConfigError, match="fill"):
        run_tiny(cfg, 0)

