"""Per-batch split of a replicated expert's tokens across its replicas: the one function the
simulator (:mod:`sim.layer_costs`, multi-owner placements), ``moesim placement`` and the network
model call to know how many tokens of each (layer, expert) each GPU computes in a batch.

Serving engines with redundant experts (DeepSeek's EPLB in SGLang / vLLM) send each token of a
replicated expert to the replica on the least-loaded GPU of that batch, instead of sharing the
expert's tokens equally. :func:`split_tokens` does this exactly, in integers, for all batches and
layers at once:

1. an expert held by one GPU gives it all its tokens (the equal share, unchanged);
2. the replicated experts of a layer, in descending order of their tokens in the batch (ties:
   smaller expert id), each hand their tokens one at a time to the least-loaded GPU among their
   replicas, ties to the smaller GPU id (computed in closed form as an integer water-fill: the
   holders below the level ``h`` are raised to ``h``, the ``r`` tokens left over go one each to
   the holders at ``h`` with the smallest GPU ids);
3. refinement (``passes > 1``): from the greedy, up to ``passes - 1`` passes of continuous block
   coordinate descent (each replicated expert, in the same order, takes its tokens back and
   water-fills them, as real numbers, against the loads the others leave; stop once nothing
   moves by 1e-9). Each step lowers the sum of squared GPU loads, a convex objective whose
   constraints are per expert, so the loads converge to the balanced flow that chains of
   replicas allow (GPU a to b through one shared expert, b to c through another). Then
   integers: each expert's floors, its leftover tokens one each to its holders of largest
   fractional part (fractions compared at 1e-6, ties smaller GPU id), and up to ``passes - 1``
   integer passes of step 2's rule (stopping once nothing moves), which can only lower the sum
   of squares further. Continuous first, because integer steps alone stall one token away
   along a chain (tests/sim/test_token_split.py).

``passes=1`` is the serving engine's greedy; the default refines.

Shape legend: N batches (any leading shape), L layers, E experts, G GPUs, J replicated experts of
a layer (padded to the largest layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.errors import ConfigError

DEFAULT_PASSES = 8
_BIG = np.int64(1) << 40  # a non-holder's load in the water-fill (never below the level)


def holders(placement: Any, num_layers: int | None = None, num_experts: int | None = None,
            name: str = "?") -> np.ndarray:
    """(L, E, G) bool: GPU g holds a replica of expert e of layer l (from
    :meth:`Placement.share`, which checks the shape)."""
    return placement.share(num_layers, num_experts, name) > 0


def water_fill(x: np.ndarray, hold: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Integer water-fill: ``n`` (M,) tokens over the GPUs ``hold`` (M, G) with loads ``x``
    (M, G), each token to the least-loaded holder (ties smaller GPU id); returns (M, G) int64
    tokens per GPU (0 off the holders). Rows with no holder must have ``n == 0``."""
    x = x.astype(np.int64, copy=False)
    n = n.astype(np.int64, copy=False)
    G = x.shape[-1]
    srt = np.sort(np.where(hold, x, _BIG), axis=-1)  # (M, G) holders' loads ascending
    S = np.cumsum(srt, axis=-1)
    k = np.arange(1, G + 1, dtype=np.int64)
    # filling the k lowest up to the k-th costs k * x_(k) - S_k tokens (nondecreasing in k)
    kstar = ((k * srt - S <= n[:, None]) & (srt < _BIG)).sum(axis=-1)  # (M,) GPUs that gain
    kk = np.maximum(kstar, 1)
    Sk = np.take_along_axis(S, (kk - 1)[:, None], axis=-1)[:, 0]
    h = (n + Sk) // kk  # (M,) the level; the holders at or below it are exactly those that gain
    rem = n + Sk - h * kk
    inc = hold & (x <= h[:, None]) & (kstar > 0)[:, None]
    rank = np.cumsum(inc, axis=-1)  # 1-based rank by GPU id among the gaining holders
    return np.where(inc, h[:, None] - x, 0) + (inc & (rank <= rem[:, None]))


