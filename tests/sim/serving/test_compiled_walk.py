"""The compiled kernels of the walk (sim/serving/compiled_walk.py) against their numpy references:
each kernel on random inputs (the same misses, stamps, counts, floats), a timing worked out by
hand, and whole runs whose metrics.json is the same with the kernels from the first iteration
and without them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.serving.walk as walk_mod
from sim.engine.metrics import compute_metrics, metrics_json
from sim.engine.simulation import Simulation
from sim.serving.binding import bind
from sim.serving.link import Link
from sim.serving.lru_arrays import StampedLRU, StampStore, serve_lru_iteration
from sim.serving.state import Requests
from sim.serving.testing import StubCost, random_pool, random_run, tiny_config, workload
from sim.serving.token_counts import pool_prefix_counts, source_counts

kern = pytest.importorskip("sim.serving.compiled_walk", reason="numba is not installed")


@pytest.fixture(autouse=True, scope="module")
def _every_replica_wide_enough():
    """The tiny replicas here are served by the step arrays too (FIFO, LIFO, LFU: their
    ``MIN_GPUS`` is a speed rule), so the kernels time their misses as well."""
    import sim.serving.step_arrays as step_arrays

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_arrays, "MIN_GPUS", 1)
        yield


# -- LRU stamps -------------------------------------------------------------------------------
def _stores(rng, L, E, G):
    N = L * E
    masks = [rng.random(N) < rng.uniform(0.3, 1.0) for _ in range(G)]
    a, b = StampStore(masks, L), StampStore(masks, L)
    caches = []
    for g in range(G):
        home = int(masks[g].sum())
        cap = int(rng.integers(0, home + 1)) if home else 0
        warm = np.flatnonzero(masks[g])[:cap].tolist()
        pair = []
        for store in (a, b):
            c = StampedLRU(cap, N, store, g)
            c.insert(0, warm)
            c.counts = dataclasses.replace(c.counts, prefetched=0)
            pair.append(c if home else None)
        caches.append(pair)
    return masks, a, b, caches


@pytest.mark.parametrize("seed", range(30))
def test_lru_kernel_serves_like_the_stamps(seed):
    """Random homes, capacities and iterations with prefetch inserts in between (objects mode and
    back): the compiled steps give the reference's misses per (layer, GPU), the same stamps,
    resident counts, clock, counts still owed and why-figures, and the caches the same order."""
    rng = np.random.default_rng(seed)
    L, E, G = int(rng.integers(1, 6)), int(rng.integers(2, 8)), int(rng.integers(1, 5))
    masks, ref, fast, caches = _stores(rng, L, E, G)
    served = 0
    for it in range(25):
        used = rng.random(L * E) < rng.uniform(0.0, 1.0)
        want = serve_lru_iteration(ref, used)
        got = serve_lru_iteration(fast, used, kern)
        assert (want is None) == (got is None)
        if want is not None:
            served += 1
            assert got.tolist() == want.tolist()
            assert fast.S.tolist() == ref.S.tolist() and fast.clock == ref.clock
            assert fast.nres.tolist() == ref.nres.tolist()
            assert fast.tally.tolist() == ref.tally.tolist()
            assert fast.why.tolist() == ref.why.tolist()
        for g in range(G):
            r, f = caches[g]
            if r is None:
                continue
            assert f.counts == r.counts
            if rng.random() < 0.2:  # a prefetch: objects mode, then back to arrays
                keys = rng.choice(np.flatnonzero(masks[g]), size=2).tolist()
                assert f.insert(100 + it, keys) == r.insert(100 + it, keys)
                assert list(f._order) == list(r._order)
    assert served


def test_lru_kernel_by_hand():
    """One GPU, 2 layers of 3 experts, 2 slots, keys 0 and 1 resident (1 the more recent).
    Iteration: layer 0 uses 0 and 2, layer 1 uses 3. Step 0: 0 hits, 2 misses (stamps 0 -> c, 2 ->
    c + 1), evicting 1 (least recent); step 1: 3 misses (stamp c + 2), evicting 0. Misses
    [[1], [1]], 2 evictions, 3 accesses, no miss on a key resident at the start; 2 and 3 stay."""
    store = StampStore([np.ones(6, dtype=bool)], 2)
    c = StampedLRU(2, 6, store, 0)
    c.insert(0, [0, 1])
    c.counts = dataclasses.replace(c.counts, prefetched=0)
    assert c.to_arrays()  # (the insert left it in objects mode)
    used = np.zeros(6, dtype=bool)
    used[[0, 2, 3]] = True
    c0 = store.clock
    assert store.S[0].tolist() == [c0 - 2, c0 - 1, -1, -1, -1, -1]
    miss = serve_lru_iteration(store, used, kern)
    assert miss.tolist() == [[1], [1]]
    assert store.S[0].tolist() == [-1, -1, c0 + 1, c0 + 2, -1, -1]
    assert store.nres.tolist() == [2] and store.clock == c0 + 3
    assert store.tally[:, 0].tolist() == [3, 2, 2] and store.why[:, 0].tolist() == [3, 0]
    assert c.resident == {2, 3}


# -- the layers' timing ---------------------------------------------------------------------------
def test_time_layers_by_hand():
    """2 layers, 2 GPUs, t = 1.0, attention 0.5, gating 0.25, no prediction cost, all-to-all 0.125
    each way, link latency 0.0625, an expert of 4 bytes over 4 bytes/s (a copy of m experts m
    s). Layer 0: gate 1.75, ready 1.875, GPU 0 copies 1 expert from 1.8125 to 2.8125 (stall
    0.9375) then computes 0.5 -> 3.3125; GPU 1 computes 1.0 from 1.875 -> 2.875; the layer ends
    3.3125, next 3.4375. Layer 1: gate 4.1875, ready 4.3125, GPU 1 copies 2 experts 4.25 -> 6.25
    (stall 1.9375), computes 0.25 -> 6.5; next layer at 6.625."""
    miss = np.array([[1, 0], [0, 2]], dtype=np.int64)
    comp = np.array([[0.5, 1.0], [0.75, 0.25]])
    stall = np.zeros(2)
    fin, starts, last = np.zeros((2, 2)), np.empty(2), np.empty(2, dtype=np.int64)
    t = kern.time_layers(miss, comp, np.array([0.125, 0.125]), 1.0, 0.5, 0.25, 0.0, 0.0625, 4,
                         4.0, stall, fin, starts, last)
    assert t == 6.625
    assert stall.tolist() == [0.9375, 1.9375]
    assert starts.tolist() == [1.8125, 4.25] and last.tolist() == [0, 1]
    assert fin[0, 0] == 2.8125 and fin[1, 1] == 6.25


# -- tokens per source GPU from the prefix counts ------------------------------------------------
@pytest.mark.parametrize("seed", range(25))
def test_prefix_sources_equal_source_counts(seed):
    """Random pools, entries and batches (one-token requests, chunks over the GPUs' blocks,
    chunks wrapping their entry one or more laps): the same integers as the reference."""
    rng = np.random.default_rng(seed)
    LE, W, G = int(rng.integers(3, 30)), int(rng.integers(1, 6)), int(rng.integers(1, 9))
    lens = rng.integers(1, 12, size=int(rng.integers(1, 8)))
    N = int(lens.sum())
    keys = rng.integers(0, LE, size=(N, W)).astype(np.int16)
    C = pool_prefix_counts(keys, LE)
    R = int(rng.integers(1, 12))
    entry = rng.integers(0, len(lens), size=R)
    offs = np.concatenate([[0], np.cumsum(lens)])[:-1]
    req = Requests([str(i) for i in range(R)], ["t"] * R, np.zeros(R), np.ones(R, dtype=np.int64),
                   np.ones(R, dtype=np.int64),
                   offs[entry].astype(np.int64), lens[entry].astype(np.int64))
    req.ctx[:] = rng.integers(0, 40, size=R)
    batch = rng.permutation(R)[:int(rng.integers(1, R + 1))]
    alloc = np.where(rng.random(len(batch)) < 0.5, 1, rng.integers(1, 30, size=len(batch)))

    class Plan:
        pool_keys = keys

    want = source_counts(Plan, req, C, batch, alloc, G)
    got = source_counts(Plan, req, C, batch, alloc, G, kern=kern)
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    assert got.sum() == alloc.sum() * W


# -- whole runs -----------------------------------------------------------------------------------
def _run(cfg, compiled: bool, seed: int, n: int = 14, tokens: int = 9):
    wl, pool, binding, rng = random_run(cfg, seed, n, tokens)
    s = Simulation(cfg, wl, pool, binding, StubCost(a2a_s=0.0003), rng)
    s.walk.compile_after = 1 if compiled else 10**9
    s.run()
    assert (s.walk.kern is not None) == compiled
    return metrics_json(compute_metrics(s))


@st.composite
def scenarios(draw):
    gpus = draw(st.sampled_from([1, 2, 4]))
    experts = draw(st.integers(2, 6))
    return dict(layers=draw(st.integers(1, 3)), experts=experts,
                top_k=draw(st.integers(1, min(2, experts))), gpus=gpus,
                ep=draw(st.sampled_from([e for e in (1, 2, 4) if gpus % e == 0])),
                budget=draw(st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0])),
                token_budget=draw(st.integers(1, 16)), seed=draw(st.integers(0, 50)),
                tokens=draw(st.integers(2, 9)), link=draw(st.sampled_from([1e9, 3e10])),
                cache=draw(st.sampled_from(["lru", "lru", "fifo", "lfu", "lifo", "static"])),
                prefetch=draw(st.sampled_from(["none", "none", "emoe_a", "similarity"])))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_runs_same_metrics(s):
    """Random tiny clusters (one expert of a layer per GPU, several, every expert on one GPU;
    slow and fast host links; the caches with an array form; request prefetch turning caches to
    objects and back, its copies in flight): metrics.json with the kernels from the first
    iteration equals the numpy references'."""
    def make():
        cfg = tiny_config(layers=s["layers"], experts=s["experts"], top_k=s["top_k"],
                          gpus_per_node=s["gpus"], ep=s["ep"], budget_fraction=s["budget"],
                          token_budget=s["token_budget"])
        cfg.hardware.host_link_bytes_per_s = s["link"]
        cfg.policy.cache, cfg.policy.prefetch = s["cache"], s["prefetch"]
        return cfg

    try:
        want = _run(make(), False, s["seed"], tokens=s["tokens"])
    except Exception as exc:  # a config the simulator rejects is rejected with the kernels too
        with pytest.raises(type(exc)):
            _run(make(), True, s["seed"], tokens=s["tokens"])
        return
    assert _run(make(), True, s["seed"], tokens=s["tokens"]) == want


