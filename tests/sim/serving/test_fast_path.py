"""The simulator's fast paths against the general one (the reference): LRU as recency stamps
served an iteration at once (sim/serving/lru_arrays.py, ``policy.cache_arrays``) and the
tokens per key from the pool's prefix counts (sim/serving/token_counts.py) give byte-identical
``metrics.json``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.serving.step_arrays as step_arrays
import sim.serving.token_counts
import sim.serving.walk
from sim.policies.base import CACHE, PREFETCH
from sim.policies.cache.lru import LRUCache
from sim.serving.lru_arrays import StampedLRU, StampStore, array_form, serve_lru_iteration
from sim.serving.prefetch_walk import RULES
from sim.serving.step_arrays import ArrayMode
from sim.serving.testing import tiny_config
from sim.world.config import FaultConfig
from tests.sim.sim_test_helpers import refused_alike, run_tiny

#: online cache policies (the simulator rejects oracles: belady needs the replay)
ONLINE = [n for n in CACHE.names() if not CACHE.get(n).requires_future]
#: the policies with an array form (sim/serving/lru_arrays.py ARRAY_FORMS)
ARRAYS = ("lru", "fifo", "lifo", "lfu", "static")
#: ... and keep_predicted's stamps, which only the compiled walk serves (sim/serving/prefetch_walk.py)
FORMS = (*ARRAYS, "keep_predicted")
#: prefetch policies that run without a trained checkpoint or the future
PREFETCHES = ["none", "emoe_a", "emoe_l", "emoe_task", "similarity"]


@pytest.fixture(autouse=True, scope="module")
def _every_replica_wide_enough():
    """The tiny replicas here are served by the step arrays too (their ``MIN_GPUS`` is a speed
    rule: narrower replicas go to the objects, equal by these same tests), and count from the
    pool's prefix counts from their first iteration (a tiny run never makes them due:
    tests/sim/serving/test_lazy_prefix.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_arrays, "MIN_GPUS", 1)
        mp.setattr(sim.serving.token_counts, "PREFIX_RENT", 0.0)
        yield


def _sim(cfg, seed: int = 0, **kw):
    sim_, metrics = run_tiny(cfg, seed, **kw)
    assert (sim_.walk.prefix is not None) == cfg.policy.cache_arrays
    return sim_, metrics


def _both(make_cfg, **kw):
    """metrics.json of the fast paths and of the general path (policy.cache_arrays=false)."""
    fast = make_cfg()
    fast.policy.cache_arrays = True
    slow = make_cfg()
    slow.policy.cache_arrays = False
    s_fast, j_fast = _sim(fast, **kw)
    s_slow, j_slow = _sim(slow, **kw)
    return s_fast, j_fast, s_slow, j_slow


@pytest.mark.parametrize("prefetch", PREFETCHES)
@pytest.mark.parametrize("cache", ONLINE)
@pytest.mark.parametrize("shape", ["ep4", "ep1"])
def test_every_policy_same_metrics(cache, prefetch, shape):
    def make():
        if shape == "ep4":  # one expert of a layer per GPU, as the Azure bench
            cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=4, ep=4,
                              budget_fraction=0.5, token_budget=24)
        else:  # one GPU holding every expert: steps of several keys
            cfg = tiny_config(layers=3, experts=6, top_k=2, budget_fraction=0.5, token_budget=24)
        cfg.policy.cache, cfg.policy.prefetch = cache, prefetch
        return cfg

    s_fast, j_fast, _, j_slow = _both(make, seed=3)
    assert j_fast == j_slow
    form = array_form(CACHE.get(cache))
    assert (form is not None) == (cache in FORMS)
    # a next-layer prefetch is served by the compiled prefetch walk on the array forms too
    # (sim/serving/prefetch_walk.py RULES), not on the static cache's (the objects serve it)
    arrays = form is not None and (not s_fast.walk.pred.pf_next or form[0] in RULES)
    assert (s_fast.replicas[0].stamps is not None) == arrays
    assert all(isinstance(st.cache, ArrayMode) == arrays for r in s_fast.replicas
               for st in r.states if st.cache is not None)
    if arrays:
        assert all(type(st.cache) is form[1] for r in s_fast.replicas for st in r.states
                   if st.cache is not None)


