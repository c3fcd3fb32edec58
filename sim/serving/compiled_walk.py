"""Compiled (numba) forms of an iteration's work on the simulator's fast path, each giving its
reference's bytes (tests/sim/serving/test_compiled_walk.py, test_fused_walk.py; ``python
benchmarks/sim_matrix.py OUT --compile-after 1``): :func:`lru_serve` (serve_lru_iteration),
:func:`time_layers` (LayerTiming.time_counts: the same float operations in the same order, per
GPU: ``max(fin + c_g) == fin + max(c_g)``, float addition being monotonic), :func:`prefix_sources`,
:func:`moe_owned`, :func:`a2a_owned` (integer sums, then the reference's float operations), and
:func:`owned_costs`, :func:`owned_time`, :func:`owned_lru_iteration` chaining them for a whole
iteration (:mod:`sim.serving.fused_walk`; numpy's pairwise sum where the walk sums floats).

Every kernel a kernel calls lives in this file: numba's disk cache is invalidated by an edit of
the function's own file only; ``batch_sums``, ``batch_costs`` (:mod:`sim.cost.compiled_analytic`)
and ``step_serve`` (no kernel here calls them) are re-exported. Imported lazily
(:func:`sim.serving.walk.walk_kernels`); without numba the numpy references run.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sim.cost.compiled_analytic import batch_costs, batch_sums, cost_params  # noqa: F401 (kern.)
from sim.serving.compiled_steps import step_serve  # noqa: F401 (kern.step_serve)


@njit(cache=True)
def lru_serve(S, nres, cap, pair_g, pair_layer, pair_fi, pair_key, used, c0, G, L, Q,
              Qn):  # pragma: no cover - compiled
    """serve_lru_iteration's decisions: ``S`` (G, H) stamps, ``nres`` (G,) updated in place
    (``used`` (L*E,) nonzero where the batch uses a key); returns the misses (L, G) and per GPU
    the accesses, misses on keys resident at the start, misses and evictions (4, G). Per GPU its
    residents in stamp order, then the iteration's keys as stamped (``clock, clock + 1, ...`` in
    serving order, as the reference), form a queue whose front is the least recent key; a step's
    misses evict from the front (skipping an entry re-stamped since queued), never the step's
    own keys (a step needs at most its GPU's slots: the caller checks). ``Q`` (G, H), ``Qn``
    (G,): each GPU's residents (flat indices) in stamp order as left, reused where still so
    (checked in one pass: a mode switch or numpy may have changed the row), else sorted again."""
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
            qkey[:nq], qst[:nq] = qkey[:nq][order], qst[:nq][order]  # (copies: then written)
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
    T = np.int64(alloc.sum())
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
    receives) * scale`` (``moves`` (G, L*E) 1 where a source GPU's tokens of a key leave it,
    ``idx`` (L*E,) each key's (layer, owner) index): exact integer sums, then two float ops."""
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


#: fpar (float64): MoE model, all-to-all, layer gaps, link; ipar (int64): G, L, expert bytes, clock
F_BLOCK, F_FLOPS_TOK, F_W_BYTES, F_ACT_BYTES, F_FLOPS_S, F_HBM_S, F_LAUNCH_S, F_A2A_SCALE, \
    F_A2A_LAT, F_ATTN, F_GATE, F_PF, F_LAT, F_BW, F_T = range(15)
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
def owned_costs(pool_keys, C, req_off, req_len, req_ctx, batch, alloc, lg, moves, idx, fpar,
                ipar):  # pragma: no cover - compiled
    """A batch's (requests ``batch``, ``alloc`` tokens each) tokens per key (L*E,), experts' time
    and load (L, G), all-to-all times (L,) and balance tally: :func:`prefix_sources`,
    :func:`moe_owned`, :func:`a2a_owned`, :func:`imbalance`. Changes nothing."""
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
    counts = np.zeros(sc.shape[1], dtype=np.int64)
    for g in range(G):
        for c in range(sc.shape[1]):
            counts[c] += sc[g, c]
    comp, load = moe_owned(counts, lg, L * G, fpar[F_BLOCK], fpar[F_FLOPS_TOK], fpar[F_W_BYTES],
                           fpar[F_ACT_BYTES], fpar[F_FLOPS_S], fpar[F_HBM_S], fpar[F_LAUNCH_S])
    load = load.reshape(L, G)
    imb, imb_layers = imbalance(load)
    a2a = a2a_owned(sc, moves, idx, L, G, fpar[F_A2A_SCALE], fpar[F_A2A_LAT])
    return counts, comp.reshape(L, G), load, a2a, imb, imb_layers


@njit(cache=True)
def owned_book(counts, load, recorded, computed, gpu_tok):  # pragma: no cover - compiled
    """The walk's tallies of a batch: ``recorded``, ``computed`` (L*E,) += tokens per key,
    ``gpu_tok`` (G,) += each GPU's expert tokens (integers: exact in any order)."""
    for c in range(counts.shape[0]):
        recorded[c] += counts[c]
        computed[c] += counts[c]
    for g in range(load.shape[1]):
        s = 0.0
        for layer in range(load.shape[0]):
            s += load[layer, g]
        gpu_tok[g] += s


@njit(cache=True)
def owned_time(miss, comp, a2a, fpar, ipar, busy, stall):  # pragma: no cover - compiled
    """:func:`time_layers` of the misses (L, G), ``busy`` (G,) += each layer's expert time in order
    (``stall`` too, in place). Returns the next layer's start, per GPU (3, G) its last layer with
    a copy (-1: none), its misses and that copy's, the copies' ends (L, G), starts (L,), where."""
    L, G = miss.shape
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
    return t, per, fin_lg, starts, fetches


@njit(cache=True)
def owned_lru_iteration(pool_keys, C, req_off, req_len, req_ctx, batch, alloc, lg, moves, idx,
                        fpar, ipar, recorded, computed, gpu_tok, S, nres, cap, pairs, pair_key, Q,
                        Qn, why, tally, busy, stall):  # pragma: no cover - compiled
    """An iteration under LRU stamps: :func:`owned_costs`, :func:`owned_book`, :func:`lru_serve`
    (the store's ``why`` set, ``tally`` added: RowStore.note), :func:`owned_time`. Returns the
    next layer's start, the balance tally, the accesses and owned_time's figures."""
    counts, comp, load, a2a, imb, imb_layers = owned_costs(
        pool_keys, C, req_off, req_len, req_ctx, batch, alloc, lg, moves, idx, fpar, ipar)
    owned_book(counts, load, recorded, computed, gpu_tok)
    G = ipar[I_G]
    miss, figs = lru_serve(S, nres, cap, pairs[0], pairs[2], pairs[3], pair_key, counts,
                           ipar[I_CLOCK], G, ipar[I_L], Q, Qn)
    accesses = 0
    for g in range(G):
        why[0, g] = figs[0, g]
        why[1, g] = figs[1, g]
        tally[0, g] += figs[0, g]
        tally[1, g] += figs[2, g]
        tally[2, g] += figs[3, g]
        accesses += figs[0, g]
    t, per, fin_lg, starts, fetches = owned_time(miss, comp, a2a, fpar, ipar, busy, stall)
    return t, imb, imb_layers, accesses, per, fin_lg, starts, fetches