def _water_fill_float(x: np.ndarray, hold: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Continuous water-fill: ``n`` (M,) over the holders ``hold`` (M, G) of loads ``x`` (M, G),
    raising the lowest to a common level; returns (M, G) float allocations."""
    G = x.shape[-1]
    srt = np.sort(np.where(hold, x, np.inf), axis=-1)
    S = np.cumsum(np.where(np.isfinite(srt), srt, 0.0), axis=-1)
    k = np.arange(1, G + 1, dtype=np.float64)
    kstar = ((k * srt - S <= n[:, None]) & np.isfinite(srt)).sum(axis=-1)
    kk = np.maximum(kstar, 1)
    Sk = np.take_along_axis(S, (kk - 1)[:, None], axis=-1)[:, 0]
    h = (n + Sk) / kk
    return np.where(hold & (kstar > 0)[:, None], np.maximum(h[:, None] - x, 0.0), 0.0)


def _refine(alloc: np.ndarray, load: np.ndarray, hjm: list[np.ndarray], nnm: list[np.ndarray],
            passes: int, N: int, L: int, G: int) -> np.ndarray:
    """Continuous block coordinate descent from ``alloc`` (N, L, J, G) with GPU loads ``load``
    (N, L, G): each replicated expert in turn water-fills its tokens against the others', for
    ``passes`` passes or until no allocation moves by more than 1e-9."""
    M = N * L
    for _ in range(passes):
        delta = 0.0
        for j in range(len(hjm)):
            x = load - alloc[:, :, j]
            a = _water_fill_float(x.reshape(M, G), hjm[j], nnm[j].astype(np.float64)).reshape(N, L, G)
            delta = max(delta, float(np.abs(a - alloc[:, :, j]).max(initial=0.0)))
            alloc[:, :, j] = a
            load = x + a
        if delta <= 1e-9:
            break
    return alloc


def _round(fa: np.ndarray, hj: np.ndarray, nn: np.ndarray) -> np.ndarray:
    """Integer allocations from continuous ones (N, L, J, G): each expert's floors, and its
    leftover tokens one each to its holders of largest fractional part (fractions compared at
    1e-6, ties smaller GPU id)."""
    fl = np.floor(fa + 1e-9)
    frac = np.where(hj, np.round(fa - fl, 6), -1.0)
    rem = nn - fl.sum(axis=-1).astype(np.int64)  # (N, L, J)
    order = np.argsort(-frac, axis=-1, kind="stable")  # largest fraction first, ties smaller id
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(fa.shape[-1])[None, None, None, :], axis=-1)
    return fl.astype(np.int64) + (hj & (rank < rem[..., None]))


def split_tokens(counts: np.ndarray, hold: np.ndarray, passes: int = DEFAULT_PASSES) -> np.ndarray:
    """Tokens each GPU computes of each (layer, expert) per batch: ``counts`` (..., L, E)
    integer tokens per batch, ``hold`` (L, E, G) bool (every expert held by at least one GPU);
    returns (..., L, E, G) int64 summing to ``counts`` over G, nonzero only on holders. Without
    replicated experts it is ``counts`` on the one holder (the equal share); deterministic (see
    the module doc for the order and the tie rules)."""
    counts = np.asarray(counts)
    hold = np.asarray(hold, dtype=bool)
    if hold.ndim != 3 or counts.shape[-2:] != hold.shape[:2]:
        raise ConfigError(f"split_tokens: counts {counts.shape} do not match holders {hold.shape} "
                          f"(L, E, G)")
    if passes < 1:
        raise ConfigError(f"split_tokens: passes must be >= 1, got {passes}")
    nrep = hold.sum(axis=-1)  # (L, E)
    if (nrep < 1).any():
        l, e = np.argwhere(nrep < 1)[0]
        raise ConfigError(f"split_tokens: layer {l} expert {e} has no GPU")
    c = counts.astype(np.int64, copy=False)
    if c.size and (not np.array_equal(c, counts) or c.min() < 0):
        raise ConfigError("split_tokens: counts must be nonnegative integers")
    L, E, G = hold.shape
    lead = counts.shape[:-2]
    c = c.reshape(-1, L, E)  # (N, L, E)
    N = c.shape[0]
    out = c[..., None] * (hold & (nrep == 1)[..., None])  # (N, L, E, G) single holders
    rep = nrep > 1
    if not rep.any():
        return out.reshape(*lead, L, E, G)
    J = int(rep.sum(axis=1).max())
    rep_e = np.zeros((L, J), dtype=np.int64)
    rep_ok = np.zeros((L, J), dtype=bool)
    for l in range(L):
        es = np.flatnonzero(rep[l])
        rep_e[l, :len(es)], rep_ok[l, :len(es)] = es, True
    rc = np.take_along_axis(c, np.broadcast_to(rep_e, (N, L, J)), axis=2) * rep_ok  # (N, L, J)
    order = np.argsort(-rc, axis=2, kind="stable")  # most tokens first, ties smaller expert id
    ee = np.take_along_axis(np.broadcast_to(rep_e, (N, L, J)), order, axis=2)  # (N, L, J)
    ok = np.take_along_axis(np.broadcast_to(rep_ok, (N, L, J)), order, axis=2)
    nn = np.take_along_axis(rc, order, axis=2)
    hj = hold[np.arange(L)[None, :, None], ee] & ok[..., None]  # (N, L, J, G)
    load = out.sum(axis=2)  # (N, L, G)
    alloc = np.zeros((N, L, J, G), dtype=np.int64)
    M = N * L
    hjm = [hj[:, :, j].reshape(M, G) for j in range(J)]
    nnm = [nn[:, :, j].reshape(M) for j in range(J)]

    def integer_passes(count: int, alloc: np.ndarray, load: np.ndarray) -> np.ndarray:
        for _ in range(count):
            moved = False
            for j in range(J):
                x = load - alloc[:, :, j]
                a = water_fill(x.reshape(M, G), hjm[j], nnm[j]).reshape(N, L, G)
                if np.array_equal(a, alloc[:, :, j]):
                    continue
                moved = True
                alloc[:, :, j] = a
                load = x + a
            if not moved:
                break
        return alloc

    alloc = integer_passes(1, alloc, load)  # the greedy (from zero: every expert moves)
    if passes > 1:
        fa = _refine(alloc.astype(np.float64), load.astype(np.float64) + alloc.sum(axis=2),
                     hjm, nnm, passes - 1, N, L, G)
        alloc = _round(fa, hj, nn)
        alloc = integer_passes(passes - 1, alloc, load + alloc.sum(axis=2))
    n_i, l_i, j_i = np.nonzero(ok)
    out[n_i, l_i, ee[n_i, l_i, j_i]] = alloc[n_i, l_i, j_i]
    return out.reshape(*lead, L, E, G)