@pytest.mark.parametrize("cache", ARRAYS)
def test_fast_path_is_taken(monkeypatch, cache):
    """The bench's shape (EP, one key per GPU and layer) goes through the arrays."""
    calls = {"arrays": 0, "general": 0}
    store_cls = array_form(CACHE.get(cache))[0]
    real = store_cls.serve

    def spy(*a, **k):
        out = real(*a, **k)
        calls["arrays" if out is not None else "general"] += 1
        return out

    monkeypatch.setattr(store_cls, "serve", spy)
    cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=4, ep=4, budget_fraction=0.5,
                      token_budget=24)
    cfg.policy.cache = cache
    sim_, _ = _sim(cfg)
    assert calls["arrays"] == sum(r.iterations for r in sim_.replicas) > 0
    assert calls["general"] == 0


@st.composite
def scenarios(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 6))
    gpus = draw(st.sampled_from([1, 2, 4]))
    ep = draw(st.sampled_from([e for e in (1, 2, 4) if gpus % e == 0]))
    return dict(layers=layers, experts=experts, top_k=draw(st.integers(1, min(2, experts))),
                gpus=gpus, ep=ep, budget=draw(st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0])),
                token_budget=draw(st.integers(1, 16)), seed=draw(st.integers(0, 50)),
                fault=draw(st.booleans()), fault_gpu=draw(st.integers(0, gpus - 1)),
                placement=draw(st.sampled_from(["contiguous", "replicated"])),
                tokens=draw(st.integers(2, 9)), cache=draw(st.sampled_from(ARRAYS)),
                prefetch=draw(st.sampled_from(["none", "emoe_a", "similarity"])))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_same_metrics(s):
    """Random tiny clusters (replicated experts, faults, prompts longer than their pool entry so
    chunks wrap around it, request prefetch turning caches to objects and back), every policy
    with an array form: both paths write the same metrics.json."""
    def make():
        cfg = tiny_config(layers=s["layers"], experts=s["experts"], top_k=s["top_k"],
                          gpus_per_node=s["gpus"], ep=s["ep"], budget_fraction=s["budget"],
                          token_budget=s["token_budget"])
        cfg.policy.cache, cfg.policy.prefetch = s["cache"], s["prefetch"]
        if s["placement"] == "replicated" and s["ep"] > 1 and s["experts"] >= 2:
            cfg.policy.placement = "eplb"
            cfg.policy.placement_args = {}
        if s["fault"]:
            cfg.cluster.faults = [FaultConfig(time_s=0.01, gpu=s["fault_gpu"], recovery_s=0.02)]
        return cfg

    try:
        _, j_fast, _, j_slow = _both(make, seed=s["seed"], tokens=s["tokens"])
    except Exception as exc:  # a config the simulator rejects is rejected by both paths alike
        refused_alike(exc, make, lambda cfg: _sim(cfg, seed=s["seed"], tokens=s["tokens"]))
        return
    assert j_fast == j_slow


