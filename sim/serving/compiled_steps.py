"""The step arrays' iteration compiled (numba): :func:`step_serve` serves FIFO, LIFO and LFU as
:meth:`sim.serving.step_arrays.StepStore.serve` does with numpy, step by step, with the same
decisions, stamps, uses and figures (tests/sim/serving/test_compiled_steps.py: random stores
against the numpy serve, by hand, and whole runs' metrics.json). Per step: the resident keys of
the step are hits; each GPU's misses evict its ``nres + misses - cap`` residents of smallest
victim priority outside the step (the priorities are distinct: stamps, or LFU's packed
(uses, last step + 1, local index)), then load in serving order with the next stamps.

Without numpy's per-step calls the arrays pay at any width, so a narrow replica (under
``step_arrays.MIN_GPUS``) is served by them too once the walk has imported its kernels. Imported
lazily with :mod:`sim.serving.compiled_walk` (:func:`sim.serving.walk.walk_kernels`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: the rules, as :func:`step_serve` takes them
RULES = {"fifo": 0, "lifo": 1, "lfu": 2}
_NONE = np.iinfo(np.int64).max  # (step_arrays._NONE: no victim)
_ACTIVE = 1 << 42  # (step_arrays._ACTIVE: LIFO's offset of an active key)


@njit(cache=True)
def step_serve(rule, S, C, T, nres, cap, g, i, lay, L, step0, clock, tb,
               hb):  # pragma: no cover - compiled
    """One iteration's steps on a store's arrays (``S``, ``C``, ``T`` (G, H), ``nres`` (G,) in
    place) for the accesses ``g``, ``i``, ``lay`` (n,) (GPU, local index, layer) in serving
    order (layer, GPU, key); ``tb``, ``hb``: LFU's bit widths of the last step and the index.
    Returns the misses (L, G), the figures (4, G): accesses, misses on keys resident at the
    start, misses, evictions, and the clock after the loads."""
    G, H = S.shape
    P = np.empty((G, H), dtype=np.int64)
    act = np.zeros((G, H), dtype=np.int64)
    n = g.shape[0]
    if rule == 1:
        for a in range(n):
            act[g[a], i[a]] = _ACTIVE
    for r in range(G):
        for h in range(H):
            if S[r, h] < 0:
                P[r, h] = _NONE
            elif rule == 2:
                P[r, h] = (C[r, h] << (tb + hb)) | ((T[r, h] + 1) << hb) | h
            elif rule == 1:
                P[r, h] = act[r, h] + ((1 << 41) - S[r, h])
            else:
                P[r, h] = S[r, h]
    miss = np.zeros((L, G), dtype=np.int64)
    figs = np.zeros((4, G), dtype=np.int64)
    missed = np.zeros(n, dtype=np.bool_)
    held0 = np.zeros(n, dtype=np.bool_)  # resident at the iteration's start
    for a in range(n):
        held0[a] = S[g[a], i[a]] >= 0
    m_g = np.zeros(G, dtype=np.int64)
    excl = np.zeros((G, H), dtype=np.bool_)
    k = 0
    while k < n:
        layer = lay[k]
        e = k
        while e < n and lay[e] == layer:
            e += 1
        m_g[:] = 0
        any_miss = False
        for a in range(k, e):
            figs[0, g[a]] += 1
            if S[g[a], i[a]] < 0:
                missed[a] = True
                m_g[g[a]] += 1
                any_miss = True
            else:
                excl[g[a], i[a]] = True  # (the step's hits are no victims)
        if any_miss:
            for r in range(G):
                miss[layer, r] = m_g[r]
                ev = nres[r] + m_g[r] - cap[r]
                for _ in range(ev):  # the smallest priorities outside the step, one by one
                    best = _NONE
                    col = -1
                    for h in range(H):
                        if not excl[r, h] and P[r, h] < best:
                            best = P[r, h]
                            col = h
                    S[r, col] = -1
                    P[r, col] = _NONE
                if ev > 0:
                    figs[3, r] += ev
                    nres[r] += m_g[r] - ev
                else:
                    nres[r] += m_g[r]
            for a in range(k, e):
                if missed[a]:
                    S[g[a], i[a]] = clock
                    if rule == 0:
                        P[g[a], i[a]] = clock
                    elif rule == 1:
                        P[g[a], i[a]] = act[g[a], i[a]] + ((1 << 41) - clock)
                    clock += 1
                    figs[2, g[a]] += 1
                    if held0[a]:  # (evicted earlier in the iteration)
                        figs[1, g[a]] += 1
        for a in range(k, e):
            excl[g[a], i[a]] = False
            if rule == 2:  # the step's keys (all resident now): one use more, used now
                C[g[a], i[a]] += 1
                T[g[a], i[a]] = step0 + layer
                P[g[a], i[a]] = (C[g[a], i[a]] << (tb + hb)) | ((step0 + layer + 1) << hb) | i[a]
        k = e
    return miss, figs, clock
