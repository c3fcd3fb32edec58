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
3. ``passes - 1`` refinement passes (stopping early once nothing moves): each replicated
   expert, in the same order, takes its tokens back and water-fills them again against the
   loads the others leave. Each step can only lower the sum of squared GPU loads (block
   coordinate descent on a convex objective with per-expert constraints), so the loads move
   toward the balanced flow that chains of replicas allow (GPU a to b through one shared expert,
   b to c through another).

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
    for p in range(passes):
        moved = False
        for j in range(J):
            x = load - alloc[:, :, j]
            a = water_fill(x.reshape(M, G), hj[:, :, j].reshape(M, G),
                           nn[:, :, j].reshape(M)).reshape(N, L, G)
            if p and np.array_equal(a, alloc[:, :, j]):
                continue
            moved = True
            alloc[:, :, j] = a
            load = x + a
        if not moved:
            break
    n_i, l_i, j_i = np.nonzero(ok)
    out[n_i, l_i, ee[n_i, l_i, j_i]] = alloc[n_i, l_i, j_i]
    return out.reshape(*lead, L, E, G)
