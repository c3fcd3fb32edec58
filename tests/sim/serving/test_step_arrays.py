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


@pytest.mark.parametrize("argmin", [True, False, "compiled"])
@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("name", FORMS)
def test_arrays_serve_like_policy(name, seed, argmin, monkeypatch):
    """Random stores served with numpy (victims by repeated argmin, or by a sort) or compiled
    (sim/serving/compiled_steps.py), among prefetches and faults: the policy objects' misses,
    counts and state."""
    kern = None
    if argmin == "compiled":
        kern = pytest.importorskip("sim.serving.compiled_walk", reason="numba is not installed")
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
        got = store.serve(used, step, kern)
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


def _serve_by_hand(form, cap, E, L, warm, used, step0=0):
    """One GPU holding every key (L layers of E), ``warm`` loaded first (in that order), then
    one iteration using ``used``: (misses per layer, the store, the cache)."""
    s, c = _one(form, cap, E, L, warm)
    got = s.serve(_used(used, L * E), step0)
    try:  # the compiled serve (sim/serving/compiled_steps.py) to the same figures and state
        from sim.serving import compiled_walk
    except ImportError:
        compiled_walk = None
    if compiled_walk is not None:
        s2, _ = _one(form, cap, E, L, warm)
        got2 = s2.serve(_used(used, L * E), step0, compiled_walk)
        assert got2.tolist() == got.tolist()
        for a in ("S", "C", "T", "nres", "why", "tally"):
            assert getattr(s2, a).tolist() == getattr(s, a).tolist(), a
        assert s2.clock == s.clock
    return [m for (m,) in got.tolist()], s, c


@pytest.mark.parametrize("form", ["fifo_stamps", "lifo_stamps", "lfu_counts"])
def test_one_slot_over_three_layers_by_hand(form):
    """By hand, the same for every rule: 1 slot, 3 layers of 2 (keys 0-1, 2-3, 4-5), warm 4
    (the first stamp, 0). An iteration using 1 (layer 0) and 4 (layer 2), layer 1 idle: at layer
    0 the miss on 1 evicts 4, layer 1 serves nothing, at layer 2 the miss on 4 evicts 1 (loaded
    in this iteration, local index 1). Two distinct keys, both missed, one of them (4) resident
    at the start: why = (2, 1); counts 0 hits, 2 misses, 2 evictions; 4 resident again."""
    miss, s, c = _serve_by_hand(form, 1, 2, 3, [4], [1, 4])
    assert miss == [1, 0, 1]
    assert s.why[:, 0].tolist() == [2, 1]
    assert s.nres.tolist() == [1] and c.nres == 1
    assert (c.counts.hits, c.counts.misses, c.counts.evictions) == (0, 2, 2)
    assert sorted(c.resident) == [4]


def test_fifo_hit_on_the_oldest_is_no_victim():
    """FIFO, 2 slots, one layer of 4, warm 0 then 1 (0 the oldest). A step using 0 and 2: 0
    hits, so the miss on 2 evicts 1, not the oldest (0, in the step); then a step using 3 evicts
    0, the oldest, and one using 2 and 1 evicts 2 (now the oldest of 2, 3, which 1 replaces)."""
    s, c = _one("fifo_stamps", 2, 4, 1, [0, 1])
    assert s.serve(_used([0, 2], 4), 0).tolist() == [[1]]
    assert list(c._order) == [0, 2]
    assert s.serve(_used([3], 4), 1).tolist() == [[1]]
    assert list(c._order) == [2, 3]
    assert s.serve(_used([1, 2], 4), 2).tolist() == [[1]]
    assert list(c._order) == [2, 1]
    assert (c.counts.hits, c.counts.misses, c.counts.evictions) == (2, 3, 3)


@pytest.mark.parametrize("warm, evicted, order", [
    # 2 resident from the start (active), 0 loaded at layer 0 (active, the last in): 0 goes
    ([2], 0, [2, 4]),
    # nothing warm: 0 then 2 loaded at layers 0 and 1 (both active): 2, the last in, goes
    ([], 2, [0, 4]),
])
def test_lifo_active_keys_leave_last_in_first(warm, evicted, order):
    """LIFO by hand, 2 slots, 3 layers of 2 (keys 0-1, 2-3, 4-5), an iteration using 0, 2, 4
    (one a layer; all three active): the miss on 4 at layer 2 evicts the newer of the two
    resident keys, whether it was resident at the start or loaded earlier in the iteration."""
    miss, s, c = _serve_by_hand("lifo_stamps", 2, 2, 3, warm, [0, 2, 4])
    assert miss == [1, 0 if warm else 1, 1]
    assert evicted not in c.resident
    assert list(c._order) == order
    assert c.counts.evictions == 1


