"""Tokens per cache key of an iteration's batch, counted from the pool's prefix counts: pure
numpy over the plan (``pool_keys``), the requests (``req``) and the prefix counts, no state.

:class:`sim.serving.walk.LayerWalk` builds the prefix counts once, when due (:class:`PoolPrefix`:
:func:`pool_prefix_counts` once counting without them has cost as much, or when the walk loads
its kernels), and calls :func:`batch_counts` every iteration, with them or, until then, without;
the counts are the same integers :func:`sim.world.traffic.count_tokens` counts from the tokens'
rows (tests/sim/serving/test_fast_path.py, test_lazy_prefix.py).

A request's tokens this iteration are a range of its pool entry's rows, wrapping around the
entry (:func:`entry_range`): their tokens per key are a difference of two prefix-count rows,
plus whole laps of the entry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.serving.plan import ClusterPlan
from sim.serving.state import Requests
from sim.world.traffic import count_tokens, gpu_traffic

#: the largest pool (rows x keys) whose prefix counts :class:`sim.serving.walk.LayerWalk` keeps
#: (int32: 128 MiB)
PREFIX_MAX_ENTRIES = 1 << 25
#: the pool's prefix counts (:class:`PoolPrefix`; (N+1) x L*E int32 entries: 64 MiB for the
#: Azure preset's pool, 0.05 s to build, 0.4 s at times where the kernel compacts memory for
#: huge pages) are built once counting each token's keys has cost this fraction of their
#: entries (rent, then buy), or when the walk loads its kernels
PREFIX_RENT = 1.0
#: pool rows per block of :func:`pool_prefix_counts` (512 rows of the bench's 256 keys: 512 KiB)
_PREFIX_BLOCK = 512


def pool_prefix_counts(pool_keys: np.ndarray, num_keys: int, max_entries: int = PREFIX_MAX_ENTRIES
                       ) -> np.ndarray | None:
    """(N+1, num_keys) int32: row ``i`` counts each key over pool rows ``0..i-1``; None when it
    would exceed ``max_entries`` entries.

    Built in blocks of :data:`_PREFIX_BLOCK` rows that stay in cache, written once: a block's
    rows' own counts (a bincount; a row may hold a key twice), the row before the block added
    to its first, then the running sum down the block (:func:`_running_sum`). numpy's cumsum
    down the rows walks the array column by column, about three times slower. Integers: exact
    in any order."""
    N = len(pool_keys)
    if (N + 1) * num_keys > max_entries:
        return None
    out = np.empty((N + 1, num_keys), dtype=np.int32)
    out[0] = 0
    width = pool_keys.shape[1] if pool_keys.ndim == 2 else 1
    B = _PREFIX_BLOCK
    base = (np.arange(B, dtype=np.intp) * num_keys)[:, None]  # each row's first flat index
    for a in range(0, N, B):  # output rows a + 1 .. b count pool rows up to a .. b - 1
        b = min(N, a + B)
        n = b - a
        idx = pool_keys[a:b].astype(np.intp).reshape(n, width)
        idx += base[:n]
        blk = out[a + 1:b + 1]
        blk.reshape(-1)[:] = np.bincount(idx.ravel(), minlength=n * num_keys)
        blk[0] += out[a]
        _running_sum(blk)
    return out


class PoolPrefix:
    """The pool's prefix counts (:func:`pool_prefix_counts`) as :class:`sim.serving.walk.LayerWalk`
    holds them: :attr:`counts` None until due. Each iteration counted key by key (T tokens, L*K
    keys each: :meth:`charge`) adds to what counting without them has cost; they are built once
    that reaches :data:`PREFIX_RENT` of their (N+1) x L*E entries, or at :meth:`build` (the walk
    loads its kernels). A short run never builds them; the counts are the same integers either
    way (tests/sim/serving/test_lazy_prefix.py)."""

    def __init__(self, pool_keys: np.ndarray, num_keys: int, on: bool = True) -> None:
        self.pool_keys, self.num_keys = pool_keys, num_keys
        self.counts: np.ndarray | None = None
        #: the entries counted key by key at which they are due (None: built, or never)
        self.rent: float | None = PREFIX_RENT * (len(pool_keys) + 1) * num_keys if on else None
        self.counted = 0  # entries counted key by key so far
        self.width = pool_keys[:1].size  # (L*K: one entry a token and layer-slot)

    def charge(self, alloc: np.ndarray) -> None:
        """An iteration of ``alloc`` tokens per request is about to be counted: builds the
        counts first where that makes them due."""
        if self.rent is not None:
            self.counted += int(alloc.sum()) * self.width
            if self.counted >= self.rent:
                self.build()

    def build(self) -> None:
        """Builds them now, unless built or off (too large to keep: None throughout)."""
        if self.rent is not None:
            self.counts = pool_prefix_counts(self.pool_keys, self.num_keys, PREFIX_MAX_ENTRIES)
            self.rent = None


def _running_sum(x: np.ndarray, group: int = 16) -> None:
    """In place: each row of ``x`` (n, C) becomes the sum of the rows up to it, by whole rows
    (vector adds): rows in groups of ``group``, a running sum inside every group at once
    (``group - 1`` adds of one row of each group); the groups' last rows (their totals) then
    summed down as log2(groups) shifted adds (each adds the one ``s`` groups before it,
    s = 1, 2, 4, ...; the overlapping in-place add reads the old rows: numpy buffers it), each
    group's other rows given the total of the groups before it; the rows after the last whole
    group one at a time. Integers: exact in any order."""
    if not x.flags.c_contiguous:  # (the groups are a reshape of it: a view only then)
        raise ValueError("_running_sum needs a C-contiguous array")
    n = len(x)
    m = n // group
    if m:
        y = x[:m * group].reshape(m, group, -1)
        for j in range(1, group):
            y[:, j] += y[:, j - 1]
        totals = y[:, group - 1]
        s = 1
        while s < m:
            totals[s:] += totals[:-s]
            s *= 2
        y[1:, :group - 1] += totals[:-1, None, :]
    for i in range(max(m * group, 1), n):
        x[i] += x[i - 1]


def entry_range(n: int, lo: int, hi: int) -> tuple[int, int, int]:
    """Rows ``lo .. hi - 1`` of a pool entry of ``n`` rows, counted around the entry (wrapping):
    ``(r0, r1, laps)`` such that their tokens per key are, with ``C`` the prefix counts and ``o``
    the entry's first pool row, ``C[o + r1] - C[o + r0] + laps * (C[o + n] - C[o])``."""
    lap0, r0 = divmod(lo, n)
    lap1, r1 = divmod(hi, n)
    return r0, r1, lap1 - lap0