def test_kernels_imported_after_the_warm_up(monkeypatch):
    """A run imports the kernels once it has walked ``compile_after`` iterations, not before; a
    replica of COMPILED_MIN_GPUS GPUs from its first; without numba the references stay."""
    cfg = tiny_config(layers=2, experts=4, top_k=2, gpus_per_node=4, ep=4, budget_fraction=0.5,
                      token_budget=8)
    rng = np.random.default_rng(0)
    pool = random_pool(2, 4, 2, entries=4, tokens=9, rng=rng)
    wl = workload([0.0, 0.001, 0.002], [5, 7, 3], [4, 2, 3])
    s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    assert s.walk.compile_after == walk_mod.COMPILE_AFTER and s.walk.kern is None
    s.walk.compile_after = 3
    seen = []
    s.walk.on_iteration.append(lambda d: seen.append(s.walk.kern is not None))
    s.run()
    assert seen[:2] == [False, False] and all(seen[2:]) and len(seen) > 3
    monkeypatch.setattr(walk_mod, "COMPILED_MIN_GPUS", 4)
    s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    assert s.walk.compile_after == 1
    monkeypatch.setattr(walk_mod, "walk_kernels", lambda: None)
    s.run()
    assert s.walk.kern is None and s.walk.walked > 0


def test_link_state_after_compiled_timing():
    """The links' clocks and bytes after an iteration timed by the kernel are those of the
    reference (their lazily kept intervals listed the same when a prefetch comes)."""
    cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=4, ep=4, budget_fraction=0.5,
                      token_budget=12)
    links = []
    for compiled in (False, True):
        rng = np.random.default_rng(5)
        pool = random_pool(3, 4, 2, entries=4, tokens=9, rng=rng)
        wl = workload([0.0, 0.0005, 0.001, 0.004], [9, 5, 7, 3], [3, 4, 2, 5])
        s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(a2a_s=0.0003), rng)
        s.walk.compile_after = 1 if compiled else 10**9
        s.run()
        out = []
        for rep in s.replicas:
            for st_ in rep.states:
                x: Link = st_.link
                if x._lazy is not None:
                    x._unlazy()
                out.append((x.t, x._solo, x.bytes_total, list(x.gaps)))
        links.append(out)
    assert links[0] == links[1] and any(b for _, _, b, _ in links[0])