def test_lfu_within_an_iteration_by_hand():
    """LFU by hand, 2 slots, 3 layers of 2 (keys 0-5), resident 2 and 5 with 1 and 2 uses, both
    last used at step 3. The iteration at steps 4-6 uses 2 (layer 1, step 5: a hit, 2 uses
    now) and 4 (layer 2, step 6: a miss). The victim is 5: as many uses as 2, last used earlier
    (3 < 5); uses and last steps after: 2 -> (2, 5), 4 -> (1, 6), 5 -> (2, 3)."""
    s, c = _one("lfu_counts", 2, 2, 3, [2, 5])
    c._count[2], c._count[5] = 1, 2
    c._last[2] = c._last[5] = 3
    assert s.serve(_used([2, 4], 6), 4).tolist() == [[0], [0], [1]]
    assert sorted(c.resident) == [2, 4]
    assert c._count == [0, 0, 2, 0, 1, 2] and c._last == [-1, -1, 5, -1, 6, 3]


def test_lfu_last_step_zero_ranks_by_uses_first():
    """LFU by hand, 2 slots over keys 0..3 (one layer), resident 0 (3 uses, last at step 0) and
    1 (1 use, last at step 2). A step (4) using 2 evicts 1, the fewer uses, however old 0's
    last use is."""
    s, c = _one("lfu_counts", 2, 4, 1, [0, 1])
    c._count[0], c._count[1] = 3, 1
    c._last[0], c._last[1] = 0, 2
    assert s.serve(_used([2], 4), 4).tolist() == [[1]]
    assert sorted(c.resident) == [0, 2]


@pytest.mark.parametrize("uses, step0, served", [
    # (uses + 1).bit_length() + (step0 + L + 1).bit_length() + H.bit_length() against 62 bits;
    # L = 1, H = 1: 1 + 60 + 1 = 62 bits fit ...
    (0, 2**59, True),
    # ... 1 + 61 + 1 = 63 do not (step0 + 2 a power of two: one bit more than step0 + 1)
    (0, 2**60 - 2, False),
    # 1 + 60 + 1 = 62 (step0 + 2 = 2**60 - 1, one short of a bit more)
    (0, 2**60 - 3, True),
    # uses 2**30 - 1: 31 + 31 + 1 = 63 (uses + 1 a power of two)
    (2**30 - 1, 2**30, False),
    # uses 2**30 - 2: 30 + 31 + 1 = 62
    (2**30 - 2, 2**30, True),
])
def test_lfu_packing_declines_past_62_bits(uses, step0, served):
    """LFU packs (uses, last step + 1, local index) into one int64: an iteration whose figures
    need more than 62 bits goes to the general path (None, nothing changed); at 62 it is served.
    One GPU with one key (H = 1), 1 slot, resident, with ``uses`` uses."""
    s, c = _one("lfu_counts", 1, 1, 1, [0])
    c._count[0] = uses
    got = s.serve(_used([0], 1), step0)
    assert (got is not None) == served
    if served:
        assert got.tolist() == [[0]] and c._count == [uses + 1] and c._last == [step0]
    else:
        assert c._count == [uses] and c._last == [-1]


