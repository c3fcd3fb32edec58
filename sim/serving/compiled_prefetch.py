"""A replica's iteration with a next-layer prefetch, compiled (numba): the caches' decisions
(LRU, FIFO, LIFO, LFU, eMoE's keep_predicted; each layer's step, then the prefetch's ``insert``
for the layer it targets), the host links' demand and prefetch copies, the waits for prefetched
keys still in flight and the layers' time, layer after layer, as the general walk does them with
the objects (:meth:`sim.serving.walk.LayerWalk.iteration` with
:class:`~sim.policies.cache.lru.LRUCache`, ``FIFOCache``, ``LIFOBufferingCache``, ``LFUCache``,
``KeepPredictedCache``, :meth:`sim.serving.prediction.Prediction.prefetch_keys` / ``issue``,
:meth:`sim.serving.layer_timing.LayerTiming.time_layers` / ``wait_prefetched`` and
:class:`sim.serving.link.Link`): the same decisions and the same float operations in the same
order, so the same bytes (tests/sim/serving/test_prefetch_walk.py). The predictions come in
(the policy runs in Python, :func:`~sim.serving.prefetch_walk.next_layer_plan`; none
without a next-layer policy: the kernel then serves the steps of an iteration with prefetched
keys in flight, or keep_predicted's); :mod:`sim.serving.prefetch_walk` packs the state in and
out.

Why the order may differ from the objects' where it does. A layer's decisions never read a
time, and its prefetch decisions (after its step) read no state its timing changes, so each
layer is: every GPU's step, the layer's time, every GPU's prefetch and the copies it issues, as
the walk's lazy decisions interleave with its timing. GPUs share nothing but the layer's end.
A prefetched key's wait (:func:`_serve_queue`) serves the link's prefetch queue up to its copy: the
ends do not depend on which key of a layer is waited for first.

State per GPU ``g`` (its home keys by local index ``h``, increasing key order): LRU's recency
or FIFO's / LIFO's load stamps ``S[g, h]`` (-1: not resident; LFU's uses and last step beside
them, ``C``, ``T``; the store's,
:class:`sim.serving.lru_arrays.StampStore`, :class:`sim.serving.step_arrays.StepStore`);
the link's demand clock (``lt``: the last demand copy's start, ``solo`` its bytes), prefetch
clock ``pt``, next transfer id, byte total; its prefetch queue from ``qh`` to ``qn`` (id, bytes
left, start, the key it loads: -1 once forgotten, as ``Link.forget`` marks it) and its demand
intervals from ``gh`` to ``gn`` (``Link.gaps``); per home key the transfer in flight (``itid``,
:data:`NONE`: none), its end once landed (``iland``, NaN until then) and its queue slot.
Every kernel these kernels call lives in this file (numba's disk cache follows a file's edits).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: ``itid`` of a key with no prefetched copy in flight
NONE = -(1 << 62)
#: the per-GPU figures :func:`prefetch_iteration` returns, by column
FIGS = ("hits", "misses", "streamed", "evictions", "prefetched", "skipped", "late", "used",
        "unused", "keys", "reused", "peak")


@njit(cache=True)
def _serve_queue(g, until, horizon, bw, pt, qb, qs, qk, qh, qn, gs, ge, gh, gn, iland
                 ):  # pragma: no cover - compiled
    """``Link._serve``: the prefetch queue served from ``pt`` up to ``horizon`` or until the
    copy in slot ``until`` ends (-1: none), pausing for the demand intervals; a copy that ends
    lands its key (``iland``). Returns the clock reached."""
    t = pt[g]
    gi = gh[g]
    ng = gn[g]
    while qh[g] < qn[g]:
        h = qh[g]
        if qs[g, h] > t:
            if qs[g, h] >= horizon:
                break
            t = qs[g, h]
        if t >= horizon:
            break
        while gi < ng and ge[g, gi] <= t:
            gi += 1
        if gi < ng and gs[g, gi] <= t:  # a demand copy runs: wait for its end
            t = ge[g, gi]
            gi += 1
            continue
        wend = gs[g, gi] if gi < ng else np.inf
        if horizon < wend:
            wend = horizon
        fin = t + qb[g, h] / bw
        if fin <= wend:
            t = fin
            qh[g] += 1
            if qk[g, h] >= 0:
                iland[g, qk[g, h]] = t
            if h == until:
                break
        else:
            qb[g, h] -= (wend - t) * bw
            t = wend
    pt[g] = t
    gh[g] = gi  # (``del gaps[:gi]``: they end by ``t``)
    return t


@njit(cache=True)
def _victims(S, C, T, g, hi, skip, used, hkey, rule, n, out):  # pragma: no cover - compiled
    """The ``n`` victims ``_victims`` picks among GPU ``g``'s resident keys (local indices below
    ``hi``) not marked in ``skip`` (there are at least ``n``), into ``out[:n]`` in eviction
    order, each then marked in ``skip``: LRU and FIFO (``rule`` 0, 1) the smallest stamps (the
    least recent use, the oldest load); LIFO (2) the keys outside the iteration's active set
    (its keys, ``used``) first, then the active ones, each the newest load first; LFU (3) the
    fewest uses ``C``, then the oldest last use ``T``, then the smallest id."""
    for j in range(n):
        best = -1
        bs = np.int64(0)
        bact = True
        for h in range(hi):
            s = S[g, h]
            if s < 0 or skip[h]:
                continue
            if rule == 2:
                a = used[hkey[g, h]]
                if best < 0 or (bact and not a) or (a == bact and s > bs):
                    best, bs, bact = h, s, a
            elif rule == 3:
                if best < 0 or C[g, h] < C[g, best] or (C[g, h] == C[g, best] and
                                                         T[g, h] < T[g, best]):
                    best = h
            elif best < 0 or s < bs:
                best, bs = h, s
        if best < 0:
            raise ValueError("internal: fewer victims than the step's count of them")
        out[j] = best
        skip[best] = True


@njit(cache=True)
def prefetch_iteration(rule, S, C, T, pin, step0, nres, cap, clock, hkey, loc, lo, used, pk, po, ptl,
                       t, attn, gate, pf_cost, a2a, comp, eb, stall,
                       lat, bw, lt, solo, pt, nid, btot, qt, qb, qs, qk, qh, qn, gs, ge, gh, gn,
                       itid, iland, islot, icnt, figs):  # pragma: no cover - compiled
    """One iteration of a replica's G GPUs over L layers (see the module doc); returns when the
    next iteration may start and the stamp clock. ``rule``: the caches' (0 LRU, recency stamps;
    1 FIFO, 2 LIFO with Huang et al.'s active set, load stamps: a hit is not stamped; 3 LFU:
    ``S`` marks the resident keys, ``C``, ``T`` (G, H) each key's uses and last step, a layer
    ``l``'s step being ``step0 + l``; 4 eMoE's keep_predicted: LRU whose resident keys marked
    in ``pin`` (G, H), the predicted set, are no victims of a step or a prefetch). ``hkey`` (G,
    H): each local index's key (-1: padding), ``loc`` (G, L*E) each key's local index (-1: not
    held); ``lo`` (G, L+1): each layer's first local index; ``used`` (L*E,) the keys the batch
    uses (LIFO's active set); the predictions ``pk[po[l]:po[l + 1]]`` (keys of layer
    ``ptl[l]``, -1: none) decided after layer ``l``; ``comp`` (L, G) the experts' seconds,
    ``a2a`` (L,) the all-to-all's; ``stall`` (G,) added to. ``icnt`` (G,) gets each GPU's keys
    in flight at the end, ``figs`` (G, len(FIGS)) the caches' and prefetches' figures."""
    G, H = S.shape
    L = lo.shape[1] - 1
    row = np.zeros((G, H), dtype=np.bool_)  # a layer's keys (its step), per GPU
    miss = np.zeros((G, H), dtype=np.bool_)  # ... missed there
    held = np.zeros((G, H), dtype=np.bool_)  # why: the iteration's keys resident at its start
    skip = np.zeros(H, dtype=np.bool_)
    vic = np.empty(H, dtype=np.int64)
    loaded = np.empty(H, dtype=np.int64)
    nm_g = np.zeros(G, dtype=np.int64)  # the layer's misses per GPU (-1: no step)
    icnt[:] = 0  # keys in flight per GPU
    peak = np.zeros(G, dtype=np.int64)
    for g in range(G):
        n = 0
        for h in range(lo[g, L]):
            if itid[g, h] != NONE:
                icnt[g] += 1
            if used[hkey[g, h]]:
                n += 1
                held[g, h] = S[g, h] >= 0
        figs[g, 9] += n
    for l in range(L):
        # -- every GPU's step (LRUCache.access: misses load in increasing key order, each past
        # the free slots evicting the least recent key outside the step; none left: streamed)
        for g in range(G):
            a, b = lo[g, l], lo[g, l + 1]
            n = 0
            nm = 0
            for h in range(a, b):
                u = used[hkey[g, h]]
                row[g, h] = u
                miss[g, h] = False
                if u:
                    n += 1
                    if S[g, h] < 0:
                        miss[g, h] = True
                        nm += 1
            if n == 0:
                nm_g[g] = -1
                continue
            nm_g[g] = nm
            room = cap[g] - nres[g]
            n_ev = 0
            keep = nm
            if nm > room:
                n_ev = nm - room
                n_cand = nres[g] - (n - nm)
                if rule == 4:  # (pinned resident keys outside the step are no victims)
                    for h in range(lo[g, L]):
                        if pin[g, h] and S[g, h] >= 0 and not (a <= h < b and row[g, h]):
                            n_cand -= 1
                if n_ev > n_cand:
                    figs[g, 2] += n_ev - n_cand
                    n_ev = n_cand
                keep = room + n_ev
                if n_ev > 0:
                    for h in range(a, b):
                        skip[h] = row[g, h]
                    if rule == 4:
                        for h in range(lo[g, L]):
                            skip[h] = skip[h] or pin[g, h]
                    _victims(S, C, T, g, lo[g, L], skip, used, hkey, rule, n_ev, vic)
                    for j in range(n_ev):
                        S[g, vic[j]] = -1
                    for h in range(lo[g, L]):
                        skip[h] = False
            nres[g] += keep - n_ev
            figs[g, 0] += n - nm
            figs[g, 1] += nm
            figs[g, 3] += n_ev
            k = 0
            for h in range(a, b):  # stamped in increasing key order: the step's resident keys
                if row[g, h]:  # (LRU), its loads (FIFO, LIFO)
                    if miss[g, h]:
                        if held[g, h]:
                            figs[g, 10] += 1  # (why: a key the iteration held, evicted)
                        if k >= keep:
                            continue  # (streamed through: not kept)
                        k += 1
                    elif rule != 0 and rule != 4:
                        continue
                    S[g, h] = clock
                    clock += 1
            if rule == 3:  # LFU: every key of the step one use more (streamed ones too)
                for h in range(a, b):
                    if row[g, h]:
                        C[g, h] += 1
                        T[g, h] = step0 + l
            if nres[g] > peak[g]:
                peak[g] = nres[g]
        # -- the layer's time (LayerTiming.time_layers, one layer)
        t_gate = t + attn + gate + pf_cost
        ready = t_gate + a2a[l]
        cmax = comp[l, 0]
        for g in range(1, G):
            if comp[l, g] > cmax:
                cmax = comp[l, g]
        end = ready + cmax
        if end < ready:
            end = ready
        for g in range(G):
            nm = nm_g[g]
            if nm < 0:
                continue
            start = ready
            if nm:  # Link.fetch
                nb = np.float64(nm * eb)
                btot[g] += nb
                st = t_gate + lat[g]
                if solo[g]:
                    prev = lt[g] + solo[g] / bw[g]
                    if prev > st:
                        st = prev
                if st < pt[g] and qh[g] < qn[g]:
                    raise ValueError("internal: a demand copy after prefetches were served")
                fin = st + nb / bw[g]
                lt[g] = st
                solo[g] = nb
                gs[g, gn[g]] = st
                ge[g, gn[g]] = fin
                gn[g] += 1
                if fin > start:
                    start = fin
            if icnt[g]:  # wait_prefetched
                r0 = start
                late = 0
                for h in range(lo[g, l], lo[g, l + 1]):
                    if not row[g, h] or itid[g, h] == NONE:
                        continue
                    itid[g, h] = NONE
                    icnt[g] -= 1
                    if miss[g, h]:  # evicted before use: forgotten, its copy runs on
                        if np.isnan(iland[g, h]):
                            qk[g, islot[g, h]] = -1
                            qt[g, islot[g, h]] = -1
                        figs[g, 8] += 1
                        continue
                    figs[g, 7] += 1
                    fin = iland[g, h]
                    if np.isnan(fin):
                        _serve_queue(g, islot[g, h], np.inf, bw[g], pt, qb, qs, qk, qh, qn, gs,
                                     ge, gh, gn, iland)
                        fin = iland[g, h]
                    if fin > r0:
                        late += 1
                        if fin > start:
                            start = fin
                figs[g, 0] -= late
                figs[g, 6] += late
            if start > ready:
                stall[g] += start - ready
                e_end = start + comp[l, g]
                if e_end > end:
                    end = e_end
        t_next = end + a2a[l]
        # -- the prefetch after the layer: per GPU one insert of its predicted keys, never
        # evicting a key the layers from this one to the target use, then its copies issued
        tl = ptl[l]
        if tl >= 0 and po[l + 1] > po[l]:
            for g in range(G):
                nt = 0
                for j in range(po[l], po[l + 1]):
                    h = loc[g, pk[j]]
                    if h >= 0 and not skip[h]:
                        skip[h] = True  # (mine, once)
                        loaded[nt] = h
                        nt += 1
                if nt == 0:
                    continue
                # the protected keys (the layers l .. tl's), resident: held by the insert
                todo = 0
                for j in range(nt):
                    h = loaded[j]
                    skip[h] = False
                    if S[g, h] < 0:
                        loaded[todo] = h
                        todo += 1
                if todo == 0:
                    if nres[g] > peak[g]:
                        peak[g] = nres[g]
                    continue
                nheld = 0  # (LIFO: every active key the GPU holds; keep_predicted: its pins)
                for h in range(0 if rule == 2 else lo[g, l], lo[g, L] if rule == 2 else
                               lo[g, tl + 1]):
                    if used[hkey[g, h]] and S[g, h] >= 0:
                        skip[h] = True
                        nheld += 1
                if rule == 4:
                    for h in range(lo[g, L]):
                        if pin[g, h] and S[g, h] >= 0 and not skip[h]:
                            skip[h] = True
                            nheld += 1
                room = cap[g] - nres[g]
                n_ev = 0
                keep = todo
                if todo > room:
                    n_ev = todo - room
                    n_cand = nres[g] - nheld
                    if n_ev > n_cand:
                        figs[g, 5] += n_ev - n_cand
                        n_ev = n_cand
                    keep = room + n_ev
                    if n_ev > 0:
                        _victims(S, C, T, g, lo[g, L], skip, used, hkey, rule, n_ev, vic)
                        for j in range(n_ev):
                            S[g, vic[j]] = -1
                for h in range(lo[g, L]):
                    skip[h] = False
                # the loads in increasing key order (the predictions' order sorted)
                srt = np.sort(loaded[:todo])
                nres[g] += keep - n_ev
                figs[g, 3] += n_ev
                figs[g, 4] += keep
                for j in range(keep):
                    S[g, srt[j]] = clock
                    clock += 1
                if nres[g] > peak[g]:
                    peak[g] = nres[g]
                # Prediction.issue: a key in flight again was evicted unused; then each copy
                # starts on the link at the layer's gate
                for j in range(keep):
                    h = srt[j]
                    held[g, h] = True  # (why: held from now on)
                    if itid[g, h] != NONE:
                        if np.isnan(iland[g, h]):
                            qk[g, islot[g, h]] = -1
                            qt[g, islot[g, h]] = -1
                        itid[g, h] = NONE
                        icnt[g] -= 1
                        figs[g, 8] += 1
                for j in range(keep):
                    h = srt[j]
                    tid = nid[g]
                    nid[g] += 1
                    nb = np.float64(eb)
                    btot[g] += nb
                    q = qn[g]
                    qt[g, q] = tid
                    qb[g, q] = nb
                    qs[g, q] = t_gate + lat[g]
                    qk[g, q] = h
                    qn[g] = q + 1
                    itid[g, h] = tid
                    iland[g, h] = np.nan
                    islot[g, h] = q
                    icnt[g] += 1
        t = t_next
    for g in range(G):
        figs[g, 11] = peak[g]
    return t, clock
