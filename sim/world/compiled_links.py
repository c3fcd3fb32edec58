"""Compiled (numba) kernels of the network's per-link loads (:meth:`sim.world.network._ReplicaNet.times`)
and of the all-to-all of a per-batch split straight to them (:func:`split_links`: the traffic
product of :func:`sim.world.compiled.traffic_share` a layer at a time, each layer's loads summed
while its traffic is in cache, no (L, G, G) array). Each gives the same floats as its reference
(tests/sim/world/test_compiled_links.py). Imported lazily, from
:data:`sim.world.token_split.COMPILED_MIN_GPUS` GPUs a replica, like :mod:`sim.world.compiled`
(which re-exports this module as ``links``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sim.world.compiled_counts import prefer_workqueue

prefer_workqueue()  # (split_links' layers side by side)

#: split_links' layers per parallel task (one set of scratch arrays each)
LAYER_CHUNK = 8


@njit(cache=True)
def _block(a, idx, s0, m):  # pragma: no cover - compiled
    """numpy's pairwise sum of ``a[idx[s0:s0 + m]]`` for m <= 128 (one block). The flows
    ``idx`` (nonnegative) read as unsigned: no test for a negative index (a third faster), the
    same terms."""
    if m < 8:
        res = 0.0
        for i in range(m):
            res += a[np.uint64(idx[s0 + i])]
        return res
    r0, r1 = a[np.uint64(idx[s0])], a[np.uint64(idx[s0 + 1])]
    r2, r3 = a[np.uint64(idx[s0 + 2])], a[np.uint64(idx[s0 + 3])]
    r4, r5 = a[np.uint64(idx[s0 + 4])], a[np.uint64(idx[s0 + 5])]
    r6, r7 = a[np.uint64(idx[s0 + 6])], a[np.uint64(idx[s0 + 7])]
    i = s0 + 8
    end = s0 + m - (m % 8)
    while i < end:
        r0 += a[np.uint64(idx[i])]
        r1 += a[np.uint64(idx[i + 1])]
        r2 += a[np.uint64(idx[i + 2])]
        r3 += a[np.uint64(idx[i + 3])]
        r4 += a[np.uint64(idx[i + 4])]
        r5 += a[np.uint64(idx[i + 5])]
        r6 += a[np.uint64(idx[i + 6])]
        r7 += a[np.uint64(idx[i + 7])]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < s0 + m:
        res += a[np.uint64(idx[i])]
        i += 1
    return res


@njit(cache=True)
def _pairwise(a, idx, lo, n, stk, vals):  # pragma: no cover - compiled
    """numpy's pairwise sum of ``a[idx[lo:lo + n]]`` (float64; numpy/_core/src/umath/
    loops_utils.h: below 8 terms one by one from 0.0, up to 128 eight running sums combined as
    ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) then the rest one by one, above 128 the
    two halves, cut at a multiple of 8, added). An explicit stack (``stk`` (192, 3) int64,
    ``vals`` (64,) scratch: 2 rows and 1 value per halving), not recursion."""
    if n <= 128:
        return _block(a, idx, lo, n)
    top = 1
    stk[0, 0], stk[0, 1], stk[0, 2] = lo, n, 0
    nv = 0
    while top > 0:
        top -= 1
        s0, m, op = stk[top, 0], stk[top, 1], stk[top, 2]
        if op == 1:  # both halves done: their sum
            nv -= 1
            vals[nv - 1] = vals[nv - 1] + vals[nv]
        elif m <= 128:
            vals[nv] = _block(a, idx, s0, m)
            nv += 1
        else:  # the first half first, then the second, then their sum
            n2 = m // 2
            n2 -= n2 % 8
            stk[top, 0], stk[top, 1], stk[top, 2] = 0, 0, 1
            stk[top + 1, 0], stk[top + 1, 1], stk[top + 1, 2] = s0 + n2, m - n2, 0
            stk[top + 2, 0], stk[top + 2, 1], stk[top + 2, 2] = s0, n2, 0
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
    flat = traffic.reshape(L, traffic.shape[1] * traffic.shape[2])
    C = starts.shape[0]
    R = rows.shape[0]
    stk = np.empty((192, 3), dtype=np.int64)
    vals = np.empty(64)
    for l in range(L):
        fl = flat[l]
        for c in range(C):
            s = starts[c]
            e = starts[c + 1] if c + 1 < C else R
            v = np.float64(fl[rows[s]])
            if e - s > 129:
                v = v + _pairwise(fl, rows, s + 1, e - s - 1, stk, vals)
            elif e - s > 1:  # (one block: _pairwise's first case, called directly)
                v = v + _block(fl, rows, s + 1, e - s - 1)
            out[l, c] = v
    return out


@njit(cache=True, fastmath={"contract"})
def _chain_layer(km, share_p, pair_key, pair_gpu, p, base, E, tmp, acc):  # pragma: no cover
    """compiled._chain's layer at keys ``base .. base + E - 1`` into ``acc`` (G, G) [h, g], from
    key-major counts ``km`` (L*E, G) and the share per holder pair ``share_p`` (P,) (pairs
    key-sorted from pair ``p``, GPUs ascending within a key): per expert ascending, its counts
    as floats, then each nonzero share (h, w) adds ``count * w`` to the chains (h, ·) as one
    vector of fused multiply-adds, the chain's own operations on the same operands in the same
    order (a zero share or an expert without one adds nothing: skipped). Returns the next pair."""
    G = acc.shape[1]
    P = pair_key.shape[0]
    acc[:, :] = 0.0
    for key in range(base, base + E):
        q = p
        while q < P and pair_key[q] == key:
            q += 1
        conv = False
        for i in range(p, q):
            w = share_p[i]
            if w != 0.0:
                if not conv:  # the expert's counts as floats, once
                    row = km[key]
                    for g in range(G):
                        tmp[g] = np.float64(row[g])
                    conv = True
                a = acc[pair_gpu[i]]
                for g in range(G):
                    a[g] = tmp[g] * w + a[g]
        p = q
    return p


@njit(cache=True)
def split_links(km, share_p, pair_key, pair_gpu, E, rows_t, starts, out, parallel=False
                ):  # pragma: no cover - compiled
    """:func:`link_loads` of ``traffic_share(km.T, share_p, pair_key, pair_gpu, L)`` into ``out``
    (L, C) without the (L, G, G) traffic: per layer its (G, G) chains (:func:`_chain_layer`,
    the product's floats), then each link's flows summed as link_loads sums them.
    ``rows_t``: the links' flows ``g * G + h`` as ``h * G + g`` (the chains' [h, g] order;
    the same flows in the same order, so the same sums). Each layer's chains start from its
    first pair, found first as the layer-by-layer walk of the pairs reaches it; ``parallel``:
    the layers side by side (compiled_counts.PARALLEL_LAYERS; each layer's floats its own: the
    same on any number of threads)."""
    L = km.shape[0] // E
    P = pair_key.shape[0]
    first = np.empty(L, dtype=np.int64)  # each layer's first pair (keys base .. base + E - 1)
    p = 0
    for l in range(L):
        first[l] = p
        for key in range(l * E, l * E + E):  # (_chain_layer's walk over the layer's keys)
            while p < P and pair_key[p] == key:
                p += 1
    if parallel:
        _split_parallel(km, share_p, pair_key, pair_gpu, first, E, rows_t, starts, out)
    else:
        _split_layers(km, share_p, pair_key, pair_gpu, first, 0, L, E, rows_t, starts, out)
    return out


@njit(cache=True, parallel=True)
def _split_parallel(km, share_p, pair_key, pair_gpu, first, E, rows_t, starts, out
                    ):  # pragma: no cover - compiled
    """split_links' layers side by side, in chunks of :data:`LAYER_CHUNK` (:func:`_split_layers`
    each: its layers' own chains and rows of ``out``)."""
    L = km.shape[0] // E
    for c in prange((L + LAYER_CHUNK - 1) // LAYER_CHUNK):
        _split_layers(km, share_p, pair_key, pair_gpu, first, c * LAYER_CHUNK,
                      min(L, (c + 1) * LAYER_CHUNK), E, rows_t, starts, out)


@njit(cache=True)
def _split_layers(km, share_p, pair_key, pair_gpu, first, l0, l1, E, rows_t, starts, out
                  ):  # pragma: no cover - compiled
    """split_links' layers ``l0 .. l1 - 1`` (layer l from its first pair ``first[l]``): their
    chains, then their rows of ``out`` (one set of scratch arrays for them all)."""
    G = km.shape[1]
    C = starts.shape[0]
    R = rows_t.shape[0]
    tmp = np.empty(G)
    acc = np.empty((G, G))
    fl = acc.reshape(G * G)
    stk = np.empty((192, 3), dtype=np.int64)
    vals = np.empty(64)
    for l in range(l0, l1):
        _chain_layer(km, share_p, pair_key, pair_gpu, first[l], l * E, E, tmp, acc)
        for q in range(C):
            s = starts[q]
            e = starts[q + 1] if q + 1 < C else R
            v = np.float64(fl[np.uint64(rows_t[s])])
            if e - s > 129:
                v = v + _pairwise(fl, rows_t, s + 1, e - s - 1, stk, vals)
            elif e - s > 1:
                v = v + _block(fl, rows_t, s + 1, e - s - 1)
            out[l, q] = v


@njit(cache=True)
def link_times(load, lat, scale, unshared, base):  # pragma: no cover - compiled
    """(L,) per layer the slowest unshared link's time ``lat + load * scale`` (0 where it
    carries nothing) and ``base``: ``np.where(load > 0, lat + load * scale, 0.0)[:, unshared]
    .max(axis=1, initial=base)``, the same products and sums (no fused multiply-add), and
    their maximum (exact in any order)."""
    L, C = load.shape
    best = np.empty(L)
    for l in range(L):
        b = base
        for c in range(C):
            if unshared[c]:
                x = load[l, c]
                t = lat[c] + x * scale[c]
                if not x > 0:
                    t = 0.0
                if t > b:
                    b = t
        best[l] = b
    return best