def test_idle_iteration_and_store_layout():
    """An iteration using no held key: no misses ((L, G) int64 zeros) and why zeroed. The
    store's arrays: per GPU and home key (G, H), per GPU (G,), tally (3, G), why (2, G), all
    int64; a store of no GPUs is empty (H = 0)."""
    masks = [np.array([1, 1, 0, 0, 1, 0], dtype=bool), np.array([0, 1, 1, 1, 0, 0], dtype=bool)]
    s = FifoStore(masks, 2)
    assert [h.tolist() for h in s.homes] == [[0, 1, 4], [1, 2, 3]] and s.H == 3
    assert s.loc.tolist() == [[0, 1, -1, -1, 2, -1], [-1, 0, 1, 2, -1, -1]]
    assert [s.hg.tolist(), s.hk.tolist()] == [[], []]  # no caches yet
    caches = [StampedFIFO(2, 6, s, g) for g in range(2)]
    # the serving order: layer 0 (keys 0-2) GPU 0 then 1, then layer 1 (keys 3-5)
    assert s.hg.tolist() == [0, 0, 1, 1, 0, 1] and s.hk.tolist() == [0, 1, 1, 2, 4, 3]
    assert s.hl.tolist() == [0, 0, 0, 0, 1, 1] and s.hi.tolist() == [0, 1, 0, 1, 2, 2]
    for name, shape in [("S", (2, 3)), ("C", (2, 3)), ("T", (2, 3)), ("nres", (2,)),
                        ("cap", (2,)), ("tally", (3, 2)), ("why", (2, 2))]:
        a = getattr(s, name)
        assert a.shape == shape and a.dtype == np.int64, name
    assert s.cap.tolist() == [2, 2] and s.clock == 0
    caches[0].insert(0, [4])
    s.why[:] = 7
    got = s.serve(_used([5], 6), 0)
    assert got.dtype == np.int64 and got.tolist() == [[0, 0], [0, 0]]
    assert s.why.tolist() == [[0, 0], [0, 0]]
    assert s.serve(_used([1, 4], 6), 0).tolist() == [[1, 1], [0, 0]]
    assert s.why.tolist() == [[2, 1], [0, 0]] and s.clock == 3
    assert [(c.counts.hits, c.counts.misses) for c in caches] == [(1, 1), (0, 1)]
    assert caches[1].to_arrays() is True and caches[1]._arrays is True  # already: nothing to do
    assert s.S.tolist() == [[-1, 1, 0], [2, -1, -1]] and s.nres.tolist() == [2, 1]
    fresh = StampedFIFO(1, 6, s, 0)  # a fresh cache on row 0: the row is empty, in objects mode
    assert s.S[0].tolist() == [-1, -1, -1] and s.nres.tolist() == [0, 1] and s.cap.tolist() == [1, 2]
    assert s.objects == {0} and s.caches[0] is fresh and fresh.nres == 0
    empty = LfuStore([], 0)  # no GPUs, no layers
    assert empty.H == 0 and empty.loc.shape == (0, 0) and empty.S.shape == (0, 0)
    assert empty.hg.tolist() == []


def test_a_resident_key_off_the_homes_keeps_objects():
    """A cache holding a key that is not one of its GPU's home keys (a prefetch may put any key
    there) has no row form: the store declines (None) and the cache stays in objects mode; a
    home key with local index 0 is no such key."""
    s = FifoStore([np.array([1, 1, 0, 0], dtype=bool)], 1)
    c = StampedFIFO(2, 4, s, 0)
    c.insert(0, [0, 3])
    assert s.serve(_used([1], 4), 0) is None
    assert c._arrays is False and list(c._order) == [0, 3]
    c.insert(1, [1])  # FIFO: 1 evicts 0, the oldest
    assert list(c._order) == [3, 1]
    c2 = StampedFIFO(2, 4, s, 0)  # a fresh cache on the row
    c2.insert(0, [0])
    assert s.serve(_used([0, 1], 4), 0).tolist() == [[1]]
    assert c2._arrays is True and list(c2._order) == [0, 1]


@pytest.mark.parametrize("form, attr", [("fifo_stamps", "resident"), ("fifo_stamps", "_order"),
                                        ("lfu_counts", "resident"), ("lfu_counts", "_count"),
                                        ("lfu_counts", "_last"), ("lfu_counts", "_heap")])
def test_touching_an_object_attribute_turns_to_objects(form, attr):
    """After a served iteration the cache is in arrays mode; reading any object-mode attribute
    turns it to objects (its value rebuilt from the row: resident 0 and 2 of keys 0..3, 0 the
    older, each with one use at step 0 when LFU); the next iteration turns it back."""
    s, c = _one(form, 2, 4, 1, [0, 1])
    s.serve(_used([0, 2], 4), 0)
    assert c._arrays is True and c.nres == 2 and s.objects == set()
    value = getattr(c, attr)
    assert c._arrays is False and s.objects == {0}
    want = {"resident": {0, 2}, "_order": [0, 2], "_count": [1, 0, 1, 0],
            "_last": [0, -1, 0, -1], "_heap": [(1, 0, 0), (1, 0, 2)]}[attr]
    got = sorted(value) if attr == "_heap" else list(value) if attr == "_order" else value
    assert got == want
    setattr(c, attr, value)  # the setter keeps the object in objects mode
    assert getattr(c, attr) is value and c._arrays is False
    assert s.serve(_used([3], 4), 1).tolist() == [[1]]
    assert c._arrays is True and s.objects == set()
