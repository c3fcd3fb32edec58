"""Compiled (numba) kernels of the per-batch token split kept over the plan's holder pairs
(:mod:`sim.world.pair_split`) instead of a dense (L, E, G) array (the network's per-link loads:
:mod:`sim.world.compiled_links`). A large replica's split is nonzero on its
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


# The split's passes over holder slots: token_split's _integer_passes and _refine, and
# compiled.round_alloc, with the allocation (M, J, H) per holder slot i (the GPU ``hl[m, j, i]``)
# instead of (M, J, G) per GPU: the references' operations on a GPU that does not hold the
# expert change nothing, the holders' are the same on the same values in slot order (the
# (M, J, G) arrays were zero off the holders: 32 times the size at EP 64). compiled.integer_passes
# and refine, the per-GPU forms, run these on the holders' entries.


@njit(cache=True)
def _sort_small(a, n):  # pragma: no cover - compiled
    """Sorts ``a[:n]`` ascending in place (insertion: a few holders; the same array as np.sort
    for numbers without NaN, equal values being equal)."""
    for i in range(1, n):
        v = a[i]
        p = i
        while p > 0 and a[p - 1] > v:
            a[p] = a[p - 1]
            p -= 1
        a[p] = v


@njit(cache=True)
def slot_loads(base, alloc, hl, nh):  # pragma: no cover - compiled
    """(M, G) int64 ``base`` plus each row's allocations summed per GPU (``alloc`` (M, J, H)
    per holder slot): ``base + alloc.sum(axis=1)`` of the per-GPU form (integers)."""
    M, J, _ = alloc.shape
    load = base.copy()
    for m in range(M):
        for j in range(J):
            for i in range(nh[m, j]):
                load[m, hl[m, j, i]] += alloc[m, j, i]
    return load


@njit(cache=True)
def _fill2(x0, x1, n, t0, t1):  # pragma: no cover - compiled
    """slot_passes' water-fill over 2 holders (loads ``x0``, ``x1``, tie places ``t0``, ``t1``):
    the general loop's operations unrolled, the same integers."""
    s0, s1 = (x0, x1) if x0 <= x1 else (x1, x0)
    S0 = s0
    S1 = s0 + s1
    kstar = (1 if s0 - S0 <= n else 0) + (1 if 2 * s1 - S1 <= n else 0)
    if kstar == 0:
        return np.int64(0), np.int64(0)
    Sk = S0 if kstar == 1 else S1
    h = (n + Sk) // kstar
    rem = n + Sk - h * kstar
    in0, in1 = x0 <= h, x1 <= h
    r0 = 0 if (not in1 or t0 <= t1) else 1  # places in the tie order among the gaining holders
    r1 = 0 if (not in0 or t1 < t0) else 1
    a0 = h - x0 + (1 if r0 + 1 <= rem else 0) if in0 else np.int64(0)
    a1 = h - x1 + (1 if r1 + 1 <= rem else 0) if in1 else np.int64(0)
    return a0, a1


@njit(cache=True)
def slot_passes(count, alloc, load, hl, nh, nn, tiepos, skip_unmoved):  # pragma: no cover
    """token_split._integer_passes over holder slots, in place on ``alloc`` (M, J, H) int64:
    per pass, per replicated expert j and row m, the integer water-fill of ``nn[m, j]`` tokens
    over its holders (loads ``load`` less its own), gains in the tie order ``tiepos`` (M, G);
    stops after a pass that moved nothing (``skip_unmoved``). A row's water-fills read and
    write that row only, so a pass goes row by row (its experts in order); with
    ``skip_unmoved`` a row that moved nothing in a pass would do the same again: it is left
    (the same integers)."""
    M, J, H = alloc.shape
    load = load.copy()
    xs = np.empty(H, dtype=np.int64)
    srt = np.empty(H, dtype=np.int64)
    S = np.empty(H, dtype=np.int64)
    a = np.empty(H, dtype=np.int64)
    gain = np.empty(H, dtype=np.int64)
    done = np.zeros(M, dtype=np.bool_)
    for _ in range(count):
        moved = False
        for m in range(M):
            if done[m]:
                continue
            row_moved = False
            for j in range(J):
                k_n = nh[m, j]
                n = nn[m, j]
                if k_n == 2:
                    g0, g1 = hl[m, j, 0], hl[m, j, 1]
                    x0, x1 = load[m, g0] - alloc[m, j, 0], load[m, g1] - alloc[m, j, 1]
                    a0, a1 = _fill2(x0, x1, n, tiepos[m, g0], tiepos[m, g1])
                    if a0 != alloc[m, j, 0] or a1 != alloc[m, j, 1]:
                        row_moved = True
                    alloc[m, j, 0], alloc[m, j, 1] = a0, a1
                    load[m, g0], load[m, g1] = x0 + a0, x1 + a1
                    continue
                for i in range(k_n):
                    xs[i] = load[m, hl[m, j, i]] - alloc[m, j, i]
                    srt[i] = xs[i]
                _sort_small(srt, k_n)
                acc = np.int64(0)
                kstar = 0
                for k in range(k_n):
                    acc += srt[k]
                    S[k] = acc
                    if (k + 1) * srt[k] - acc <= n:
                        kstar += 1
                ng = 0
                if kstar > 0:
                    Sk = S[kstar - 1]
                    h = (n + Sk) // kstar
                    rem = n + Sk - h * kstar
                    for i in range(k_n):  # the gaining holders, in the tie order
                        a[i] = 0
                        if xs[i] <= h:
                            p = ng
                            while p > 0 and tiepos[m, hl[m, j, gain[p - 1]]] > tiepos[m, hl[m, j, i]]:
                                gain[p] = gain[p - 1]
                                p -= 1
                            gain[p] = i
                            ng += 1
                    for r in range(ng):
                        i = gain[r]
                        a[i] = h - xs[i] + (1 if r + 1 <= rem else 0)
                else:
                    for i in range(k_n):
                        a[i] = 0
                for i in range(k_n):
                    if a[i] != alloc[m, j, i]:
                        row_moved = True
                    alloc[m, j, i] = a[i]
                    load[m, hl[m, j, i]] = xs[i] + a[i]
            if row_moved or not skip_unmoved:
                moved = True
            else:
                done[m] = True
        if not moved:
            break
    return alloc


