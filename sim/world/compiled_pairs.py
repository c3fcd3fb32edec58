"""Compiled (numba) kernels of the per-batch token split kept over the plan's holder pairs
(:mod:`sim.world.pair_split`) instead of a dense (L, E, G) array, and of the network's per-link
loads (:meth:`sim.world.network._ReplicaNet.times`). A large replica's split is nonzero on its
P holder pairs only (DeepSeek-V3 at EP 64 with 64 redundant experts: 18,560 of 950,272 entries),
so these read and write P entries where the dense forms swept all of them. Each gives the same
integers and floats as its reference (tests/sim/world/test_compiled_pairs.py). Imported lazily,
from :data:`sim.world.token_split.COMPILED_MIN_GPUS` GPUs a replica, like :mod:`sim.world.compiled`.

Pair order: the plan's pairs are ``np.argwhere(share > 0)`` over (key, GPU), key-sorted and GPUs
ascending within a key, that is the dense (L, E, G) array's flat order: a sum over pairs in pair
order adds the dense array's nonzeros in its index order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def single_pairs(c, nrep, ptr, pair_gpu, E, G):  # pragma: no cover - compiled
    """The tokens of the experts one GPU holds, per pair (P,) int64 (``c`` (L*E,) tokens per key,
    ``nrep`` (L*E,) each key's holders, ``ptr`` (L*E + 1,) each key's first pair), and their sum
    per (layer, GPU) (L, G) int64: token_split.split_tokens' step 1 (integers)."""
    LE = c.shape[0]
    tok = np.zeros(pair_gpu.shape[0], dtype=np.int64)
    base = np.zeros((LE // E, G), dtype=np.int64)
    for k in range(LE):
        if nrep[k] == 1:
            p = ptr[k]
            v = c[k]
            tok[p] = v
            base[k // E, pair_gpu[p]] += v
    return tok, base


@njit(cache=True)
def scatter_pairs(tok, alloc, ee, ok, ptr, gpus, nrep, E):  # pragma: no cover - compiled
    """Writes the replicated experts' split into ``tok`` (P,): row m (layer m) and column j
    (where ``ok``) hold expert ``ee[m, j]``'s tokens per GPU ``alloc[m, j]`` (G,); its i-th pair
    is its i-th holder ``gpus[m, e, i]`` (both ascending by GPU). split_tokens' last scatter."""
    M, J = ee.shape
    for m in range(M):
        for j in range(J):
            if ok[m, j]:
                e = ee[m, j]
                p = ptr[m * E + e]
                for i in range(nrep[m, e]):
                    tok[p + i] = alloc[m, j, gpus[m, e, i]]


@njit(cache=True)
def csr_vec(share_p, pair_key, pair_gpu, LE):  # pragma: no cover - compiled
    """compiled._csr_pairs of a share given per pair ``share_p`` (P,): per key its nonzero
    pairs as CSR (``ptr`` (LE + 1,), their GPUs ``hs``, weights ``ws``), the same arrays."""
    P = pair_key.shape[0]
    ptr = np.zeros(LE + 1, dtype=np.int64)
    hs = np.empty(P, dtype=np.int64)
    ws = np.empty(P)
    n = 0
    p = 0
    for col in range(LE):
        while p < P and pair_key[p] == col:
            w = share_p[p]
            if w != 0.0:
                hs[n] = pair_gpu[p]
                ws[n] = w
                n += 1
            p += 1
        ptr[col + 1] = n
    return ptr, hs, ws


@njit(cache=True)
def _pairwise(a, lo, n):  # pragma: no cover - compiled
    """numpy's pairwise sum of ``a[lo:lo + n]`` (float64; numpy/_core/src/umath/loops_utils.h:
    below 8 terms one by one from 0.0, up to 128 eight running sums combined as
    ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) then the rest one by one, above 128 the
    two halves, cut at a multiple of 8). An explicit stack, not recursion."""
    stk_lo = np.empty(64, dtype=np.int64)
    stk_n = np.empty(64, dtype=np.int64)
    stk_op = np.empty(64, dtype=np.int64)  # 0: sum a block, 1: add the two results on top
    vals = np.empty(64)
    nv = 0
    top = 0
    stk_lo[0], stk_n[0], stk_op[0] = lo, n, 0
    top = 1
    r = np.empty(8)
    while top > 0:
        top -= 1
        s0, m, op = stk_lo[top], stk_n[top], stk_op[top]
        if op == 1:
            b = vals[nv - 1]
            a_ = vals[nv - 2]
            nv -= 2
            vals[nv] = a_ + b
            nv += 1
        elif m < 8:
            res = 0.0
            for i in range(m):
                res += a[s0 + i]
            vals[nv] = res
            nv += 1
        elif m <= 128:
            for j in range(8):
                r[j] = a[s0 + j]
            i = 8
            while i < m - (m % 8):
                for j in range(8):
                    r[j] += a[s0 + i + j]
                i += 8
            res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
            while i < m:
                res += a[s0 + i]
                i += 1
            vals[nv] = res
            nv += 1
        else:
            n2 = m // 2
            n2 -= n2 % 8
            # the combine runs after both halves: pushed first; the first half is summed first
            stk_lo[top], stk_n[top], stk_op[top] = 0, 0, 1
            stk_lo[top + 1], stk_n[top + 1], stk_op[top + 1] = s0 + n2, m - n2, 0
            stk_lo[top + 2], stk_n[top + 2], stk_op[top + 2] = s0, n2, 0
            top += 3
    return vals[0]


@njit(cache=True)
def link_loads(traffic, rows, starts, out):  # pragma: no cover - compiled
    """``np.add.reduceat(traffic.reshape(L, G*G)[:, rows], starts, axis=1)`` into ``out``
    (L, C) float64, without the gather: per layer and link the flows ``rows[starts[c]:
    starts[c+1]]`` (``starts`` ascending, the last link's to the end): the first term, then
    numpy's pairwise sum of the others added to it (a reduceat's segment as its inner loop
    forms it; a segment of one: that term)."""
    L = traffic.shape[0]
    GG = traffic.shape[1] * traffic.shape[2]
    flat = traffic.reshape(L, GG)
    C = starts.shape[0]
    R = rows.shape[0]
    buf = np.empty(R)
    for l in range(L):
        fl = flat[l]
        for i in range(R):
            buf[i] = fl[rows[i]]
        for c in range(C):
            s = starts[c]
            e = starts[c + 1] if c + 1 < C else R
            v = buf[s]
            if e - s > 1:
                v = v + _pairwise(buf, s + 1, e - s - 1)
            out[l, c] = v
    return out