# -- the stamps against LRUCache, step by step ----------------------------------------------------
@pytest.mark.parametrize("pairwise", [True, False])
@pytest.mark.parametrize("seed", range(40))
def test_stamps_serve_like_lru(seed, pairwise, monkeypatch):
    """Random home sets (some keys on several GPUs), capacities and iterations, with prefetch
    inserts in between (the cache turns to objects and back): the same misses per step, the same
    counts, the same resident keys in the same recency order as LRUCache.access_steps (the
    double-counted keys found pairwise, and by counts per layer as for big iterations)."""
    import sim.serving.lru_arrays as stamped

    monkeypatch.setattr(stamped, "PAIRWISE_MAX", 10**9 if pairwise else -1)
    rng = np.random.default_rng(seed)
    L, E = int(rng.integers(1, 5)), int(rng.integers(2, 7))
    G = int(rng.integers(1, 4))
    N = L * E
    masks = [rng.random(N) < rng.uniform(0.3, 1.0) for _ in range(G)]
    store = StampStore(masks, L)
    fast, ref = [], []
    for g in range(G):
        home = int(masks[g].sum())
        cap = int(rng.integers(0, home + 1)) if home else 0
        c = StampedLRU(cap, N, store, g)
        r = LRUCache(cap, N)
        warm = np.flatnonzero(masks[g])[:cap].tolist()
        for x in (c, r):
            x.insert(0, warm)
            x.counts = dataclasses.replace(x.counts, prefetched=0)
        fast.append(c if home else None)
        ref.append(r if home else None)
    step = 0
    for _ in range(30):
        used = rng.random(N) < rng.uniform(0.1, 0.9)
        got = serve_lru_iteration(store, used)
        if got is None:  # a step needs more keys than a GPU's slots: the general path
            for g in range(G):
                if fast[g] is not None:
                    rows = [[k for k in range(l * E, (l + 1) * E) if used[k] and masks[g][k]]
                            for l in range(L)]
                    fast[g].access_steps(step, rows)
                    ref[g].access_steps(step, rows)
        else:
            for g in range(G):
                if ref[g] is None:
                    assert not got[:, g].any()
                    continue
                rows = [[k for k in range(l * E, (l + 1) * E) if used[k] and masks[g][k]]
                        for l in range(L)]
                want, _ = ref[g].access_steps(step, rows)
                assert got[:, g].tolist() == want
        step += L
        for g in range(G):
            if ref[g] is None:
                continue
            assert fast[g].counts == ref[g].counts
            if rng.random() < 0.2:  # a prefetch: objects mode, then back to arrays
                keys = rng.choice(np.flatnonzero(masks[g]), size=2).tolist()
                assert fast[g].insert(step, keys) == ref[g].insert(step, keys)
            assert list(fast[g]._order) == list(ref[g]._order)
            assert fast[g].resident == ref[g].resident


def test_prefix_counts_match_direct():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 12, size=(50, 4)).astype(np.int16)
    C = sim.serving.token_counts.pool_prefix_counts(keys, 12)
    for a, b in [(0, 50), (3, 17), (10, 11), (49, 50)]:
        assert (C[b] - C[a]).tolist() == np.bincount(keys[a:b].ravel(), minlength=12).tolist()


@pytest.mark.parametrize("rows", [255, 256, 257, 700])
def test_prefix_counts_across_row_blocks(rows):
    """Every row of the prefix counts, across the blocks the running sum is taken in (256 rows)
    and with a key twice in a row, equals the counts taken row by row."""
    rng = np.random.default_rng(rows)
    keys = rng.integers(0, 9, size=(rows, 5)).astype(np.int16)
    keys[::7, 1] = keys[::7, 0]
    C = sim.serving.token_counts.pool_prefix_counts(keys, 9)
    direct = np.zeros((rows + 1, 9), dtype=np.int64)
    for i in range(rows):
        direct[i + 1] = direct[i] + np.bincount(keys[i], minlength=9)
    assert C.dtype == np.int32 and C.tolist() == direct.tolist()


@pytest.mark.parametrize("rows,width", [(0, 3), (1, 1), (511, 2), (512, 0), (513, 7), (1000, 0)])
def test_prefix_counts_random_pools(rows, width):
    """Random pools (a 1-D pool for width 0, keys repeated within rows) across the blocks' bounds:
    every row equals numpy's cumsum of the rows' own counts; a pool with no rows is one row of
    zeros."""
    rng = np.random.default_rng(1000 + rows)
    K = 33
    keys = rng.integers(0, K, size=(rows, width) if width else rows).astype(np.int16)
    C = sim.serving.token_counts.pool_prefix_counts(keys, K)
    own = np.zeros((rows + 1, K), dtype=np.int64)
    for i in range(rows):
        own[i + 1] = np.bincount(np.atleast_1d(keys[i]), minlength=K)
    assert C.shape == (rows + 1, K) and C.dtype == np.int32
    assert C.tolist() == np.cumsum(own, axis=0).tolist()
    if rows:
        assert int(C[-1].sum()) == keys.size  # every key of every row counted once