@njit(cache=True)
def slot_refine(alloc, load, hl, nh, nn, passes):  # pragma: no cover - compiled
    """token_split._refine over holder slots, in place on ``alloc`` (M, J, H) float64: the
    continuous water-fill per expert in turn, for ``passes`` passes or until no allocation
    moved by more than 1e-9 (the largest move over all rows: a pass goes row by row, each row's
    experts in order; 2 holders unrolled, the same float operations)."""
    M, J, H = alloc.shape
    load = load.copy()
    srt = np.empty(H)
    S = np.empty(H)
    xs = np.empty(H)
    for _ in range(passes):
        delta = 0.0
        for m in range(M):
            for j in range(J):
                k_n = nh[m, j]
                n = np.float64(nn[m, j])
                if k_n == 2:
                    g0, g1 = hl[m, j, 0], hl[m, j, 1]
                    x0, x1 = load[m, g0] - alloc[m, j, 0], load[m, g1] - alloc[m, j, 1]
                    s0, s1 = (x0, x1) if x0 <= x1 else (x1, x0)
                    S0 = 0.0 + s0
                    S1 = S0 + s1
                    kstar = (1 if np.float64(1) * s0 - S0 <= n else 0) + \
                        (1 if np.float64(2) * s1 - S1 <= n else 0)
                    v0 = v1 = 0.0
                    if kstar > 0:
                        h = (n + (S0 if kstar == 1 else S1)) / np.float64(kstar)
                        v0, v1 = h - x0, h - x1
                        if not v0 >= 0.0:
                            v0 = 0.0
                        if not v1 >= 0.0:
                            v1 = 0.0
                    delta = max(delta, abs(v0 - alloc[m, j, 0]), abs(v1 - alloc[m, j, 1]))
                    alloc[m, j, 0], alloc[m, j, 1] = v0, v1
                    load[m, g0], load[m, g1] = x0 + v0, x1 + v1
                    continue
                for i in range(k_n):
                    xs[i] = load[m, hl[m, j, i]] - alloc[m, j, i]
                    srt[i] = xs[i]
                _sort_small(srt, k_n)
                acc = 0.0
                kstar = 0
                for k in range(k_n):
                    acc += srt[k]
                    S[k] = acc
                    if np.float64(k + 1) * srt[k] - acc <= n:
                        kstar += 1
                h = (n + S[kstar - 1]) / np.float64(kstar) if kstar > 0 else 0.0
                for i in range(k_n):
                    v = 0.0
                    if kstar > 0:
                        v = h - xs[i]
                        if not v >= 0.0:
                            v = 0.0
                    d = abs(v - alloc[m, j, i])
                    if d > delta:
                        delta = d
                    alloc[m, j, i] = v
                    load[m, hl[m, j, i]] = xs[i] + v
        if delta <= 1e-9:
            break
    return alloc


@njit(cache=True)
def slot_round(fa, hl, nh, nn, tiepos):  # pragma: no cover - compiled
    """token_split._round over holder slots (``fa`` (M, J, H) float64; :func:`compiled.round_alloc`
    is it on (M, J, G)): the floors' sum over the holders (the other GPUs' 0.0 floor to 0: the
    same exact sum)."""
    M, J, H = fa.shape
    G = tiepos.shape[1]
    out = np.zeros((M, J, H), dtype=np.int64)
    key = np.empty(H, dtype=np.int64)
    fl = np.empty(H)
    for m in range(M):
        for j in range(J):
            k_n = nh[m, j]
            tot = 0.0
            for i in range(k_n):
                f = np.floor(fa[m, j, i] + 1e-9)
                fl[i] = f
                tot += f
                q = np.int64(np.rint((fa[m, j, i] - f) * 1e6))
                key[i] = -q * G + tiepos[m, hl[m, j, i]]
            rem = nn[m, j] - np.int64(tot)
            for i in range(k_n):
                rank = 0
                for i2 in range(k_n):
                    if key[i2] < key[i]:
                        rank += 1
                out[m, j, i] = np.int64(fl[i]) + (1 if rank < rem else 0)
    return out


