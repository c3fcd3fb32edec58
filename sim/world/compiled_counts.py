"""Compiled (numba) counting kernels of :func:`sim.world.traffic.count_tokens`: tokens per source
GPU and key, a token's repeated (layer, GPU)s, and the pool rows' counts by runs of consecutive
rows with block prefix counts. Integer counts: the same integers as the numpy references in any
order (tests/sim/world/test_compiled.py). Imported through :mod:`sim.world.compiled` (which
re-exports them), lazily, only from :data:`sim.world.token_split.COMPILED_MIN_GPUS` GPUs a replica.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange


def prefer_workqueue() -> None:
    """Runs the kernels' parallel loops (with :data:`PARALLEL_LAYERS`) on numba's own
    ``workqueue`` threads unless NUMBA_THREADING_LAYER names a layer: numba's default picks
    OpenMP where libgomp is installed, whose threads wait for each other by spinning, on a
    loaded machine some milliseconds per call (measured on 2 busy cores: count_layers 8 to 12
    ms against 1.2 to 2 ms)."""
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        numba.config.THREADING_LAYER = "workqueue"


#: count_layers and compiled_links.split_links with their layers side by side on numba's threads
#: (the same bytes on any number of threads: each layer's integers and floats are its own,
#: tests/sim/world/test_compiled_links.py): MOESIM_PARALLEL_LAYERS=1. Off by default: each call
#: hands its layers to the threads and waits for them (three launches an iteration), which pays
#: for large batches on idle cores only. On 2 cores shared with other work, bench_cluster_1024
#: to 800 requests (10,305 small iterations) took 49 and 56 s of loop wall, 53 and 50 CPU s, in
#: parallel against 33 and 54 s, 36 and 43 CPU s serially; its 60 s prefix reached 1.55 and 2.07
#: simulated s per wall s in parallel against 1.71 and 1.82 serially.
PARALLEL_LAYERS = os.environ.get("MOESIM_PARALLEL_LAYERS", "") == "1"

prefer_workqueue()


@njit(cache=True)
def count_sources(keys_tok, G, LE):  # pragma: no cover - compiled
    """traffic.source_counts: (G, L*E) int64 tokens per source GPU (token t on ``t * G // T``)
    and key, from ``keys_tok`` (T, L*K)."""
    T, C = keys_tok.shape
    out = np.zeros((G, LE), dtype=np.int64)
    for t in range(T):
        g = (t * G) // T
        for c in range(C):
            out[g, keys_tok[t, c]] += 1
    return out


@njit(cache=True)
def count_dups(keys_tok, lg_index, L, K, G):  # pragma: no cover - compiled
    """traffic.source_counts of traffic.duplicate_destinations: (G, L*G + 1) int64 per source
    GPU the tokens whose (layer, GPU) an earlier expert of theirs at the layer already goes to
    (the last column: the others), and whether there is any."""
    T = keys_tok.shape[0]
    out = np.zeros((G, L * G + 1), dtype=np.int64)
    dst = np.empty(K, dtype=np.int64)
    none = L * G
    any_dup = False
    for t in range(T):
        g = (t * G) // T
        row = out[g]
        for l in range(L):
            for k in range(K):
                d = np.int64(lg_index[keys_tok[t, l * K + k]])
                dst[k] = d
                dup = False
                for j in range(k):
                    if dst[j] == d:
                        dup = True
                        break
                if dup:
                    row[d] += 1
                    any_dup = True
                else:
                    row[none] += 1
    return any_dup, out



@njit(cache=True)
def block_prefix(idx, B, width):  # pragma: no cover - compiled
    """(N // B + 1, width) int32: row ``i`` counts each value of ``idx`` (N, C) over its rows
    ``0 .. i * B - 1`` (the prefix counts at every B-th row)."""
    N, C = idx.shape
    nb = N // B
    out = np.zeros((nb + 1, width), dtype=np.int32)
    for b in range(nb):
        out[b + 1] = out[b]
        for r in range(b * B, (b + 1) * B):
            for c in range(C):
                out[b + 1, idx[r, c]] += 1
    return out


@njit(cache=True)
def count_runs(idx, prefix, B, rows, G, per_gpu, total, out):  # pragma: no cover - compiled
    """Adds, for each token t of the batch (its pool row ``rows[t]``, its GPU ``t * G // T``),
    one to ``out[GPU, v]`` (``per_gpu``; else ``out[0, v]``) and to ``total[v]`` (if it has
    any element) for each value v of ``idx[rows[t]]``. A run of consecutive rows (on one GPU,
    where ``per_gpu``) takes its whole blocks of B rows from ``prefix`` (:func:`block_prefix` of ``idx``: the
    counts of rows ``lo * B .. hi * B - 1`` are ``prefix[hi] - prefix[lo]``) and counts the rest
    row by row: the same integers (counts are exact in any order)."""
    T = rows.shape[0]
    W = prefix.shape[1]
    tot = total.shape[0] > 0
    t = 0
    while t < T:
        g = (t * G) // T
        # GPU g's tokens: [ceil(g T / G), ceil((g+1) T / G)); one run across GPUs when not per GPU
        end = ((g + 1) * T + G - 1) // G if per_gpu else T
        a = rows[t]
        u = t + 1
        while u < end and rows[u] == a + (u - t):
            u += 1
        b = a + (u - t)  # rows a .. b - 1 of the pool
        o = g if per_gpu else 0
        lo = (a + B - 1) // B
        hi = b // B
        if hi > lo:  # whole blocks lo .. hi - 1, then the rows around them one by one
            for v in range(W):
                d = np.int64(prefix[hi, v]) - np.int64(prefix[lo, v])
                out[o, v] += d
                if tot:
                    total[v] += d
            r0, r1, r2, r3 = a, lo * B, hi * B, b
        else:
            r0, r1, r2, r3 = a, b, b, b
        _count_rows(idx, r0, r1, o, tot, total, out)
        _count_rows(idx, r2, r3, o, tot, total, out)
        t = u


@njit(cache=True)
def count_layers(idx, prefix, B, rows, G, E, out, total, parallel=False):  # pragma: no cover
    """count_runs per GPU, key-major and a layer at a time: ``out`` (L*E, G) int32 gets, for each
    token t (pool row ``rows[t]``, GPU ``t * G // T``) and each key v of ``idx[rows[t]]`` (a
    layer's K keys ``layer * E + expert`` side by side), one at ``out[v, GPU]``, and ``total``
    (L*E,) int64 each key's sum over the GPUs. The same runs (cut at the GPUs' bounds) and
    whole blocks of ``prefix``; the rows counted one by one have their keys copied layer by
    layer first (each pool row read once, in order, in chunks of :data:`COPY_CHUNK` rows; a key
    outside its layer's range is refused, ValueError, before any count), so that a layer's
    (E, G) rows of ``out`` (C-contiguous) stay in cache while its tokens are counted (integers:
    the same counts in any order). ``parallel``: the copy's chunks, then the layers, side by
    side (:data:`PARALLEL_LAYERS`; the same integers)."""
    T = rows.shape[0]
    L = out.shape[0] // E
    K = idx.shape[1] // L
    ra = np.empty(T, dtype=np.int64)  # the runs: first pool row, end, GPU, first whole block, end
    rb = np.empty(T, dtype=np.int64)
    rg = np.empty(T, dtype=np.int64)
    rlo = np.empty(T, dtype=np.int64)
    rhi = np.empty(T, dtype=np.int64)
    nr = 0
    S = 0  # rows counted one by one
    t = 0
    while t < T:
        g = (t * G) // T
        end = ((g + 1) * T + G - 1) // G
        a = rows[t]
        u = t + 1
        while u < end and rows[u] == a + (u - t):
            u += 1
        b = a + (u - t)
        lo, hi = (a + B - 1) // B, b // B
        if hi <= lo:
            lo = hi = b // B + 1  # (no whole block)
            S += b - a
        else:
            S += (lo * B - a) + (b - hi * B)
        ra[nr], rb[nr], rg[nr], rlo[nr], rhi[nr] = a, b, g, lo, hi
        nr += 1
        t = u
    sk = np.empty((L, S, K), dtype=idx.dtype)  # their keys, layer by layer
    sg = np.empty(S, dtype=np.int64)
    srow = np.empty(S, dtype=np.int64)
    s = 0
    for q in range(nr):
        a, b, lo, hi = ra[q], rb[q], rlo[q], rhi[q]
        for r in range(a, b):
            if lo < hi and lo * B <= r < hi * B:
                continue
            sg[s] = rg[q]
            srow[s] = r
            s += 1
    nc = (S + COPY_CHUNK - 1) // COPY_CHUNK
    bad = np.zeros(nc, dtype=np.bool_)
    if parallel:
        _copy_parallel(idx, srow, sk, E, bad)
    else:
        for c in range(nc):
            bad[c] = _copy_keys(idx, srow, sk, E, c * COPY_CHUNK, min(S, (c + 1) * COPY_CHUNK))
    if bad.any():
        raise ValueError("count_layers: a key outside its layer")
    if parallel:
        _layers_parallel(out, total, E, G, rg, rlo, rhi, nr, prefix, sk, sg)
    else:
        for l in range(L):
            _layer(l, out, total, E, G, rg, rlo, rhi, nr, prefix, sk[l], sg)


#: count_layers' rows counted one by one, per task of copying their keys layer by layer
COPY_CHUNK = 256


@njit(cache=True)
def _copy_keys(idx, srow, sk, E, s0, s1):  # pragma: no cover - compiled
    """count_layers' copy of the keys of pool rows ``srow[s0:s1]`` layer by layer into ``sk``
    (L, S, K); returns whether one is outside its layer's range ``layer * E .. + E - 1``."""
    L, _, K = sk.shape
    bad = False
    for s in range(s0, s1):
        r = srow[s]
        for l in range(L):
            for k in range(K):
                v = idx[r, l * K + k]
                sk[l, s, k] = v
                d = v - l * E
                bad |= (d < 0) | (d >= E)
    return bad


@njit(cache=True, parallel=True)
def _copy_parallel(idx, srow, sk, E, bad):  # pragma: no cover - compiled
    """count_layers' copy (:func:`_copy_keys`), chunks of :data:`COPY_CHUNK` rows side by side
    (each writes its own rows of ``sk`` and its own flag of ``bad``)."""
    S = srow.shape[0]
    for c in prange(bad.shape[0]):
        bad[c] = _copy_keys(idx, srow, sk, E, c * COPY_CHUNK, min(S, (c + 1) * COPY_CHUNK))


@njit(cache=True, parallel=True)
def _layers_parallel(out, total, E, G, rg, rlo, rhi, nr, prefix, sk, sg):  # pragma: no cover
    """count_layers' counting, the layers side by side (:func:`_layer` each: it writes its own
    rows of ``out`` and ``total`` only, integers: the same counts on any number of threads)."""
    for l in prange(out.shape[0] // E):
        _layer(l, out, total, E, G, rg, rlo, rhi, nr, prefix, sk[l], sg)


@njit(cache=True)
def _layer(l, out, total, E, G, rg, rlo, rhi, nr, prefix, skl, sg):  # pragma: no cover - compiled
    """count_layers' layer ``l``: its (E, G) rows of ``out`` from the runs' whole blocks of
    ``prefix`` and the rows counted one by one (their keys ``skl`` (S, K), GPUs ``sg``), and its
    E totals."""
    base = l * E
    slab = out[base:base + E]
    flat = out.reshape(out.shape[0] * G)
    K = skl.shape[1]
    slab[:, :] = 0
    for q in range(nr):
        if rlo[q] < rhi[q]:
            g = rg[q]
            p1, p0 = prefix[rhi[q]], prefix[rlo[q]]
            for e in range(E):
                slab[e, g] += p1[base + e] - p0[base + e]
    Gu = np.uint64(G)  # (unsigned indices: no test for a negative index, a third faster)
    for s in range(skl.shape[0]):  # (keys checked when copied: within the layer)
        g = np.uint64(sg[s])
        row = skl[s]
        for k in range(K):
            flat[np.uint64(row[k]) * Gu + g] += 1
    for e in range(E):
        n = np.int64(0)
        for g in range(G):
            n += slab[e, g]
        total[base + e] = n


@njit(cache=True)
def _count_rows(idx, r0, r1, o, tot, total, out):  # pragma: no cover - compiled
    """count_runs' rows ``r0 .. r1 - 1`` one by one: one to ``out[o, v]`` (and ``total[v]``
    with ``tot``) for each value v of ``idx[r]``."""
    for r in range(r0, r1):
        for c in range(idx.shape[1]):
            v = idx[r, c]
            out[o, v] += 1
            if tot:
                total[v] += 1


@njit(cache=True)
def send_index(pool_keys, pool_dups, lg_index, LG, dedup, out):  # pragma: no cover - compiled
    """Writes ``out`` (N, L*K): per pool token and (layer, k) the (layer, GPU) ``lg_index[key]``
    its k-th expert sends it to, or ``LG`` where an earlier expert of the layer already does
    (``pool_dups`` below ``LG``, with ``dedup``)."""
    N, C = pool_keys.shape
    for r in range(N):
        for c in range(C):
            v = lg_index[pool_keys[r, c]]
            if dedup and pool_dups[r, c] < LG:
                v = LG
            out[r, c] = v



@njit(cache=True)
def dup_index(keys, lg_index, L, K, G, out):  # pragma: no cover - compiled
    """traffic.duplicate_destinations into ``out`` (T, L*K): a token's k-th expert's
    ``lg_index`` where an earlier expert of the layer has the same, else ``L * G``; returns
    whether there is any."""
    T = keys.shape[0]
    LG = L * G
    any_dup = False
    for t in range(T):
        for l in range(L):
            for k in range(K):
                d = lg_index[keys[t, l * K + k]]
                v = LG
                for j in range(k):
                    if lg_index[keys[t, l * K + j]] == d:
                        v = d
                        any_dup = True
                        break
                out[t, l * K + k] = v
    return any_dup
