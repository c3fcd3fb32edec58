"""Compiled (numba) forms of the per-iteration loops of large replicas: the per-batch token
split's passes (:mod:`sim.world.token_split`) and the all-to-all's traffic with a per-batch
share (:func:`sim.world.traffic.gpu_traffic`). Each gives the same bytes as its numpy reference
(tests/sim/world/test_compiled.py), and only replicas of
:data:`sim.world.token_split.COMPILED_MIN_GPUS` or more use them (the callers decide), so
that numba is imported (lazily, by the callers) only where it pays: small runs and start-up pay
nothing. Without numba installed, :func:`available` is False and the references run.

- :func:`integer_passes` and :func:`refine`: :func:`sim.world.token_split._integer_passes` and
  ``_refine`` row by row over each expert's holders (:func:`holders`), the same integer and
  float operations in the same order (no fast-math: ``k * srt - S`` must not become a fused
  multiply-add), by the kernels over holder slots of :mod:`sim.world.compiled_pairs` (one
  water-fill, not two). The stop rules are the references': over all rows at once (a pass
  stops once no row moved / moved by 1e-9).
- :func:`count_sources`, :func:`count_dups`, :func:`count_runs` and :func:`count_layers` (in
  :mod:`sim.world.compiled_counts`): the counts of :func:`sim.world.traffic.count_tokens`
  (tokens per source GPU and key, also key-major; a token's repeated (layer, GPU)s), one pass
  over the tokens instead of per-GPU bincounts and (T, L, K, K) masks.
- :func:`traffic_share`: ``per @ share`` per layer as OpenBLAS's double-precision kernel forms
  it (a K dimension of at most :data:`MAX_CHAIN`): each output a chain of fused multiply-adds
  over the experts in ascending order from 0. A zero term leaves a nonnegative chain as it is,
  so the chain skips the share's zeros and adds the counts' without a test, each share
  nonzero as one vector of fused multiply-adds over the source GPUs: the cost is the share's
  nonzeros x G, and no BLAS threads are started (on a loaded machine those cost more than
  the product).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sim.world import compiled_links as links  # kern.links: the network's link loads
from sim.world import compiled_pairs as pairs  # kern.pairs: the kernels over holder pairs

# the counting kernels live in their own module; callers reach them here (compiled_kernels())
from sim.world.compiled_counts import (
    PARALLEL_LAYERS,
    block_prefix,
    count_dups,
    count_layers,
    count_runs,
    count_sources,
    dup_index,
    send_index,
)

#: the longest experts axis whose BLAS product is one fused chain (OpenBLAS's dgemm K block)
MAX_CHAIN = 256


@njit(cache=True)
def holders(hj):  # pragma: no cover - compiled
    """(M, J, H) the GPUs of each row's replicated experts ``hj`` (M, J, G) in ascending order
    (padded with -1, H the most any has) and (M, J) how many."""
    M, J, G = hj.shape
    nh = np.zeros((M, J), dtype=np.int64)
    H = 1
    for m in range(M):
        for j in range(J):
            c = 0
            for g in range(G):
                if hj[m, j, g]:
                    c += 1
            nh[m, j] = c
            if c > H:
                H = c
    hl = np.full((M, J, H), -1, dtype=np.int64)
    for m in range(M):
        for j in range(J):
            c = 0
            for g in range(G):
                if hj[m, j, g]:
                    hl[m, j, c] = g
                    c += 1
    return hl, nh


@njit(cache=True)
def single_holders(c, hold):  # pragma: no cover - compiled
    """token_split.split_tokens' first step in one pass over ``hold`` (L, E, G) bool (``c``
    (N, L, E) int64): (L, E) each expert's holders, their GPUs (L, E, H) ascending (padded
    with -1, H the most any has), (N, L, E, G) int64 the tokens of the experts one GPU holds
    on that GPU (0 elsewhere), and (N * L, G) their sum per GPU; integers."""
    N, L, E = c.shape
    G = hold.shape[2]
    gpus, nrep = holders(hold)  # (the rows of holders() are the layers, its columns the experts)
    out = np.zeros((N, L, E, G), dtype=np.int64)
    base = np.zeros((N * L, G), dtype=np.int64)
    for n in range(N):
        for l in range(L):
            for e in range(E):
                if nrep[l, e] == 1:
                    g = gpus[l, e, 0]
                    v = c[n, l, e]
                    out[n, l, e, g] = v
                    base[n * L + l, g] += v
    return nrep, gpus, out, base


@njit(cache=True)
def holders_of(gpus, nrep, layer, ee, ok, J):  # pragma: no cover - compiled
    """:func:`holders` of ``hold[layer[:, None], ee] & ok[..., None]`` (M, J, G) without forming
    it, from each expert's GPUs ``gpus`` and their number ``nrep`` (:func:`single_holders`):
    per row m and replicated expert j, the GPUs holding expert ``ee[m, j]`` of layer
    ``layer[m]`` (none where ``ok`` is False)."""
    M = layer.shape[0]
    nh = np.zeros((M, J), dtype=np.int64)
    H = 1
    for m in range(M):
        for j in range(J):
            if ok[m, j]:
                k = nrep[layer[m], ee[m, j]]
                nh[m, j] = k
                if k > H:
                    H = k
    hl = np.full((M, J, H), -1, dtype=np.int64)
    for m in range(M):
        for j in range(J):
            if ok[m, j]:
                for i in range(nh[m, j]):
                    hl[m, j, i] = gpus[layer[m], ee[m, j], i]
    return hl, nh


def round_alloc(fa: np.ndarray, hl: np.ndarray, nh: np.ndarray, nn: np.ndarray,
                tiepos: np.ndarray) -> np.ndarray:
    """token_split._round over each expert's holders: floors ``floor(fa + 1e-9)``, and the
    leftover tokens one each to the holders of largest ``rint((fa - floor) * 1e6)``, ties in
    the tie order (``tiepos`` (M, G)); (M, J, G) int64. By
    :func:`sim.world.compiled_pairs.slot_round` on the holders' entries: the reference's key
    ``-q * G + tie place`` is distinct per GPU and puts every holder (q >= 0) before every other
    GPU (q = -1), and a GPU that does not hold the expert has 0.0 (floor 0: the floors' sum is
    the same exact integer), so it gets 0."""
    slots, where = _slots(fa, hl)
    out = np.zeros(fa.shape, dtype=np.int64)
    return _unslot(out, pairs.slot_round(slots, hl, nh, nn, tiepos), where)


def _slots(alloc: np.ndarray, hl: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(M, J, H) ``alloc`` (M, J, G) at each row's holders ``hl`` (0 at the padding), and where
    they sit in ``alloc`` (the index of :func:`_unslot`)."""
    m_i, j_i, i_i = np.nonzero(hl >= 0)
    at = (m_i, j_i, hl[m_i, j_i, i_i])
    slots = np.zeros(hl.shape, dtype=alloc.dtype)
    slots[m_i, j_i, i_i] = alloc[at]
    return slots, (at, (m_i, j_i, i_i))