@njit(cache=True)
def scatter_slots(tok, alloc, ee, ok, ptr, nrep, E):  # pragma: no cover - compiled
    """Writes the replicated experts' split into ``tok`` (P,): row m (layer m) and column j
    (where ``ok``) hold expert ``ee[m, j]``'s tokens per holder slot ``alloc[m, j]`` (H,);
    its i-th slot is its i-th holder, its i-th pair (both ascending by GPU). split_tokens'
    last scatter."""
    M, J = ee.shape
    for m in range(M):
        for j in range(J):
            if ok[m, j]:
                e = ee[m, j]
                p = ptr[m * E + e]
                for i in range(nrep[m, e]):
                    tok[p + i] = alloc[m, j, i]


@njit(cache=True)
def split_slots(c, nrep, ptr, pair_gpu, gpus, rep_e, rep_ok, E, G, passes):  # pragma: no cover
    """pair_split.split_pairs in one call: (P,) int64 tokens per holder pair of a batch's ``c``
    (L*E,) tokens per key (``nrep`` (L, E) holders per expert, ``ptr`` (L*E + 1,) each key's
    first pair, ``gpus`` (L, E, H) their GPUs, ``rep_e``, ``rep_ok`` (L, J) the replicated
    experts of token_split.replicated_ids). token_split.split_replicated's steps with the slot
    kernels, its numpy steps as loops on the same integers: per layer u = sum (e + 1) c[e],
    its replicated experts with tokens most first (a stable sort, ties smaller expert id),
    the tie order, their holders (compiled.holders_of), the greedy, then the rows above the
    bound refined, rounded and passed again; the same integers."""
    L = rep_e.shape[0]
    J0 = rep_e.shape[1]
    tok, base = single_pairs(c, nrep.reshape(L * E), ptr, pair_gpu, E, G)
    start = np.zeros(L, dtype=np.int64)
    ee0 = np.empty((L, J0), dtype=np.int64)
    ok0 = np.empty((L, J0), dtype=np.bool_)
    nn0 = np.empty((L, J0), dtype=np.int64)
    rc = np.empty(J0, dtype=np.int64)
    J = 0
    for m in range(L):
        for e in range(E):
            start[m] += (e + 1) * c[m * E + e]
        for j in range(J0):
            rc[j] = -(c[m * E + rep_e[m, j]] * rep_ok[m, j])
        order = np.argsort(rc, kind="mergesort")  # stable: most tokens first, ties by place
        n_pos = 0
        for j in range(J0):
            o = order[j]
            ee0[m, j], ok0[m, j], nn0[m, j] = rep_e[m, o], rep_ok[m, o], -rc[o]
            if -rc[o] > 0:
                n_pos += 1
        J = max(J, n_pos)
    ee, ok, nn = ee0[:, :J].copy(), ok0[:, :J].copy(), nn0[:, :J].copy()
    tie = np.empty((L, G), dtype=np.int64)
    for m in range(L):
        u = start[m]
        step = 1 - 2 * ((u // G) % 2)
        for g in range(G):
            tie[m, g] = ((g - u % G) * step) % G
    nh = np.zeros((L, J), dtype=np.int64)
    H = 1
    for m in range(L):
        for j in range(J):
            if ok[m, j]:
                nh[m, j] = nrep[m, ee[m, j]]
                H = max(H, nh[m, j])
    hl = np.full((L, J, H), -1, dtype=np.int64)
    for m in range(L):
        for j in range(J):
            for i in range(nh[m, j]):
                hl[m, j, i] = gpus[m, ee[m, j], i]
    alloc = slot_passes(1, np.zeros((L, J, H), dtype=np.int64), base, hl, nh, nn, tie, False)
    if passes > 1:
        load = slot_loads(base, alloc, hl, nh)
        rows = np.empty(L, dtype=np.int64)
        nr = 0
        for m in range(L):
            tot = np.int64(0)
            for e in range(E):
                tot += c[m * E + e]
            bound = max(-(-tot // G), base[m].max())  # no split does better
            if load[m].max() > bound:
                rows[nr] = m
                nr += 1
        if nr:
            r = rows[:nr]
            fa = slot_refine(alloc[r].astype(np.float64), load[r].astype(np.float64), hl[r],
                             nh[r], nn[r], passes - 1)
            ar = slot_round(fa, hl[r], nh[r], nn[r], tie[r])
            ar = slot_passes(passes - 1, ar, slot_loads(base[r], ar, hl[r], nh[r]), hl[r],
                             nh[r], nn[r], tie[r], True)
            for q in range(nr):
                alloc[r[q]] = ar[q]
    scatter_slots(tok, alloc, ee, ok, ptr, nrep, E)
    return tok
