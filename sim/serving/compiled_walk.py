"""Compiled (numba) forms of an iteration's work on the simulator's fast path, each giving its
reference's bytes (tests/sim/serving/test_compiled_walk.py and test_fused_walk.py: kernel against
reference on random inputs, by hand, and whole runs' metrics.json with and without them;
``benchmarks/sim_matrix.py --compile-after 1``):

- :func:`lru_serve` (:func:`sim.serving.lru_arrays.serve_lru_iteration`): LRU step by step. Per
  GPU the keys resident at the iteration's start in stamp order, then the iteration's keys as
  they are stamped, form a queue whose front is the least recent key; a step's misses evict
  from the front (an entry re-stamped since it was queued is skipped). The keys get the stamps
  ``clock, clock + 1, ...`` in serving order (GPU, step, key), as the reference gives them, and
  a step never evicts its own keys (it needs at most its GPU's slots: the caller checks).
- :func:`time_layers` (:meth:`sim.serving.layer_timing.LayerTiming.time_counts`): the per-layer
  recurrence with the same float operations in the same order (no fast-math), per GPU instead
  of per distinct copy size: ``max(fin + c_g) == fin + max(c_g)`` (float addition is monotonic).
- :func:`prefix_sources` (:func:`sim.serving.token_counts.source_counts`), :func:`moe_owned`,
  :func:`a2a_owned`: integer sums (exact in any order), then the reference's float operations.
- :func:`owned_lru_iteration`: the above chained for a whole iteration
  (:mod:`sim.serving.fused_walk`), with numpy's pairwise sum (:func:`pairwise_sum`) where the
  walk sums floats with numpy.

Every kernel a kernel calls lives in this file: numba's on-disk cache is invalidated by an edit
of the function's own file only. :func:`batch_sums` (no kernel calls it) is re-exported from
:mod:`sim.serving.compiled_batch`. Imported lazily (:func:`sim.serving.walk.walk_kernels`) once
a run has walked :data:`sim.serving.walk.COMPILE_AFTER` iterations, or from the first where a
replica has :data:`sim.world.token_split.COMPILED_MIN_GPUS` GPUs; without numba the numpy
references run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sim.serving.compiled_batch import batch_sums  # noqa: F401 (kern.batch_sums)
from sim.serving.compiled_steps import step_serve  # noqa: F401 (kern.step_serve)


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


#: ``fpar``'s entries (float64): the fused MoE model, the all-to-all's, the layer gaps, the link
F_BLOCK, F_FLOPS_TOK, F_W_BYTES, F_ACT_BYTES, F_FLOPS_S, F_HBM_S, F_LAUNCH_S, F_A2A_SCALE, \
    F_A2A_LAT, F_ATTN, F_GATE, F_PF, F_LAT, F_BW, F_T = range(15)
#: ``ipar``'s entries (int64): GPUs, layers, expert bytes, the stamp clock
I_G, I_L, I_EB, I_CLOCK = range(4)


@njit(cache=True)
def pairwise_sum(a, n):  # pragma: no cover - compiled
    """``a[:n].sum()`` for ``n <= 128`` as numpy sums a contiguous float64 array (its
    pairwise_sum's block): under 8 elements one by one from 0.0, else 8 running sums combined as
    ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then the rest one by one."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r = a[:8].copy()
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] += a[i + j]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[i]
        i += 1
    return res


@njit(cache=True)
def imbalance(load):  # pragma: no cover - compiled
    """LayerWalk.iteration's balance tally of loads (L, G): the sum over the layers with tokens of
    ``max_g load * G / sum_g load`` (numpy's operations; L <= 128: one block of its pairwise sum),
    and how many layers had tokens. Loads are token counts: their sums are exact in any order."""
    L, G = load.shape
    v = np.empty(L)
    n = 0
    for layer in range(L):
        s = 0.0
        mx = load[layer, 0]
        for g in range(G):
            s += load[layer, g]
            if load[layer, g] > mx:
                mx = load[layer, g]
        if s > 0:
            v[n] = mx * G / s
            n += 1
    return pairwise_sum(v, n), n