def test_every_kernel_runs(monkeypatch):
    """On the bench's shape (EP, one expert of a layer per GPU, LRU in arrays, prefix counts)
    every kernel serves the run once the walk has imported them."""
    calls = {name: 0 for name in ("lru_serve", "time_layers", "prefix_sources", "batch_sums",
                                  "a2a_owned")}
    for name in calls:
        real = getattr(kern, name)

        def spy(*a, _real=real, _name=name):
            calls[_name] += 1
            return _real(*a)

        monkeypatch.setattr(kern, name, spy)
    cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=4, ep=4, budget_fraction=0.5,
                      token_budget=12)
    _run(cfg, True, 3)
    assert min(calls.values()) > 0


@pytest.mark.parametrize("seed", range(10))
def test_batch_sums_equal_batch_shape(seed):
    """Random batches (decode tokens, chunks shorter and longer than a query tile, from position
    0 and deep in the context): the compiled sums are the reference's integers."""
    from sim.serving.layer_costs import batch_shape

    rng = np.random.default_rng(seed)
    R = int(rng.integers(1, 40))
    req = Requests([str(i) for i in range(R)], ["t"] * R, np.zeros(R), np.ones(R, dtype=np.int64),
                   np.ones(R, dtype=np.int64), np.zeros(R, dtype=np.int64),
                   np.ones(R, dtype=np.int64))
    req.ctx[:] = rng.integers(0, 5000, size=R) * (rng.random(R) < 0.7)
    batch = rng.permutation(R)[:int(rng.integers(1, R + 1))]
    alloc = np.where(rng.random(len(batch)) < 0.5, 1, rng.integers(1, 700, size=len(batch)))
    want = batch_shape(req, batch, alloc, rows=False)
    got = batch_shape(req, batch, alloc, rows=False, kern=kern)
    assert got == want and type(got.tokens) is int and got.decode == int((alloc == 1).sum())