def batch_counts(plan: ClusterPlan, req: Requests, prefix: np.ndarray | None, batch: np.ndarray,
                 alloc: np.ndarray, shape: Any, G: int, kern: Any = None) -> tuple[np.ndarray, Any]:
    """(L*E,) tokens per key of the batch, and what the all-to-all needs of them: as
    :func:`sim.world.traffic.count_tokens` counts them from the tokens' rows (``prefix`` None), or from
    the prefix counts (the same integers: tests/sim/serving/test_fast_path.py). ``kern``:
    :func:`source_counts` compiled (:func:`sim.serving.compiled_walk.prefix_sources`)."""
    if prefix is None:
        return count_tokens(plan, None, G, rows=shape.rows)
    if G // plan.tensor_parallel <= 1 or plan.moe_tp or shape.tokens == 0:
        return key_counts(plan, req, prefix, batch, alloc), None
    sc = source_counts(plan, req, prefix, batch, alloc, G, kern=kern)
    if plan.pool_dups is not None and plan.single_owner:  # once to each GPU (sim/world/network.py)
        width = plan.L * G + 1
        if plan.dup_prefix is None:
            plan.dup_prefix = pool_prefix_counts(plan.pool_dups, width, max(
                PREFIX_MAX_ENTRIES, len(prefix) * width))
        dups = source_counts(plan, req, plan.dup_prefix, batch, alloc, G, plan.pool_dups, kern)
        return sc.sum(axis=0), gpu_traffic(plan, sc, dups=dups)
    return sc.sum(axis=0), sc