def _unslot(alloc: np.ndarray, slots: np.ndarray, where: tuple) -> np.ndarray:
    """Writes the holders' ``slots`` back into ``alloc`` (in place) and returns it."""
    at, sl = where
    alloc[at] = slots[sl]
    return alloc


def integer_passes(count, alloc, load, hl, nh, nn, tiepos, skip_unmoved):
    """token_split._integer_passes, in place on ``alloc`` (M, J, G) int64, over each expert's
    holders only (``hl``, ``nh`` of :func:`holders`; ``tiepos`` (M, G) each GPU's place in the
    tie order; the water-fill of token_split._water_fill per row), by
    :func:`sim.world.compiled_pairs.slot_passes` on the holders' entries: a GPU that does not
    hold the expert gets 0 tokens of it and keeps its load in the reference, so skipping it
    changes nothing (integers)."""
    slots, where = _slots(alloc, hl)
    pairs.slot_passes(count, slots, load, hl, nh, nn, tiepos, skip_unmoved)
    return _unslot(alloc, slots, where)


def refine(alloc, load, hl, nh, nn, passes):
    """token_split._refine, in place on ``alloc`` (M, J, G) float64, over each expert's holders
    only (:func:`sim.world.compiled_pairs.slot_refine` on their entries): a GPU that does not
    hold the expert keeps 0.0 of it and its load (``load - 0.0 + 0.0``, loads nonnegative) in
    the reference, and adds 0 to the largest move; the holders' floats are the same operations
    in the same order."""
    slots, where = _slots(alloc, hl)
    pairs.slot_refine(slots, load, hl, nh, nn, passes)
    return _unslot(alloc, slots, where)


@njit(cache=True)
def _csr_dense(share, L, E, G):  # pragma: no cover - compiled
    """The share's nonzeros per (l, e) as CSR (ptr, GPUs ascending, weights), from all of it."""
    ptr = np.zeros(L * E + 1, dtype=np.int64)
    hs = np.empty(L * E * G, dtype=np.int64)
    ws = np.empty(L * E * G)
    n = 0
    for l in range(L):
        for e in range(E):
            for h in range(G):
                w = share[l, e, h]
                if w != 0.0:
                    hs[n] = h
                    ws[n] = w
                    n += 1
            ptr[l * E + e + 1] = n
    return ptr, hs, ws


