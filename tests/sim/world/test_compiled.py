"""The compiled kernels of large replicas (sim/world/compiled.py) give the same bytes as the numpy
references: the per-batch token split (sim/world/token_split.py) and the all-to-all's traffic
with a per-batch share (sim/world/traffic.py), over random tiny clusters."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sim.world import token_split
from sim.world.token_split import COMPILED_MIN_GPUS, compiled_kernels, split_tokens
from sim.world.traffic import duplicate_destinations, gpu_traffic, source_counts

pytest.importorskip("numba", reason="numba is not installed: the numpy references run")


def _hold(rng, L, E, G, p):
    hold = rng.random((L, E, G)) < p
    owner = rng.integers(0, G, size=(L, E))
    hold[np.arange(L)[:, None], np.arange(E)[None, :], owner] = True
    return hold


def _counts(rng, N, L, E):
    c = rng.integers(0, 40, size=(N, L, E))
    c[rng.random(c.shape) < 0.3] = 0  # idle experts
    c[rng.random(c.shape) < 0.05] *= 200  # a hot expert
    return c


def test_gate_by_replica_size():
    assert compiled_kernels(COMPILED_MIN_GPUS - 1) is None
    assert compiled_kernels(COMPILED_MIN_GPUS) is not None
    assert compiled_kernels(COMPILED_MIN_GPUS, compiled=False) is None
    assert compiled_kernels(2, compiled=True) is not None


@pytest.mark.parametrize("seed", range(40))
def test_split_tokens_compiled_equals_reference(seed):
    rng = np.random.default_rng(seed)
    L, E, G = int(rng.integers(1, 4)), int(rng.integers(2, 12)), int(rng.integers(2, 9))
    hold = _hold(rng, L, E, G, float(rng.choice([0.15, 0.3, 0.6])))
    counts = _counts(rng, int(rng.integers(1, 5)), L, E)
    for passes in (1, 2, 8):
        ref = split_tokens(counts, hold, passes, compiled=False)
        fast = split_tokens(counts, hold, passes, compiled=True)
        assert fast.dtype == ref.dtype and np.array_equal(fast, ref)


def test_split_tokens_compiled_refines():
    """A chain of replicas (GPU 0-1 through expert 0, 1-2 through expert 1) where the greedy
    stops one token short: both forms reach the balanced split (11 tokens on 3 GPUs: 4, 4, 3 in
    some order, the bound ceil(11 / 3) = 4)."""
    hold = np.zeros((1, 3, 3), dtype=bool)
    hold[0, 0, [0, 1]] = True
    hold[0, 1, [1, 2]] = True
    hold[0, 2, 0] = True
    counts = np.array([[[4, 4, 3]]])
    for compiled in (False, True):
        out = split_tokens(counts, hold, compiled=compiled)
        assert out.sum(axis=-1).tolist() == counts.tolist()
        assert out[0, 0].sum(axis=0).max() == 4


def _plan(L, E, G, share):
    return SimpleNamespace(L=L, E=E, topo=SimpleNamespace(expert_parallel=G), single_owner=False,
                           share=share)


@pytest.mark.parametrize("seed", range(30))
def test_gpu_traffic_compiled_equals_matmul(seed):
    """The per-batch share (a split's tokens over the expert's tokens: fractions) through the
    compiled chain of fused multiply-adds and through BLAS: the same floats."""
    rng = np.random.default_rng(100 + seed)
    L, E = int(rng.integers(1, 4)), int(rng.choice([3, 8, 16, 64, 256]))
    G = int(rng.choice([2, 4, 6, 8, 12, 16]))
    hold = _hold(rng, L, E, G, 0.3)
    counts = _counts(rng, 1, L, E)[0]
    tok = split_tokens(counts, hold)
    share = tok / np.maximum(counts, 1)[:, :, None]
    src = rng.integers(0, 50, size=(G, L * E))
    src[rng.random(src.shape) < 0.4] = 0
    plan = _plan(L, E, G, share)
    ref = gpu_traffic(plan, src, share, compiled=False)
    # what runs: the chain where this machine's BLAS forms the product the same way, else BLAS;
    # either way BLAS's bytes
    assert np.array_equal(gpu_traffic(plan, src, share), ref)
    from sim.world import compiled
    from sim.world.traffic import chain_matches_blas

    if chain_matches_blas(compiled, L, E, G):  # then on other values too (the order is the shape's)
        fast = gpu_traffic(plan, src, share, compiled=True)
        assert fast.shape == ref.shape == (L, G, G)
        assert np.array_equal(fast, ref)
        assert np.array_equal(gpu_traffic(plan, src, compiled=True), ref)  # the plan's share
        # the CSR read from the holders' pairs (a superset of the share's nonzeros): the same
        pairs = np.argwhere(hold.reshape(L * E, G))
        assert np.array_equal(compiled.traffic_share(src, share, pairs[:, 0], pairs[:, 1]), ref)


def test_gpu_traffic_odd_gpus_stay_on_blas(monkeypatch):
    """An odd G (BLAS's edge tiles sum in another order) or E > 256 never takes the chain."""
    from sim.world import compiled

    monkeypatch.setattr(compiled, "traffic_share", None)  # called: a TypeError
    for L, E, G in ((1, 4, 5), (1, 300, 4)):
        share = np.full((L, E, G), 1.0 / G)
        m = gpu_traffic(_plan(L, E, G, share), np.ones((G, L * E), dtype=np.int64), share,
                        compiled=True)
        assert np.allclose(m, E / G)


@pytest.mark.parametrize("seed", range(20))
def test_counts_compiled_equal_reference(seed):
    """Tokens per source GPU and key, and the repeated (layer, GPU)s counted by source, for
    batches on both sides of the bincount switch (512 tokens)."""
    from sim.world import compiled

    rng = np.random.default_rng(300 + seed)
    L, E, K, G = int(rng.integers(1, 4)), int(rng.integers(4, 20)), int(rng.integers(1, 5)), \
        int(rng.choice([2, 4, 16, 32]))
    T = int(rng.choice([1, 7, 100, 600]))
    K = min(K, E)
    keys = np.stack([rng.permutation(E)[:K] for _ in range(T * L)]).reshape(T, L, K)
    keys = (keys + (np.arange(L) * E)[None, :, None]).reshape(T, L * K).astype(np.int32)
    owner = rng.integers(0, G, size=L * E)
    lg_index = (np.arange(L * E) // E) * G + owner
    assert np.array_equal(compiled.count_sources(keys, G, L * E), source_counts(keys, G, L * E))
    dups = duplicate_destinations(keys, lg_index, L, K, G)
    out = np.empty(keys.shape, dtype=np.int16)
    assert compiled.dup_index(keys, lg_index, L, K, G, out) == (dups is not None)
    if dups is not None:  # the pool's repeats (ClusterPlan.build), compiled: the same array
        assert out.dtype == dups.dtype and np.array_equal(out, dups)
    any_dup, dc = compiled.count_dups(keys, lg_index, L, K, G)
    assert any_dup == (dups is not None)
    if dups is not None:
        assert np.array_equal(dc, source_counts(dups, G, L * G + 1))


def test_count_dups_hand_figure():
    """2 GPUs, 1 layer, top-3: token 0 (GPU 0) goes to experts on GPUs 1, 1, 0 (one repeat
    of (layer 0, GPU 1)); token 1 (GPU 1) to GPUs 0, 1, 0 (a repeat of GPU 0)."""
    from sim.world import compiled

    lg_index = np.array([1, 1, 0, 0])  # experts 0, 1 on GPU 1; 2, 3 on GPU 0
    keys = np.array([[0, 1, 2], [2, 0, 3]])
    any_dup, dc = compiled.count_dups(keys, lg_index, 1, 3, 2)
    assert any_dup and dc.tolist() == [[0, 1, 2], [1, 0, 2]]


def test_gpu_traffic_hand_figure():
    """One layer, 2 GPUs, expert 0 split 1/3 : 2/3, expert 1 on GPU 1: GPU 0 holds 3 tokens of
    expert 0 and 2 of expert 1, so it sends 1 to itself and 2 + 2 = 4 to GPU 1."""
    share = np.array([[[1 / 3, 2 / 3], [0.0, 1.0]]])
    src = np.array([[3, 2], [0, 0]])
    for compiled in (False, True):
        m = gpu_traffic(_plan(1, 2, 2, share), src, share, compiled=compiled)
        assert m[0, 0].tolist() == [1.0, 4.0] and m[0, 1].tolist() == [0.0, 0.0]


def test_reference_when_numba_missing(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_compiled(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "sim.world" and fromlist and "compiled" in fromlist:
            raise ImportError("no numba")
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_compiled)
    assert token_split.compiled_kernels(64) is None


@pytest.mark.parametrize("seed", range(6))
def test_moe_s_sparse_equals_dense(seed, monkeypatch):
    """moe_s over a large replica's (L, E, G) split, mostly idle, with its group as a broadcast
    view: summing only the active instances gives the floats of summing all of them."""
    from sim.cost import AnalyticCost, analytic
    from sim.world.config import HardwareConfig, ModelConfig

    rng = np.random.default_rng(500 + seed)
    L, E, G = 3, 64, 32
    tok = rng.integers(1, 300, size=(L, E, G)) * (rng.random((L, E, G)) < 0.05)
    group = np.broadcast_to(np.arange(L)[:, None, None] * G + np.arange(G)[None, None, :],
                            tok.shape)
    cost = AnalyticCost(ModelConfig(name="mixtral-8x7b"), HardwareConfig(name="h100-sxm"))
    assert tok.size >= analytic._SPARSE_MOE
    sparse = cost.moe_s(tok.ravel(), group.ravel(), L * G)
    flat = cost.moe_s(tok.ravel(), np.ascontiguousarray(group).ravel(), L * G)
    monkeypatch.setattr(analytic, "_SPARSE_MOE", 10**9)
    dense = cost.moe_s(tok.ravel(), group.ravel(), L * G)
    assert sparse.tobytes() == dense.tobytes() == flat.tobytes()
    assert (dense > 0).sum() == (np.bincount(group.ravel(), weights=tok.ravel()) > 0).sum()


def test_a_chain_that_differs_from_blas_is_not_used(monkeypatch):
    """Where the probe finds the chain's bytes differ from this machine's BLAS, the BLAS product
    runs (a compiled chain that sums in another order)."""
    from sim.world import compiled, traffic

    L, E, G = 1, 8, COMPILED_MIN_GPUS  # a replica that takes the compiled kernels
    monkeypatch.setattr(traffic, "_CHAIN_OK", {})
    monkeypatch.setattr(compiled, "traffic_share", lambda src, sh: np.zeros((L, G, G)) + 1e-9)
    assert not traffic.chain_matches_blas(compiled, L, E, G)
    assert traffic._CHAIN_OK == {(L, E, G): False}  # decided once per shape
    share = np.full((L, E, G), 1.0 / G)
    src = np.ones((G, L * E), dtype=np.int64)
    got = gpu_traffic(_plan(L, E, G, share), src, share, compiled=None)
    assert np.array_equal(got, traffic._blas_traffic(src, share, L, E, G))


def _pool_plan(rng, L, E, K, G, N, single):
    """A tiny replica's plan over a random pool of N tokens: single owners (the pool's repeated
    destinations as ClusterPlan.build finds them) or some experts replicated."""
    keys = np.stack([rng.permutation(E)[:K] for _ in range(N * L)]).reshape(N, L, K)
    keys = (keys + (np.arange(L) * E)[None, :, None]).reshape(N, L * K).astype(np.int16)
    owner = rng.integers(0, G, size=L * E)
    lg_index = (np.arange(L * E) // E) * G + owner
    share = np.zeros((L, E, G))
    share.reshape(L * E, G)[np.arange(L * E), owner] = 1.0
    if not single:
        share = _hold(rng, L, E, G, 0.3).astype(np.float64)
        share /= share.sum(axis=2, keepdims=True)
    return SimpleNamespace(L=L, E=E, K=K, share=share, topo=SimpleNamespace(expert_parallel=G),
                           single_owner=single, lg_index=lg_index, tensor_parallel=1,
                           moe_tp=False, pool_keys=keys,
                           pool_dups=duplicate_destinations(keys, lg_index, L, K, G) if single
                           else None)


def _same(a, b):
    """The same arrays (dtype, shape, values) or both None."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("seed", range(40))
def test_count_tokens_rows_equal_reference(seed, monkeypatch):
    """count_tokens of the pool's rows (one compiled pass, the pool's repeats) gives the arrays
    of count_tokens of the gathered keys through the numpy references, on both sides of the
    token-by-token switch (T * K < G * E), with and without repeats in the pool and the batch."""
    from sim.world import traffic

    rng = np.random.default_rng(700 + seed)
    G = int(rng.choice([COMPILED_MIN_GPUS, 2 * COMPILED_MIN_GPUS]))
    L, E = int(rng.integers(1, 4)), int(rng.choice([G, 2 * G, 4 * G]))
    K = int(rng.choice([1, 2, 4, 6]))
    single = bool(rng.random() < 0.75)
    N = int(rng.integers(20, 400))
    plan = _pool_plan(rng, L, E, K, G, N, single)
    if single and rng.random() < 0.2:
        plan.pool_dups = None  # the pool has no repeats
    T = int(rng.choice([1, 3, G * E // K - 1, G * E // K, 300]))
    # runs of consecutive rows (prefill chunks, some over whole blocks of 64 rows) and single rows
    parts = []
    while sum(map(len, parts)) < T:
        a = int(rng.integers(0, N))
        parts.append(np.arange(a, min(N, a + int(rng.choice([1, 1, 5, 70, 200])))))
    rows = np.concatenate(parts)[:T]
    fast = traffic.count_tokens(plan, None, G, rows=rows)
    assert traffic.count_tokens(plan, None, G, rows=rows)[0].tolist() == fast[0].tolist()  # built
    fast_keys = traffic.count_tokens(plan, plan.pool_keys[rows], G, rows=rows)
    monkeypatch.setattr(traffic, "compiled_kernels", lambda G, compiled=None: None)
    ref = traffic.count_tokens(plan, plan.pool_keys[rows], G)
    ref_rows = traffic.count_tokens(plan, None, G, rows=rows)
    for got in (fast, fast_keys, ref_rows):
        if got is not ref_rows and not single:  # the split's source counts: key-major int32 (the
            # traffic reads them key by key), the same integers
            assert _same(got[0], ref[0]) and got[1].dtype == np.int32
            assert got[1].T.flags.c_contiguous and got[1].shape == ref[1].shape
            assert np.array_equal(got[1], ref[1])
            continue
        assert _same(got[0], ref[0]) and _same(got[1], ref[1])
        if got[1] is not None:
            assert np.array_equal(np.ascontiguousarray(got[1]), np.ascontiguousarray(ref[1]))


def test_count_runs_hand_figure():
    """2 GPUs, 1 layer, top-3, the figure of test_count_dups_hand_figure as pool rows 0 and 1
    (taken in the order 1, 0: row 1's token on GPU 0): token A (row 1, GPU 0) goes to GPUs 0
    and 1 once each (its expert 3, on GPU 0 after expert 2, a repeat); token B (row 0, GPU 1)
    to GPU 1 (experts 0 and 1: once) and GPU 0."""
    from sim.world import compiled

    lg_index = np.array([1, 1, 0, 0])
    pool_keys = np.array([[0, 1, 2], [2, 0, 3]], dtype=np.int16)
    pool_dups = duplicate_destinations(pool_keys, lg_index, 1, 3, 2)
    assert pool_dups.tolist() == [[2, 1, 2], [2, 2, 0]]
    sends = np.empty_like(pool_keys)
    compiled.send_index(pool_keys, pool_dups, lg_index, 2, True, sends)
    assert sends.tolist() == [[1, 2, 0], [0, 1, 2]]  # 2: a repeat
    rows = np.array([1, 0])
    prefix = compiled.block_prefix(sends, 1, 3)  # blocks of one row
    assert prefix.tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    out, total = np.zeros((2, 3), dtype=np.int64), np.zeros(3, dtype=np.int64)
    compiled.count_runs(sends, prefix, 1, rows, 2, True, total, out)
    assert out.tolist() == [[1, 1, 1], [1, 1, 1]] and total.tolist() == [2, 2, 2]


def test_count_runs_blocks_equal_rows():
    """A batch of runs of consecutive pool rows (prefill chunks, cut at the GPUs' bounds) and
    single rows, counted through block prefix counts of 1, 4 and 64 rows: the counts of every
    row read one by one (count_sources of the gathered keys)."""
    from sim.world import compiled

    rng = np.random.default_rng(900)
    N, C, W, G = 1000, 6, 40, 16
    idx = rng.integers(0, W, size=(N, C)).astype(np.int16)
    rows = np.concatenate([np.arange(5, 300), [7, 7, 999], np.arange(640, 1000), [0],
                           np.arange(0, 130)]).astype(np.int64)
    want = source_counts(idx[rows], G, W)
    for B in (1, 4, 64):
        prefix = compiled.block_prefix(idx, B, W)
        assert prefix.shape == (N // B + 1, W) and prefix[-1].sum() == (N // B) * B * C
        out, total = np.zeros((G, W), dtype=np.int64), np.zeros(W, dtype=np.int64)
        compiled.count_runs(idx, prefix, B, rows, G, True, total, out)
        assert np.array_equal(out, want) and np.array_equal(total, want.sum(axis=0))
        one = np.zeros((1, W), dtype=np.int64)
        compiled.count_runs(idx, prefix, B, rows, G, False, np.zeros(0, dtype=np.int64), one)
        assert np.array_equal(one[0], want.sum(axis=0))


@pytest.mark.parametrize("seed", range(30))
def test_passes_over_holders_equal_reference(seed):
    """The compiled passes read each expert's holders only: from the same greedy start, the
    continuous passes give the reference's floats and the integer passes its integers, byte
    for byte (up to 64 GPUs, experts held by 1 to many GPUs)."""
    from sim.world import compiled

    rng = np.random.default_rng(1100 + seed)
    M, J, G = int(rng.integers(1, 30)), int(rng.integers(1, 8)), int(rng.choice([3, 16, 64]))
    hj = rng.random((M, J, G)) < float(rng.choice([0.03, 0.2, 0.5]))
    hj[np.arange(M)[:, None], np.arange(J)[None, :], rng.integers(0, G, size=(M, J))] = True
    nn = rng.integers(0, 300, size=(M, J))
    base = rng.integers(0, 500, size=(M, G))
    start = rng.integers(0, 10**6, size=M)
    tiepos = token_split._tie_rank(G, start)
    tie = np.argsort(tiepos, axis=-1)
    hl, nh = compiled.holders(hj)
    assert nh.tolist() == hj.sum(axis=2).tolist()
    zero = np.zeros((M, J, G), dtype=np.int64)
    ref = token_split._integer_passes(1, zero.copy(), base.copy(), hj, nn, tie, False)
    got = compiled.integer_passes(1, zero.copy(), base.copy(), hl, nh, nn, tiepos, False)
    assert np.array_equal(got, ref)
    load = (base + ref.sum(axis=1)).astype(np.float64)
    fr = token_split._refine(ref.astype(np.float64), load, hj, nn, 7)
    fc = compiled.refine(ref.astype(np.float64), load, hl, nh, nn, 7)
    assert fc.tobytes() == fr.tobytes()
    ar = token_split._round(fr, hj, nn, start)
    assert np.array_equal(compiled.round_alloc(fr, hl, nh, nn, tiepos), ar)
    ref2 = token_split._integer_passes(7, ar.copy(), base + ar.sum(axis=1), hj, nn, tie, True)
    got2 = compiled.integer_passes(7, ar.copy(), base + ar.sum(axis=1), hl, nh, nn, tiepos, True)
    assert np.array_equal(got2, ref2)


@pytest.mark.parametrize("seed", range(10))
def test_split_first_step_compiled_equals_reference(seed):
    """The single holders' tokens and their per-GPU sums (one pass), and the holders of each
    row's replicated experts read from the (L, E, G) holders without the (M, J, G) mask."""
    from sim.world import compiled

    rng = np.random.default_rng(1300 + seed)
    N, L, E, G = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(2, 30)), \
        int(rng.choice([3, 16, 64]))
    hold = _hold(rng, L, E, G, float(rng.choice([0.02, 0.1, 0.4])))
    c = _counts(rng, N, L, E).astype(np.int64)
    nrep = hold.sum(axis=-1)
    got_n, gpus, out, base = compiled.single_holders(c, hold)
    for l, e in np.ndindex(L, E):
        assert gpus[l, e, :nrep[l, e]].tolist() == np.flatnonzero(hold[l, e]).tolist()
    want = c[..., None] * (hold & (nrep == 1)[..., None])
    assert np.array_equal(got_n, nrep) and out.dtype == want.dtype and np.array_equal(out, want)
    assert np.array_equal(base, want.reshape(N * L, E, G).sum(axis=1))
    M, J = N * L, int(rng.integers(1, E + 1))
    layer = np.tile(np.arange(L), N)
    ee = np.stack([rng.permutation(E)[:J] for _ in range(M)])
    ok = rng.random((M, J)) < 0.8
    hl, nh = compiled.holders_of(gpus, got_n, layer, ee, ok, J)
    hl_ref, nh_ref = compiled.holders(hold[layer[:, None], ee] & ok[..., None])
    assert np.array_equal(nh, nh_ref) and np.array_equal(hl, hl_ref)
