"""FIFO, LIFO and LFU as arrays (sim/serving/step_arrays.py) against their policy objects, step by
step: the same misses per (layer, GPU), counts, resident keys (in the same order where the policy
keeps one; LFU: the same uses and last steps) after every iteration, with prefetch inserts in
between (the cache turns to objects and back) and a fresh cache on a row (a fault's restore).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import sim.serving.step_arrays as step_arrays
from sim.policies.base import CACHE
from sim.serving.lru_arrays import ARRAY_FORMS, array_form
from sim.serving.step_arrays import CountedLFU, FifoStore, LfuStore, StampedFIFO, StampedLIFO

FORMS = ["fifo", "lifo", "lfu"]


@pytest.fixture(autouse=True)
def _every_replica_wide_enough(monkeypatch):
    monkeypatch.setattr(step_arrays, "MIN_GPUS", 1)


def test_narrow_replica_goes_to_the_objects(monkeypatch):
    """Fewer GPUs than MIN_GPUS: the arrays decline (None) before touching anything, so the
    caches stay objects; at MIN_GPUS they serve."""
    monkeypatch.setattr(step_arrays, "MIN_GPUS", 3)
    for G, serves in ((2, False), (3, True)):
        s = FifoStore([np.ones(4, dtype=bool)] * G, 1)
        caches = [StampedFIFO(2, 4, s, g) for g in range(G)]
        for c in caches:
            c.insert(0, [0, 1])
        got = s.serve(np.array([0, 0, 1, 1], dtype=bool), 0)
        assert (got is not None) == serves
        assert all(c._arrays == serves for c in caches)
        if serves:
            assert got.tolist() == [[2] * G]


def _rows(used, mask, L, E):
    return [[k for k in range(l * E, (l + 1) * E) if used[k] and mask[k]] for l in range(L)]


def _state(c):
    if isinstance(c, CountedLFU) or CACHE.get("lfu") in type(c).__mro__:
        return sorted(c.resident), list(c._count), list(c._last)
    return list(c._order), sorted(c.resident)


@pytest.mark.parametrize("argmin", [True, False])
@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("name", FORMS)
def test_arrays_serve_like_policy(name, seed, argmin, monkeypatch):
    monkeypatch.setattr(step_arrays, "ARGMIN_MAX", 10**6 if argmin else 0)
    store_cls, cache_cls = array_form(CACHE.get(name))
    rng = np.random.default_rng(seed)
    L, E = int(rng.integers(1, 5)), int(rng.integers(2, 8))
    G = int(rng.integers(1, 4))
    N = L * E
    masks = [rng.random(N) < rng.uniform(0.3, 1.0) for _ in range(G)]
    store = store_cls(masks, L)
    fast, ref = [], []

    def fresh(g):
        home = int(masks[g].sum())
        cap = int(rng.integers(0, home + 1)) if home else 0
        c = cache_cls(cap, N, store, g)
        r = CACHE.make(name, capacity=cap, num_keys=N)
        warm = np.flatnonzero(masks[g])[:cap].tolist()
        for x in (c, r):
            x.insert(0, warm)
            x.counts = dataclasses.replace(x.counts, prefetched=0)
        return (c, r) if home else (None, None)

    for g in range(G):
        c, r = fresh(g)
        fast.append(c)
        ref.append(r)
    step, served = 0, 0
    for _ in range(30):
        used = rng.random(N) < rng.uniform(0.1, 0.9)
        got = store.serve(used, step)
        rows = [_rows(used, masks[g], L, E) for g in range(G)]
        act = [{k for r in rows[g] for k in r} for g in range(G)]
        if got is None:  # a step needs more keys than a GPU's slots: the general path
            for g in range(G):
                if fast[g] is not None and act[g]:
                    fast[g].access_steps(step, rows[g], act[g])
                    ref[g].access_steps(step, rows[g], act[g])
        else:
            served += 1
            for g in range(G):
                if ref[g] is None:
                    assert not got[:, g].any()
                    continue
                want = ref[g].access_steps(step, rows[g], act[g])[0] if act[g] else [0] * L
                assert got[:, g].tolist() == want
                assert store.why[0, g] == len(act[g])
        step += L
        for g in range(G):
            if ref[g] is None:
                continue
            assert fast[g].counts == ref[g].counts
            assert fast[g].nres == len(ref[g].resident)
            u = rng.random()
            if u < 0.2:  # a prefetch: objects mode, then back to arrays
                keys = rng.choice(np.flatnonzero(masks[g]), size=2).tolist()
                assert fast[g].insert(step, keys) == ref[g].insert(step, keys)
            elif u < 0.25:  # a fault's restore: a fresh cache on the row
                fast[g], ref[g] = fresh(g)
                continue
            assert _state(fast[g]) == _state(ref[g])
    assert served  # the arrays served some iterations


def _one(form, cap, E, L, warm):
    store_cls, cache_cls = ARRAY_FORMS[form]
    s = store_cls([np.ones(L * E, dtype=bool)], L)
    c = cache_cls(cap, L * E, s, 0)
    c.insert(0, warm)
    return s, c


def _used(keys, n):
    u = np.zeros(n, dtype=bool)
    u[keys] = True
    return u


def test_lifo_evicts_inactive_first_then_last_in():
    """By hand: 3 slots, 2 layers of 3 experts (keys 0-2, 3-5), warm 0, 1, 3 (3 the last in).
    An iteration using 2 (layer 0) and 3 (layer 1): the active set is {2, 3}; at layer 0 the
    miss on 2 evicts the last-in inactive key, 1 (not 3: active, as plain LIFO would), so layer
    1 hits 3. The next iteration uses 4 only: it evicts the last in, 2."""
    s, c = _one("lifo_stamps", 3, 3, 2, [0, 1, 3])
    assert type(c) is StampedLIFO
    assert s.serve(_used([2, 3], 6), 0).tolist() == [[1], [0]]
    assert list(c._order) == [0, 3, 2]
    assert s.serve(_used([4], 6), 2).tolist() == [[0], [1]]
    assert list(c._order) == [0, 3, 4]
    assert (c.counts.hits, c.counts.misses, c.counts.evictions) == (1, 2, 2)


def test_fifo_by_hand():
    """FIFO, 2 slots over keys 0..3 (one layer), warm 0 then 1: a hit on 0 does not reorder, so
    using 2 next evicts 0 (LRU would evict 1)."""
    s, c = _one("fifo_stamps", 2, 4, 1, [0, 1])
    assert type(c) is StampedFIFO
    assert s.serve(_used([0], 4), 0).tolist() == [[0]]
    assert s.serve(_used([2], 4), 1).tolist() == [[1]]
    assert list(c._order) == [1, 2] and c.counts.evictions == 1 and c.counts.hits == 1


def test_lfu_by_hand():
    """LFU, 3 slots over keys 0..4 (one layer), warm 0, 1, 2. Step 0 uses {0, 3}: 3 evicts 1 (1
    and 2: no use, last -1: the smaller id). Step 1 uses {2, 4}: 4 evicts 0 (0 and 3: one use,
    last step 0: the smaller id). Step 2 uses {2, 4} (hits), step 3 {0}: 0 evicts 3 (one use at
    step 0; 2 and 4 have two)."""
    s, c = _one("lfu_counts", 3, 5, 1, [0, 1, 2])
    assert type(c) is CountedLFU
    for step, keys, miss in [(0, [0, 3], 1), (1, [2, 4], 1), (2, [2, 4], 0), (3, [0], 1)]:
        assert s.serve(_used(keys, 5), step).tolist() == [[miss]]
    assert sorted(c.resident) == [0, 2, 4]
    assert c._count == [2, 0, 2, 1, 2] and c._last == [3, -1, 2, 0, 2]
    assert c.counts.evictions == 3


def test_step_over_slots_goes_to_general_path():
    """A step needing more keys than the GPU's slots is not served (None, nothing changed)."""
    s = LfuStore([np.ones(4, dtype=bool)], 1)
    c = CountedLFU(1, 4, s, 0)
    c.insert(0, [0])
    assert s.serve(np.array([1, 1, 0, 0], dtype=bool), 0) is None
    assert c.resident == {0} and c._count == [0, 0, 0, 0]
