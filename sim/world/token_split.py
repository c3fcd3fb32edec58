"""Per-batch split of a replicated expert's tokens across its replicas: the one function the
simulator (:mod:`sim.serving.layer_costs`, multi-owner placements), ``moesim placement`` and the network
model call to know how many tokens of each (layer, expert) each GPU computes in a batch.

Serving engines with redundant experts (DeepSeek's EPLB in SGLang / vLLM) send each token of a
replicated expert to the replica on the least-loaded GPU of that batch, instead of sharing the
expert's tokens equally. :func:`split_tokens` does this exactly, in integers, for all batches and
layers at once:

1. an expert held by one GPU gives it all its tokens (the equal share, unchanged);
2. the replicated experts of a layer, in descending order of their tokens in the batch (ties:
   smaller expert id), each hand their tokens one at a time to the least-loaded GPU among their
   replicas (computed in closed form as an integer water-fill: the holders below the level
   ``h`` are raised to ``h``, the ``r`` tokens left over go one each to the holders at ``h``
   first in the tie order);
3. refinement (``passes > 1``), only for the (batch, layer)s whose busiest GPU after step 2 is
   above the bound no split can beat (the mean rounded up, and the busiest GPU's tokens of
   experts it alone holds): from the greedy, up to ``passes - 1`` passes of continuous block
   coordinate descent (each replicated expert, in the same order, takes its tokens back and
   water-fills them, as real numbers, against the loads the others leave; stop once nothing
   moves by 1e-9). Each step lowers the sum of squared GPU loads, a convex objective whose
   constraints are per expert, so the loads converge to the balanced flow that chains of
   replicas allow (GPU a to b through one shared expert, b to c through another). Then
   integers: each expert's floors, its leftover tokens one each to its holders of largest
   fractional part (fractions compared at 1e-6, ties smaller GPU id), and up to ``passes - 1``
   integer passes of step 2's rule (stopping once nothing moves), which can only lower the sum
   of squares further. Continuous first, because integer steps alone stall one token away
   along a chain (tests/sim/world/test_token_split.py).

Tie order: with ``u = sum_e (e + 1) * tokens[e]`` of the (batch, layer), the GPUs in cyclic
order from GPU ``u mod G``, upward when ``(u // G)`` is even, downward when odd; so the order
turns with the routing and either GPU of a pair comes first about half the time (with a fixed
order, the lower GPU of each replica pair takes every tied decode token over a run).

``passes=1`` is the serving engine's greedy; the default refines.

Shape legend: N batches (any leading shape), L layers, E experts, G GPUs, J replicated experts of
a layer (padded to the largest layer).
"""

from __future__ import annotations

import numpy as np

from sim.common.errors import ConfigError

DEFAULT_PASSES = 8
#: replicas of this many GPUs or more run the passes compiled (sim/world/compiled.py)
COMPILED_MIN_GPUS = 16
_TOL = 1e-9  # continuous refinement stops once no allocation moves more than this
_BIG = np.int64(1) << 40  # a non-holder's load in the water-fill (never below the level)
_K = np.arange(1, 1025, dtype=np.int64)  # 1..G (G <= 1024)