def key_counts(plan: ClusterPlan, req: Requests, prefix: np.ndarray, batch: np.ndarray,
               alloc: np.ndarray) -> np.ndarray:
    """(L*E,) int64: tokens of the batch per key. Every request's first token this iteration
    is counted from its pool row; the rest of a chunk is a range of its pool entry's rows
    (wrapping around the entry): a difference of two prefix-count rows, plus whole laps."""
    LE, C = plan.L * plan.E, prefix
    off, ln = req.offset[batch], req.length[batch]
    s0 = req.ctx[batch] % ln  # (B,) each request's first row inside its entry
    counts = np.bincount(plan.pool_keys[off + s0].ravel(), minlength=LE)
    big = np.flatnonzero(alloc > 1)
    if len(big):
        for o, n, x, a in zip(off[big].tolist(), ln[big].tolist(), s0[big].tolist(),
                              alloc[big].tolist()):
            r0, r1, laps = entry_range(n, x + 1, x + a)  # rows x + 1 .. x + a - 1
            counts += C[o + r1]
            counts -= C[o + r0]
            if laps:
                counts += laps * (C[o + n].astype(np.int64) - C[o])
    return counts


def source_counts(plan: ClusterPlan, req: Requests, prefix: np.ndarray, batch: np.ndarray,
                  alloc: np.ndarray, G: int, pool_keys: np.ndarray | None = None, kern: Any = None
                  ) -> np.ndarray:
    """(G, L*E) int64 tokens per source GPU and key (:func:`sim.world.traffic.source_counts`: the
    batch's T tokens in contiguous even blocks over the G GPUs), from the prefix counts: a
    one-token request's keys from its pool row, a chunk cut at the blocks' bounds into ranges
    of its pool entry's rows (wrapping around the entry). ``pool_keys``: other keys per pool
    row than the plan's (``prefix`` their prefix counts; the keys' range its width). ``kern``:
    the same integers, counted by :func:`sim.serving.compiled_walk.prefix_sources`."""
    C = prefix
    LE = C.shape[1]
    if pool_keys is None:
        pool_keys = plan.pool_keys
    if kern is not None:
        ln = req.length[batch]
        return kern.prefix_sources(pool_keys, C, req.offset[batch], ln, req.ctx[batch] % ln,
                                   alloc, G)
    T = int(alloc.sum())
    off, ln = req.offset[batch], req.length[batch]
    s0 = req.ctx[batch] % ln  # (B,) each request's first row inside its entry
    first = np.cumsum(alloc) - alloc  # (B,) each request's first token in the batch
    one = alloc == 1
    src1 = (first[one] * G) // T  # traffic.token_sources of the one-token requests
    idx = np.take(pool_keys, off[one] + s0[one], axis=0).astype(np.intp)  # (B1, L*K)
    idx += (src1 * LE)[:, None]
    per = np.zeros(G * LE, dtype=np.int64)
    np.add.at(per, idx.ravel(), 1)  # (a bincount: with intp indices the faster of the two)
    per = per.reshape(G, LE)
    big = np.flatnonzero(~one)
    if len(big):
        # each chunk cut at the blocks' bounds: per piece, its GPU and the prefix-count rows
        # it adds (+1), subtracts (-1) and, for whole laps of its entry, (end - start) * laps;
        # summed at once (integers: exact in any order)
        bounds = ((np.arange(G + 1) * T + G - 1) // G).tolist()  # GPU g: tokens [b_g, b_g+1)
        gs: list[int] = []
        rows: list[int] = []
        coef: list[int] = []
        for f, o, n, x, a in zip(first[big].tolist(), off[big].tolist(), ln[big].tolist(),
                                 s0[big].tolist(), alloc[big].tolist()):
            lo = f
            g = (f * G) // T
            while lo < f + a:
                hi = min(f + a, bounds[g + 1])
                if hi > lo:  # rows x + (lo - f) .. x + (hi - f) - 1 of the entry
                    r0, r1, laps = entry_range(n, x + lo - f, x + hi - f)
                    gs += (g, g)
                    rows += (o + r1, o + r0)
                    coef += (1, -1)
                    if laps:
                        gs += (g, g)
                        rows += (o + n, o)
                        coef += (laps, -laps)
                    lo = hi
                g += 1
        # as float64 (BLAS): integers below 2**53 (counts of the pool's rows), summed exactly
        M = np.zeros((G, len(rows)))
        M[gs, np.arange(len(rows))] = coef
        per += (M @ C[rows]).astype(np.int64)
    return per
