"""Compiled (numba) forms of an iteration's work on the simulator's fast path: the LRU stamps
served an iteration at once (:func:`sim.serving.lru_arrays.serve_lru_iteration`), the layers'
timing from counted misses (:meth:`sim.serving.layer_timing.LayerTiming.time_counts`), the tokens
per source GPU and key from the pool's prefix counts (:func:`sim.serving.token_counts.source_counts`)
and the batch's sums (:func:`sim.serving.layer_costs.batch_shape`). Each gives its reference's
bytes (tests/sim/serving/test_compiled_walk.py: kernel against reference on random inputs, by
hand, and whole runs' metrics.json with and without them; ``benchmarks/sim_matrix.py
--compile-after 1``).

Imported lazily (:func:`sim.serving.walk.walk_kernels`): a run imports numba only once it has
walked :data:`sim.serving.walk.COMPILE_AFTER` iterations, or from the first iteration where a
replica has :data:`sim.world.token_split.COMPILED_MIN_GPUS` GPUs (numba is imported there
anyway). Short runs and start-up pay nothing; without numba the numpy references run.

- :func:`lru_serve`: LRU step by step (no stack-distance counting): per GPU the keys resident at
  the iteration's start in stamp order, then the iteration's keys as they are stamped, form a
  queue whose front is the least recent key; a step's misses evict from the front (an entry
  re-stamped since it was queued is skipped). The iteration's keys get the stamps
  ``clock, clock + 1, ...`` in serving order (GPU, then step, then key), as the reference gives
  them, and a step never evicts its own keys (it needs at most its GPU's slots: the caller
  checks), so the resident sets and misses are LRU's, the reference's.
- :func:`time_layers`: the per-layer recurrence with the same float operations on the same
  operands in the same order (no fast-math): ``((t + attn) + gate) + pf_cost``, a GPU's copy
  ending at ``start + m * eb / bw``, its experts ending at ``fin + comp``; the stalls added per
  GPU layer by layer (the reference adds ``0.0`` where a GPU did not wait: the same floats).
  Per GPU instead of per distinct copy size: ``max(fin + c_g) == fin + max(c_g)`` (float
  addition is monotonic), so the layer's end is the same float.
- :func:`prefix_sources`, :func:`batch_sums`: integer sums, exact in any order.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def lru_serve(S, nres, cap, pair_g, pair_layer, pair_fi, pair_key, used, c0, G, L, Q,
              Qn):  # pragma: no cover - compiled
    """serve_lru_iteration's decisions and state change: ``S`` (G, H) stamps and ``nres`` (G,)
    updated in place; returns the misses (L, G), and per GPU the accesses, the misses on keys
    resident at the iteration's start, the misses and the evictions (4, G).

    ``Q`` (G, H), ``Qn`` (G,): each GPU's resident keys (flat stamp indices) in stamp order as
    this kernel left them, reused when they still are the row's residents in increasing stamp
    order (checked in one pass; a mode switch or the numpy path may have changed the row), else
    the residents are sorted by stamp."""
    H = S.shape[1]
    Sf = S.reshape(-1)
    miss = np.zeros((L, G), dtype=np.int64)
    figs = np.zeros((4, G), dtype=np.int64)
    n_pairs = pair_g.shape[0]
    qkey = np.empty(2 * H + 1, dtype=np.int64)  # a GPU's queue: flat stamp index, stamp queued
    qst = np.empty(2 * H + 1, dtype=np.int64)
    held = np.zeros(H, dtype=np.bool_)  # a GPU's keys resident at the iteration's start
    clock = c0
    i = 0
    while i < n_pairs:
        g = pair_g[i]
        j = i
        while j < n_pairs and pair_g[j] == g:
            j += 1
        # the GPU's residents at the start, least recent first
        base = g * H
        nq = 0
        for h in range(H):
            held[h] = S[g, h] >= 0
            if held[h]:
                nq += 1
        kept = Qn[g] == nq
        prev = -1
        for q in range(Qn[g] if kept else 0):
            fi = Q[g, q]
            st = Sf[fi] if base <= fi < base + H else -1
            if st <= prev:  # not resident (-1), or out of stamp order
                kept = False
                break
            prev = st
            qkey[q] = fi
            qst[q] = st
        if not kept:
            nq = 0
            for h in range(H):
                if held[h]:
                    qkey[nq] = base + h
                    qst[nq] = S[g, h]
                    nq += 1
            order = np.argsort(qst[:nq])
            tk = qkey[:nq][order]
            ts = qst[:nq][order]
            qkey[:nq] = tk
            qst[:nq] = ts
        head = 0
        res = nres[g]
        k = i
        while k < j:  # a step: the GPU's selected holdings of one layer
            layer = pair_layer[k]
            e = k
            while e < j and pair_layer[e] == layer:
                e += 1
            m = 0
            for p in range(k, e):
                if used[pair_key[p]]:
                    fi = pair_fi[p]
                    figs[0, g] += 1
                    if Sf[fi] < 0:
                        m += 1
                        if held[fi - base]:  # evicted earlier in the iteration
                            figs[1, g] += 1
            for p in range(k, e):
                if used[pair_key[p]]:
                    fi = pair_fi[p]
                    Sf[fi] = clock
                    qkey[nq] = fi
                    qst[nq] = clock
                    nq += 1
                    clock += 1
            miss[layer, g] += m
            figs[2, g] += m
            res += m
            while res > cap[g]:  # the least recent outside the step (it needs <= cap keys)
                fi = qkey[head]
                st = qst[head]
                head += 1
                if Sf[fi] == st:
                    Sf[fi] = -1
                    res -= 1
                    figs[3, g] += 1
            k = e
        nres[g] = res
        n = 0
        for q in range(head, nq):  # the residents now, in stamp order, for the next iteration
            if Sf[qkey[q]] == qst[q]:
                Q[g, n] = qkey[q]
                n += 1
        Qn[g] = n
        i = j
    return miss, figs


@njit(cache=True)
def time_layers(miss, comp, a2a, t, attn, gate, pf_cost, lat, eb, bw, stall, fin_lg, starts,
                last):  # pragma: no cover - compiled
    """time_counts' recurrence: returns when the next layer starts; fills ``fin_lg`` (L, G) each
    copy's end (where ``miss > 0``), ``starts`` (L,) the layers' copy start, ``last`` (G,) each
    GPU's last layer with a copy (-1: none), and adds the stalls to ``stall``. A copy of ``m``
    experts lasts ``m * eb / bw`` (Link.fetch's ``nbytes / bw``, the same operations)."""
    L, G = miss.shape
    for g in range(G):
        last[g] = -1
    for l in range(L):
        t_gate = t + attn + gate + pf_cost
        ready = t_gate + a2a[l]
        mx = comp[l, 0]
        for g in range(1, G):
            if comp[l, g] > mx:
                mx = comp[l, g]
        end = ready + mx
        if end < ready:
            end = ready
        start = t_gate + lat
        starts[l] = start
        for g in range(G):
            m = miss[l, g]
            if m > 0:
                fin = start + m * eb / bw
                fin_lg[l, g] = fin
                last[g] = l
                if fin > ready:
                    stall[g] = stall[g] + (fin - ready)
                    e_end = fin + comp[l, g]
                    if e_end > end:
                        end = e_end
        t = end + a2a[l]
    return t


@njit(cache=True)
def prefix_sources(pool_keys, C, off, ln, s0, alloc, G):  # pragma: no cover - compiled
    """token_counts.source_counts: (G, C.shape[1]) int64 tokens per source GPU and key of a batch
    (requests' pool entries at ``off`` of ``ln`` rows, first row ``s0``, ``alloc`` tokens each)."""
    LE = C.shape[1]
    W = pool_keys.shape[1]
    B = off.shape[0]
    T = 0
    for b in range(B):
        T += alloc[b]
    per = np.zeros((G, LE), dtype=np.int64)
    first = 0
    for b in range(B):
        a = alloc[b]
        o = off[b]
        if a == 1:
            g = (first * G) // T
            row = o + s0[b]
            for c in range(W):
                per[g, pool_keys[row, c]] += 1
        else:
            n = ln[b]
            x = s0[b]
            lo = first
            g = (first * G) // T
            while lo < first + a:
                hi = min(first + a, ((g + 1) * T + G - 1) // G)
                if hi > lo:  # rows x + (lo - first) .. x + (hi - first) - 1 of the entry
                    u = x + lo - first
                    v = x + hi - first
                    r0 = o + u % n
                    r1 = o + v % n
                    laps = v // n - u // n
                    for c in range(LE):
                        per[g, c] += np.int64(C[r1, c]) - np.int64(C[r0, c])
                    if laps:
                        for c in range(LE):
                            per[g, c] += laps * (np.int64(C[o + n, c]) - np.int64(C[o, c]))
                    lo = hi
                g += 1
        first += a
    return per



@njit(cache=True)
def batch_sums(start, alloc, tile):  # pragma: no cover - compiled
    """layer_costs.batch_shape's sums of a batch (requests from positions ``start``, ``alloc``
    tokens each): tokens, causal (query, key) pairs, KV tokens read with query tiles of ``tile``
    (analytic.kv_read_tokens) and decode tokens. Integers: exact in any order."""
    total = 0
    pairs = 0
    kv = 0
    decode = 0
    for b in range(alloc.shape[0]):
        a = np.int64(alloc[b])
        s = np.int64(start[b])
        total += a
        pairs += a * s + a * (a + 1) // 2
        tiles = -(-a // tile)
        full = max(tiles - 1, 0)
        kv += tiles * s + tile * full * (full + 1) // 2 + (a if tiles > 0 else 0)
        if a == 1:
            decode += 1
    return total, pairs, kv, decode


@njit(cache=True)
def moe_owned(tokens, group, groups, block, flops_tok, w_bytes, act_bytes, flops_s, hbm_s,
              launch_s):  # pragma: no cover - compiled
    """AnalyticCost.moe_s of single-owner experts (``tokens`` (N,) of each expert, ``group`` (N,)
    its (layer, GPU) index): per group the fused MoE's time, and its tokens (the layer walk's
    load). bincount's sums in index order, then the same element-wise operations."""
    flops = np.zeros(groups)
    tok = np.zeros(groups)
    act = np.zeros(groups)
    for i in range(tokens.shape[0]):
        t = np.float64(tokens[i])
        g = group[i]
        flops[g] += np.ceil(t / block) * block
        tok[g] += t
        act[g] += 1.0 if t > 0 else 0.0
    out = np.zeros(groups)
    for g in range(groups):
        if tok[g] > 0:
            f = flops[g] * flops_tok
            nb = act[g] * w_bytes + tok[g] * act_bytes
            out[g] = launch_s + max(f / flops_s, nb / hbm_s)
    return out, tok


@njit(cache=True)
def a2a_owned(src_counts, moves, idx, L, G, scale, lat):  # pragma: no cover - compiled
    """network._ReplicaNet.fast_times: per layer ``lat + max(tokens a GPU sends, tokens a GPU
    receives) * scale`` (one node, single owners; ``moves`` (G, L*E) 1 where a source GPU's
    tokens of a key leave it, ``idx`` (L*E,) each key's (layer, owner) index). Token counts are
    integers: the sums are exact; then the same two float operations."""
    LE = src_counts.shape[1]
    E = LE // L
    sent = np.zeros((G, L), dtype=np.int64)
    recv = np.zeros(L * G, dtype=np.int64)
    for g in range(G):
        for c in range(LE):
            m = src_counts[g, c] * moves[g, c]
            if m:
                sent[g, c // E] += m
                recv[idx[c]] += m
    out = np.empty(L)
    for l in range(L):
        top = 0
        for g in range(G):
            if sent[g, l] > top:
                top = sent[g, l]
            if recv[l * G + g] > top:
                top = recv[l * G + g]
        out[l] = np.float64(top) * scale + lat
    return out