@njit(cache=True)
def owned_lru_iteration(pool_keys, C, req_off, req_len, req_ctx, batch, alloc, lg, moves, idx,
                        fpar, ipar, recorded, computed, gpu_tok, S, nres, cap, pairs, pair_key, Q,
                        Qn, why, tally, busy, stall):  # pragma: no cover - compiled
    """An iteration from its batch (requests ``batch``, ``alloc`` tokens each) to its end. In
    place: ``recorded``, ``computed`` (L*E,) += tokens per key; ``gpu_tok`` (G,) += expert tokens;
    the stamps (:func:`lru_serve`) and the store's ``why`` (set) and ``tally`` (added:
    RowStore.note); ``busy``, ``stall`` (G,) seconds. Returns the next layer's start, the
    balance tally (:func:`imbalance`), the accesses, per GPU (3, G) its last layer with a copy
    (-1: none), its misses and that copy's, each copy's end (L, G), the layers' copy starts
    (L,) and where GPUs copied (L, G)."""
    G = ipar[I_G]
    L = ipar[I_L]
    B = batch.shape[0]
    off = np.empty(B, dtype=np.int64)
    ln = np.empty(B, dtype=np.int64)
    s0 = np.empty(B, dtype=np.int64)
    for b in range(B):
        r = batch[b]
        off[b] = req_off[r]
        ln[b] = req_len[r]
        s0[b] = req_ctx[r] % req_len[r]
    sc = prefix_sources(pool_keys, C, off, ln, s0, alloc, G)  # (G, L*E)
    LE = sc.shape[1]
    counts = np.zeros(LE, dtype=np.int64)
    for g in range(G):
        for c in range(LE):
            counts[c] += sc[g, c]
    for c in range(LE):
        recorded[c] += counts[c]
        computed[c] += counts[c]
    comp, load = moe_owned(counts, lg, L * G, fpar[F_BLOCK], fpar[F_FLOPS_TOK], fpar[F_W_BYTES],
                           fpar[F_ACT_BYTES], fpar[F_FLOPS_S], fpar[F_HBM_S], fpar[F_LAUNCH_S])
    comp = comp.reshape(L, G)
    load = load.reshape(L, G)
    imb, imb_layers = imbalance(load)
    for g in range(G):
        s = 0.0
        for layer in range(L):
            s += load[layer, g]
        gpu_tok[g] += s
    a2a = a2a_owned(sc, moves, idx, L, G, fpar[F_A2A_SCALE], fpar[F_A2A_LAT])
    used = np.zeros(LE, dtype=np.bool_)
    for c in range(LE):
        used[c] = counts[c] > 0
    miss, figs = lru_serve(S, nres, cap, pairs[0], pairs[2], pairs[3], pair_key, used,
                           ipar[I_CLOCK], G, L, Q, Qn)
    accesses = 0
    for g in range(G):
        why[0, g] = figs[0, g]
        why[1, g] = figs[1, g]
        tally[0, g] += figs[0, g]
        tally[1, g] += figs[2, g]
        tally[2, g] += figs[3, g]
        accesses += figs[0, g]
    fin_lg = np.zeros((L, G))
    starts = np.empty(L)
    last = np.empty(G, dtype=np.int64)
    t = time_layers(miss, comp, a2a, fpar[F_T], fpar[F_ATTN], fpar[F_GATE], fpar[F_PF],
                    fpar[F_LAT], ipar[I_EB], fpar[F_BW], stall, fin_lg, starts, last)
    per = np.zeros((3, G), dtype=np.int64)
    fetches = np.zeros((L, G), dtype=np.bool_)
    for g in range(G):
        b = busy[g]
        m = 0
        for layer in range(L):
            b += comp[layer, g]
            m += miss[layer, g]
            fetches[layer, g] = miss[layer, g] > 0
        busy[g] = b
        per[0, g] = last[g]
        per[1, g] = m
        per[2, g] = miss[last[g], g] if last[g] >= 0 else 0
    return t, imb, imb_layers, accesses, per, fin_lg, starts, fetches