def test_running_sum_equals_cumsum():
    """The in-place running sum down the rows (groups of rows, their totals, the rows after the
    last whole group) equals numpy's cumsum for every row count around the group sizes; by hand:
    rows [1, 2], [3, 4], [5, 6] become [1, 2], [4, 6], [9, 12]."""
    from sim.serving.token_counts import _running_sum

    x = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int32)
    _running_sum(x, group=2)
    assert x.tolist() == [[1, 2], [4, 6], [9, 12]]
    rng = np.random.default_rng(3)
    for group in (2, 3, 16):
        for n in [*range(1, 40), 255, 256, 257, 511, 512, 513]:
            x = rng.integers(0, 5, size=(n, 7)).astype(np.int32)
            want = np.cumsum(x, axis=0).tolist()
            _running_sum(x, group)
            assert x.tolist() == want, (group, n)
    with pytest.raises(ValueError, match="C-contiguous"):
        _running_sum(np.zeros((4, 6), dtype=np.int32)[:, ::2])


def test_registries_cover_the_test():
    """A new cache or prefetch policy joins the comparison above (or is named here)."""
    assert set(ONLINE) == {n for n in CACHE.names() if not CACHE.get(n).requires_future}
    # emoe_learned and learned_next need a trained checkpoint (tests/sim/app/test_dial.py runs them);
    # next-layer prefetch walks layer by layer, off the array path
    assert set(PREFETCHES) | {"emoe_learned", "learned_next", "learned_topk"} == {n for n in PREFETCH.names()
                                                  if not PREFETCH.get(n).requires_future}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_earlier_newer_dominance_count_equals_pairwise(monkeypatch, seed):
    """The large-iteration count of keys used twice (ranks, layer blocks, binary searches) equals
    the pairwise count on random iterations: accesses in serving order by GPU then layer,
    distinct stamps, queries a subset of the residents."""
    import sim.serving.lru_arrays as stamped

    rng = np.random.default_rng(seed)
    G, L = 5, 13
    g = np.sort(rng.integers(0, G, 600))
    layer = np.concatenate([np.sort(rng.integers(0, L, int((g == k).sum()))) for k in range(G)])
    n = len(g)
    gid = np.searchsorted(g, g, "left")  # each access's GPU's first position
    first = np.array([np.flatnonzero((g == g[i]) & (layer == layer[i]))[0] for i in range(n)])
    s = rng.permutation(10 * n)[:n] + 3
    res = np.flatnonzero(rng.random(n) < 0.8)
    q = res[rng.random(len(res)) < 0.6]
    args = (res, s[res], gid[res], layer[res], q, s[q], gid[q], first[q], layer[q])
    monkeypatch.setattr(stamped, "PAIRWISE_MAX", 10**9)
    want = stamped._earlier_newer(*args)
    monkeypatch.setattr(stamped, "PAIRWISE_MAX", 1)
    got = stamped._earlier_newer(*args)
    assert want.sum() > 0 and np.array_equal(np.asarray(got, dtype=np.int64), want)


@pytest.mark.parametrize("cache", ["fifo", "lifo", "lfu", "priority", "keep_predicted"])
def test_object_caches_timed_as_counts(monkeypatch, cache):
    """A replica narrower than the step arrays' MIN_GPUS serves FIFO/LIFO/LFU (and the caches
    without an array form) through the objects; their misses are counts, and the layers are then
    timed by ``time_counts`` (``LayerTiming.time_decided``), not copy by copy: the same
    metrics.json as the general path, which times every copy (``time_layers``)."""
    from sim.serving.layer_timing import LayerTiming

    monkeypatch.setattr(step_arrays, "MIN_GPUS", 32)
    counted = {"counts": 0, "declined": 0}
    real = LayerTiming.time_counts

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        counted["counts" if out is not None else "declined"] += 1
        return out

    monkeypatch.setattr(LayerTiming, "time_counts", spy)

    def make():
        cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=4, ep=4,
                          budget_fraction=0.5, token_budget=24)
        cfg.policy.cache = cache
        return cfg

    s_fast, j_fast, s_slow, j_slow = _both(make, seed=5, n=20)
    assert j_fast == j_slow
    assert counted["counts"] > 0
    fast_links = [(st.link.t, st.link.bytes_total) for r in s_fast.replicas for st in r.states]
    slow_links = [(st.link.t, st.link.bytes_total) for r in s_slow.replicas for st in r.states]
    assert fast_links == slow_links
