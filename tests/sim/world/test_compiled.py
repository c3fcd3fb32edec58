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