def test_batch_sums_by_hand():
    """A decode token at position 9 (10 pairs, reads 10 KV tokens) and a 200-token chunk from
    position 0 with 128-token tiles: 200 * 201 / 2 = 20,100 pairs; tiles end at 128 and 200:
    328 KV tokens read."""
    total, pairs, kv, decode = kern.batch_sums(np.array([9, 0]), np.array([1, 200]), 128)
    assert (total, pairs, kv, decode) == (201, 20110, 338, 1)


@pytest.mark.parametrize("name", ["ds_lru", "ds_lru_frac0.3", "mix_ep8_lru", "mix_ep8_eplb",
                                  "mix_least_loaded", "mix_ep8_emoe_l"])
def test_sim_matrix_scenarios_same_metrics(name, monkeypatch):
    """Scenarios of benchmarks/sim_matrix.py (fewer requests: CI time) walked with the kernels
    from the first iteration write the metrics.json of the numpy references."""
    import importlib.util
    from pathlib import Path

    from hydra import compose, initialize_config_module

    from sim.engine.run import simulate
    from sim.world.config import register_configs, to_sim_config

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "sim_matrix.py"
    spec = importlib.util.spec_from_file_location("sim_matrix", path)
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    overrides = [*matrix.SCENARIOS[name], "workload.num_requests=24", "output.progress=off"]
    register_configs()
    out = []
    for after in (10**9, 1):
        monkeypatch.setattr(walk_mod, "COMPILE_AFTER", after)
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = to_sim_config(compose("sim", overrides=overrides))
        if after > 1:  # (a next-layer prefetch on LRU's stamps loads the kernels at once)
            cfg.policy.cache_arrays = False
        sim_, metrics = simulate(cfg)
        assert (sim_.walk.kern is not None) == (after == 1)
        out.append(metrics_json(metrics))
    assert out[0] == out[1]