@njit(cache=True)
def _csr_pairs(share, pair_key, pair_gpu, L, E):  # pragma: no cover - compiled
    """:func:`_csr_dense` reading only the (key, GPU) pairs that may be nonzero (key-sorted,
    GPUs ascending within a key: the plan's holders), the same CSR."""
    P = pair_key.shape[0]
    ptr = np.zeros(L * E + 1, dtype=np.int64)
    hs = np.empty(P, dtype=np.int64)
    ws = np.empty(P)
    n = 0
    p = 0
    for col in range(L * E):
        while p < P and pair_key[p] == col:
            h = pair_gpu[p]
            w = share[col // E, col % E, h]
            if w != 0.0:
                hs[n] = h
                ws[n] = w
                n += 1
            p += 1
        ptr[col + 1] = n
    return ptr, hs, ws


@njit(cache=True, fastmath={"contract"})
def _chain(sc, ptr, hs, ws, L, E, G, out):  # pragma: no cover - compiled
    """out[l, g, h]: the chain over e ascending of sc[g, l*E + e] * share[l, e, h] (the share
    as CSR), every entry written. Per layer, the experts with a nonzero share (the others add
    an exact 0 to every chain: skipped) have their source counts copied to (e, g) floats
    (8 GPUs at a time), then each share entry (e, h, w) adds ``count * w`` to
    every chain (·, h) at once, over the source GPUs (one vector of fused multiply-adds):
    each chain still takes its terms in ascending e. A zero count adds ``0 * w + x == x``
    (x >= 0), so the counts need no test."""
    tmp = np.empty((E, G))
    acc = np.empty((G, G))  # [h, g]
    act = np.empty(E, dtype=np.int64)
    for l in range(L):
        base = l * E
        o_l = out[l]
        if ptr[base + E] == ptr[base]:  # no share at this layer: no traffic
            o_l[:, :] = 0.0
            continue
        na = 0
        for e in range(E):
            if ptr[base + e + 1] > ptr[base + e]:
                act[na] = e
                na += 1
        for g0 in range(0, G, 8):  # 8 source GPUs at a time: one cache line of tmp per expert
            g1 = min(g0 + 8, G)
            for k in range(na):
                t = tmp[act[k]]
                for g in range(g0, g1):
                    t[g] = np.float64(sc[g, base + act[k]])
        acc[:, :] = 0.0
        for k in range(na):
            e = act[k]
            col = base + e
            t = tmp[e]
            for i in range(ptr[col], ptr[col + 1]):
                w = ws[i]
                a = acc[hs[i]]
                for g in range(G):
                    a[g] = t[g] * w + a[g]
        for g in range(G):
            o = o_l[g]
            for h in range(G):
                o[h] = acc[h, g]


def traffic_share(src_counts: np.ndarray, share: np.ndarray, pair_key: np.ndarray | None = None,
                  pair_gpu: np.ndarray | None = None, L: int | None = None) -> np.ndarray:
    """(L, G, G) ``per @ share`` of :func:`sim.world.traffic.gpu_traffic` (``src_counts``
    (G, L*E) nonnegative integers, ``share`` (L, E, G) nonnegative, E <= :data:`MAX_CHAIN`).
    ``pair_key``, ``pair_gpu``: the only (key, GPU)s where the share may be nonzero (the plan's
    holders, key-sorted): read instead of all of it, the same floats. ``share`` may also be
    given at those pairs only, (P,) (then ``L`` is needed): the same CSR, so the same floats."""
    src = np.ascontiguousarray(src_counts)
    if share.ndim == 1:
        if pair_key is None or L is None:
            raise ValueError("traffic_share: a share per pair needs pair_key, pair_gpu and L")
        G = src.shape[0]
        E = src.shape[1] // L
        ptr, hs, ws = pairs.csr_vec(np.ascontiguousarray(share, dtype=np.float64), pair_key, pair_gpu,
                              L * E)
    else:
        L, E, G = share.shape
        sh = np.ascontiguousarray(share, dtype=np.float64)
        if pair_key is None:
            ptr, hs, ws = _csr_dense(sh, L, E, G)
        else:
            ptr, hs, ws = _csr_pairs(sh, pair_key, pair_gpu, L, E)
    out = np.empty((L, G, G))
    _chain(src, ptr, hs, ws, L, E, G, out)
    return out


__all__ = ["MAX_CHAIN", "PARALLEL_LAYERS", "block_prefix", "count_dups", "count_layers", "count_runs",
           "count_sources",
           "dup_index", "holders", "holders_of", "integer_passes", "links", "pairs", "refine",
           "round_alloc", "send_index", "single_holders", "traffic_share"]