def _tie_rank(G: int, u: np.ndarray) -> np.ndarray:
    """(M, G) position of each GPU in the tie order of each row: cyclic from GPU ``u mod G``,
    upward when ``u // G`` is even, else downward (``u`` (M,) from the routing)."""
    step = 1 - 2 * ((u // G) % 2)  # +1 or -1
    return ((np.arange(G)[None, :] - (u % G)[:, None]) * step[:, None]) % G


def water_fill(x: np.ndarray, hold: np.ndarray, n: np.ndarray,
               start: np.ndarray | None = None) -> np.ndarray:
    """Integer water-fill: ``n`` (M,) tokens over the GPUs ``hold`` (M, G) with loads ``x``
    (M, G), each token to the least-loaded holder (ties: the tie order of ``start`` (M,), see
    the module doc; default smaller GPU id first); returns (M, G) int64 tokens per GPU (0 off the
    holders). Rows with no holder must have ``n == 0``."""
    order = None if start is None else np.argsort(_tie_rank(x.shape[-1], start), axis=-1)
    return _water_fill(x.astype(np.int64, copy=False), hold, n.astype(np.int64, copy=False), order)


def compiled_kernels(G: int, compiled: bool | None = None):
    """:mod:`sim.world.compiled` (imported here, lazily: numba) where a replica of ``G`` GPUs
    uses it (``compiled`` None: from :data:`COMPILED_MIN_GPUS` GPUs; True / False: forced),
    else None (also without numba: the numpy references run)."""
    if not (G >= COMPILED_MIN_GPUS if compiled is None else compiled):
        return None
    try:
        from sim.world import compiled as kernels
    except ImportError:
        return None
    return kernels


def _water_fill(x: np.ndarray, hold: np.ndarray, n: np.ndarray, order: np.ndarray | None
                ) -> np.ndarray:
    """:func:`water_fill` with the tie order given as ``order`` (M, G), the GPUs first to last
    (None: by id)."""
    M, G = x.shape
    rows = np.arange(M)
    srt = np.sort(np.where(hold, x, _BIG), axis=-1)  # (M, G) holders' loads ascending
    S = np.cumsum(srt, axis=-1)
    # filling the k lowest up to the k-th costs k * x_(k) - S_k tokens (nondecreasing in k)
    kstar = ((_K[:G] * srt - S <= n[:, None]) & (srt < _BIG)).sum(axis=-1)  # (M,) GPUs that gain
    kk = np.maximum(kstar, 1)
    Sk = S[rows, kk - 1]
    h = (n + Sk) // kk  # (M,) the level; the holders at or below it are exactly those that gain
    rem = n + Sk - h * kk
    inc = hold & (x <= h[:, None]) & (kstar > 0)[:, None]
    if order is None:
        rank = np.cumsum(inc, axis=-1)  # 1-based rank in GPU order among the gaining holders
    else:
        rank = np.empty((M, G), dtype=np.int64)
        rank[rows[:, None], order] = np.cumsum(inc[rows[:, None], order], axis=-1)
    return np.where(inc, h[:, None] - x, 0) + (inc & (rank <= rem[:, None]))


def _water_fill_float(x: np.ndarray, hold: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Continuous water-fill: ``n`` (M,) over the holders ``hold`` (M, G) of loads ``x`` (M, G),
    raising the lowest to a common level; returns (M, G) float allocations."""
    M, G = x.shape
    srt = np.sort(np.where(hold, x, np.inf), axis=-1)
    fin = np.isfinite(srt)
    S = np.cumsum(np.where(fin, srt, 0.0), axis=-1)
    kstar = ((_K[:G] * srt - S <= n[:, None]) & fin).sum(axis=-1)
    kk = np.maximum(kstar, 1)
    h = (n + S[np.arange(M), kk - 1]) / kk
    return np.where(hold & (kstar > 0)[:, None], np.maximum(h[:, None] - x, 0.0), 0.0)


def _integer_passes(count: int, alloc: np.ndarray, load: np.ndarray, hj: np.ndarray,
                    nn: np.ndarray, order: np.ndarray, skip_unmoved: bool) -> np.ndarray:
    """Step 2's rule, ``count`` passes over the J replicated experts of each row, in place on
    ``alloc`` (M, J, G) with GPU loads ``load`` (M, G) (which include ``alloc``)."""
    for _ in range(count):
        moved = False
        for j in range(hj.shape[1]):
            x = load - alloc[:, j]
            a = _water_fill(x, hj[:, j], nn[:, j], order)
            if skip_unmoved and np.array_equal(a, alloc[:, j]):
                continue
            moved = True
            alloc[:, j] = a
            load = x + a
        if not moved:
            break
    return alloc


def _refine(alloc: np.ndarray, load: np.ndarray, hj: np.ndarray, nn: np.ndarray,
            passes: int) -> np.ndarray:
    """Continuous block coordinate descent from ``alloc`` (M, J, G) with GPU loads ``load``
    (M, G): each replicated expert in turn water-fills its tokens against the others', for
    ``passes`` passes or until no allocation moves by more than 1e-9."""
    for _ in range(passes):
        delta = 0.0
        for j in range(hj.shape[1]):
            x = load - alloc[:, j]
            a = _water_fill_float(x, hj[:, j], nn[:, j].astype(np.float64))
            delta = max(delta, float(np.abs(a - alloc[:, j]).max(initial=0.0)))
            alloc[:, j] = a
            load = x + a
        if delta <= _TOL:
            break
    return alloc


def _round(fa: np.ndarray, hj: np.ndarray, nn: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Integer allocations from continuous ones (M, J, G): each expert's floors, and its
    leftover tokens one each to its holders of largest fractional part (fractions compared at
    1e-6, ties in the tie order)."""
    G = fa.shape[-1]
    fl = np.floor(fa + 1e-9)
    q = np.where(hj, np.rint((fa - fl) * 1e6).astype(np.int64), -1)  # (M, J, G)
    key = -q * G + _tie_rank(G, start)[:, None, :]
    order = np.argsort(key, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(G), order.shape), axis=-1)
    rem = nn - fl.sum(axis=-1).astype(np.int64)  # (M, J)
    return fl.astype(np.int64) + (hj & (rank < rem[..., None]))


def replicated_ids(rep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, J) each layer's replicated experts ``rep`` (L, E) bool ascending, padded, and (L, J)
    which are real (not padding); J the most any layer has."""
    J = int(rep.sum(axis=1).max())
    rep_e = np.argsort(~rep, axis=1, kind="stable")[:, :J]  # (L, J) replicated ids ascending
    return rep_e, np.take_along_axis(rep, rep_e, axis=1)  # then padding


def split_replicated(c: np.ndarray, rep_e: np.ndarray, rep_ok: np.ndarray, base: np.ndarray,
                     passes: int, kern, hold: np.ndarray | None, holders: tuple | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 2 and 3 of :func:`split_tokens` for ``c`` (N, L, E) int64 tokens per batch, the
    replicated experts of :func:`replicated_ids`, ``base`` (N * L, G) int64 the single holders'
    tokens per GPU: per row (batch, layer) its replicated experts with tokens, most first,
    (M, J) ids ``ee`` and whether real ``ok``, and (M, J, G) int64 their tokens per GPU.
    Without ``kern`` (numpy) the holders come from ``hold`` (L, E, G); with it from
    ``holders`` = (gpus (L, E, H), nrep (L, E)) of :func:`sim.world.compiled.single_holders`
    (:func:`sim.world.compiled_pairs.split_slots` runs these steps over holder slots in one
    compiled call, the same integers)."""
    N, L, E = c.shape
    G = base.shape[1]
    # rows: one per (batch, layer), M = N * L
    M = N * L
    cr = c.reshape(M, E)
    layer = np.tile(np.arange(L), N)  # (M,)
    start = cr @ np.arange(1, E + 1, dtype=np.int64)  # (M,) u: the tie order (module doc)
    re, rok = rep_e[layer], rep_ok[layer]  # (M, J)
    rc = np.take_along_axis(cr, re, axis=1) * rok
    order = np.argsort(-rc, axis=1, kind="stable")  # most tokens first, ties smaller expert id
    ee = np.take_along_axis(re, order, axis=1)  # (M, J)
    ok = np.take_along_axis(rok, order, axis=1)
    nn = np.take_along_axis(rc, order, axis=1)
    Jn = int((nn > 0).sum(axis=1).max(initial=0))  # experts with tokens come first; the rest get 0
    ee, ok, nn = ee[:, :Jn], ok[:, :Jn], nn[:, :Jn]
    J = Jn
    if kern is None:
        hj = hold[layer[:, None], ee] & ok[..., None]  # (M, J, G)
        tie = np.argsort(_tie_rank(G, start), axis=-1)  # (M, G) GPUs in tie order

        def int_passes(count, alloc, load, r, skip_unmoved):
            rr = slice(None) if r is None else r
            return _integer_passes(count, alloc, load, hj[rr], nn[rr], tie[rr], skip_unmoved)

        def loads(b, alloc, r):
            return b + alloc.sum(axis=1)

        def refine(alloc, load, r):
            return _refine(alloc, load, hj[r], nn[r], passes - 1)

        def round_(fa, r):
            return _round(fa, hj[r], nn[r], start[r])
    else:  # compiled, over each expert's holders only (the same integers and floats)
        gpus, nrep = holders
        tie = _tie_rank(G, start)  # (M, G) each GPU's place in the tie order
        hl, nh = kern.holders_of(gpus, nrep, layer, np.ascontiguousarray(ee),
                                  np.ascontiguousarray(ok), J)

        def int_passes(count, alloc, load, r, skip_unmoved):
            rr = slice(None) if r is None else r
            return kern.integer_passes(count, alloc, load, hl[rr], nh[rr], nn[rr],
                                              tie[rr], skip_unmoved)

        def refine(alloc, load, r):
            return kern.refine(alloc, load, hl[r], nh[r], nn[r], passes - 1)

        def round_(fa, r):
            return kern.round_alloc(fa, hl[r], nh[r], nn[r], tie[r])

        def loads(b, alloc, r):
            return b + alloc.sum(axis=1)
    alloc = int_passes(1, np.zeros((M, J, G), dtype=np.int64), base.copy(), None,
                       skip_unmoved=False)  # the greedy
    if passes > 1:
        load = loads(base, alloc, None)
        bound = np.maximum(-(-cr.sum(axis=1) // base.shape[1]), base.max(axis=1))  # none better
        r = np.flatnonzero(load.max(axis=1) > bound)
        if len(r):
            fa = refine(alloc[r].astype(np.float64), load[r].astype(np.float64), r)
            ar = round_(fa, r)
            alloc[r] = int_passes(passes - 1, ar, loads(base[r], ar, r), r, skip_unmoved=True)
    return ee, ok, alloc


def split_tokens(counts: np.ndarray, hold: np.ndarray, passes: int = DEFAULT_PASSES,
                 compiled: bool | None = None) -> np.ndarray:
    """Tokens each GPU computes of each (layer, expert) per batch: ``counts`` (..., L, E)
    integer tokens per batch, ``hold`` (L, E, G) bool (every expert held by at least one GPU);
    returns (..., L, E, G) int64 summing to ``counts`` over G, nonzero only on holders. Without
    replicated experts it is ``counts`` on the one holder (the equal share); deterministic, and
    each (batch, layer) independent of the others (see the module doc for the order and the
    tie rule). ``compiled``: run the passes compiled (:func:`compiled_kernels`; the same bytes)."""
    counts = np.asarray(counts)
    hold = np.asarray(hold, dtype=bool)
    if hold.ndim != 3 or counts.shape[-2:] != hold.shape[:2]:
        raise ConfigError(f"split_tokens: counts {counts.shape} do not match holders {hold.shape} "
                          f"(L, E, G)")
    if passes < 1:
        raise ConfigError(f"split_tokens: passes must be >= 1, got {passes}")
    if hold.shape[2] > len(_K):
        raise ConfigError(f"split_tokens: at most {len(_K)} GPUs, got {hold.shape[2]}")
    L, E, G = hold.shape
    c = counts.astype(np.int64, copy=False)
    kern = compiled_kernels(G, compiled)
    if kern is None:
        nrep = hold.sum(axis=-1)  # (L, E)
    else:  # with the single holders' tokens and their per-GPU sums, in one pass
        nrep, gpus, out, base_k = kern.single_holders(np.ascontiguousarray(c.reshape(-1, L, E)), hold)
    if (nrep < 1).any():
        l, e = np.argwhere(nrep < 1)[0]
        raise ConfigError(f"split_tokens: layer {l} expert {e} has no GPU")
    if c.size and (not np.array_equal(c, counts) or c.min() < 0):
        raise ConfigError("split_tokens: counts must be nonnegative integers")
    lead = counts.shape[:-2]
    c = c.reshape(-1, L, E)  # (N, L, E)
    N = c.shape[0]
    if kern is None:
        out = c[..., None] * (hold & (nrep == 1)[..., None])  # (N, L, E, G) single holders
    rep = nrep > 1
    if not rep.any():
        return out.reshape(*lead, L, E, G)
    rep_e, rep_ok = replicated_ids(rep)
    M = N * L
    base = base_k if kern is not None else out.reshape(M, E, G).sum(axis=1)  # (M, G)
    ee, ok, alloc = split_replicated(c, rep_e, rep_ok, base, passes, kern, hold,
                                     None if kern is None else (gpus, nrep))
    m_i, j_i = np.nonzero(ok)
    out.reshape(M, E, G)[m_i, ee[m_i, j_i]] = alloc[m_i, j_i]
    return out.reshape(*lead, L, E, G)