@pytest.mark.parametrize("seed", range(8))
def test_moe_owned_equals_the_analytic_moe(seed):
    """Random tokens per expert (idle ones, counts across a block boundary) and owners: the
    compiled fused-MoE time and load are the analytic model's floats (moe_s, the bincount)."""
    from sim.cost.analytic import MOE_BLOCK_TOKENS, MOE_LAUNCHES, AnalyticCost

    rng = np.random.default_rng(seed)
    cfg = tiny_config(layers=3, experts=6, top_k=2)
    cost = AnalyticCost(cfg.model, cfg.hardware)
    groups = int(rng.integers(1, 12))
    n = int(rng.integers(1, 200))
    tokens = rng.integers(0, 300, size=n) * (rng.random(n) < 0.7)
    group = rng.integers(0, groups, size=n)
    comp, load = kern.moe_owned(tokens, group, groups, MOE_BLOCK_TOKENS,
                                cost._expert_flops_per_token, cost._expert_weight_bytes,
                                cost._act_bytes_per_token, cost.flops_s, cost.hbm_s,
                                MOE_LAUNCHES * cost.hw.kernel_latency_s)
    assert comp.tolist() == cost.moe_s(tokens, group, groups).tolist()
    assert load.tolist() == np.bincount(group, weights=tokens, minlength=groups).tolist()
    assert (comp > 0).tolist() == (load > 0).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_a2a_owned_equals_fast_times(seed):
    """Random source counts over a one-node replica of single owners: the compiled per-layer
    all-to-all times are the network's floats."""
    rng = np.random.default_rng(seed)
    cfg = tiny_config(layers=3, experts=8, top_k=2, gpus_per_node=4, ep=4, budget_fraction=0.5)
    pool = random_pool(3, 8, 2, entries=2, tokens=5, rng=rng)
    wl = workload([0.0], [3], [2])
    s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(a2a_s=0.0003), rng)
    rn = s.walk.timing.net._replica(s.replicas[0].gpus)
    assert rn.fast_idx is not None
    src = rng.integers(0, 50, size=(4, 3 * 8)) * (rng.random((4, 24)) < 0.6)
    got = kern.a2a_owned(src, rn.fast_moves, rn.fast_idx, *rn.fast_shape, rn.fast_scale, rn.nv_lat)
    assert got.tolist() == rn.fast_times(src)
    assert len(got) == 3 and min(got) >= rn.nv_lat


def test_a2a_owned_by_hand():
    """One layer, 2 experts on 2 GPUs (expert e on GPU e). GPU 0's tokens: 3 to expert 0 (stay),
    1 to expert 1 (leaves); GPU 1's: 0 to expert 0, 2 to expert 1 (stay). The busiest link
    carries 1 token (GPU 0 out, GPU 1 in): the layer's all-to-all is latency + 1 token's bytes
    over NVLink, by the kernel and by the network's own path alike."""
    rng = np.random.default_rng(0)
    cfg = tiny_config(layers=1, experts=2, top_k=1, gpus_per_node=2, ep=2, budget_fraction=1.0)
    pool = random_pool(1, 2, 1, entries=2, tokens=5, rng=rng)
    wl = workload([0.0], [3], [2])
    s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(a2a_s=0.0003), rng)
    net, gpus = s.walk.timing.net, s.replicas[0].gpus
    rn = net._replica(gpus)
    assert rn.fast_idx.tolist() == [0, 1] and rn.fast_moves.tolist() == [[0, 1], [1, 0]]
    src = np.array([[3, 1], [0, 2]])
    want = 1 * rn.fast_scale + rn.nv_lat
    assert kern.a2a_owned(src, rn.fast_moves, rn.fast_idx, 1, 2, rn.fast_scale,
                          rn.nv_lat).tolist() == [want]
    assert net.layer_times(gpus, (src, None), 0.0, kern) == ([want], None)
    net._cache = (None, None, None)
    assert net.layer_times(gpus, (src, None), 0.0) == ([want], None)
