"""LRU in arrays: the caches of a replica's GPUs as recency stamps, served a whole iteration at once.

The same rule as :class:`sim.policies.cache.lru.LRUCache` (it is a subclass and the general
protocol still works), held differently: a :class:`StampStore` keeps, per GPU of a replica and per
key the GPU holds (its *home* keys, a local index), the recency stamp of a resident key (a counter
that grows with every use; ``-1``: not resident). :func:`serve_lru_iteration` then serves every
GPU's steps of one iteration with numpy, exactly as ``access_steps`` would, with no Python work
per key.

Why this is exact. LRU is a stack algorithm: while no step needs more keys than the cache has
slots, the resident keys are always the ``min(capacity, keys used so far)`` most recently used
ones (victims are taken from the least recent end, and a step's keys are never victims of their
own step). So a key of step ``i`` hits iff the keys used more recently than its last use number
fewer than ``capacity``: the resident keys more recent than it at the start of the iteration,
plus the keys of the iteration's earlier steps, minus those counted twice (keys of earlier steps
that were already more recent than it). A served step stamps its keys in increasing id order
(the order ``LRUCache`` leaves them in), the misses of a GPU make ``max(0, resident + misses -
capacity)`` evictions, and the evicted keys are the least recent ones. A step needing more keys
than the slots (keys stream through) is not in this form: the iteration then goes through the
general path.

Each cache object is in one of two modes (:class:`sim.serving.step_arrays.ArrayMode`, shared
with the FIFO, LIFO and LFU arrays): arrays (the store's row is the state) or objects (the
``resident`` set and the ``_order`` OrderedDict of :class:`OrderedCache` are). Touching either
attribute turns the cache to objects; :func:`serve_lru_iteration` turns it back. ``counts`` is
kept in both. tests/sim/serving/test_fast_path.py holds both paths to byte-identical ``metrics.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.policies.base import CachePolicy
from sim.policies.cache.keep_predicted import KeepPredictedCache
from sim.policies.cache.lru import LRUCache
from sim.serving.row_store import RowStore
from sim.serving.static_arrays import StampedStatic, StaticStore
from sim.serving.step_arrays import (
    ArrayMode,
    CountedLFU,
    FifoStore,
    LfuStore,
    LifoStore,
    OrderedArrayMode,
    StampedFIFO,
    StampedLIFO,
)

_BIG = 1 << 40  # row offset when a replica's rows of stamps are searched as one sorted array


class StampStore(RowStore):
    """Recency stamps of a replica's G GPU caches over their home keys.

    ``homes[g]``: the keys GPU ``g`` holds (increasing); ``loc`` (G, num_keys): the local index of
    a key on a GPU (-1: not held there); ``S`` (G, H) the stamps (H: the most keys a GPU holds;
    padding stays -1); ``clock`` the next stamp (one counter for the replica: stamps are only
    compared within a GPU). Per GPU: ``nres`` resident keys, ``cap`` slots, and the accesses,
    misses and evictions not yet added to the cache's ``counts``."""

    def __init__(self, home_masks: list[np.ndarray], L: int) -> None:
        G = len(home_masks)
        self.G, self.L = G, L
        self.homes = [np.flatnonzero(m) for m in home_masks]
        H = max((len(h) for h in self.homes), default=0)
        self.H = H
        self.loc = np.full((G, len(home_masks[0]) if G else 0), -1, dtype=np.int64)
        for g, h in enumerate(self.homes):
            self.loc[g, h] = np.arange(len(h))
        self.S = np.full((G, H), -1, dtype=np.int64)
        self.clock = 0
        self.nres = np.zeros(G, dtype=np.int64)
        self.cap = np.zeros(G, dtype=np.int64)
        self.tally = np.zeros((3, G), dtype=np.int64)  # accesses, misses, evictions not yet counted
        #: the last iteration's distinct keys per GPU, and its misses on keys resident at its
        #: start (each an eviction of a key the iteration used later): the walk's why-tallies
        self.why = np.zeros((2, G), dtype=np.int64)
        self.caches: list[Any] = [None] * G
        self.objects: set[int] = set()  # rows whose cache is in objects mode
        #: the compiled path's per-GPU residents in stamp order (compiled_walk.lru_serve)
        self.order: np.ndarray | None = None
        self.order_n: np.ndarray | None = None
        # (key, GPU) holdings ordered by GPU then key: the order a GPU's steps use its keys
        gk = np.argwhere(self.loc >= 0)  # (P, 2) (GPU, key), GPU-major
        self._all = (gk[:, 0], gk[:, 1])
        self._bind()

    def _bind(self) -> None:
        """The holdings of the GPUs with a cache, and whether any step can need more keys than
        its GPU's slots (else that check is skipped)."""
        pg, pk = self._all
        have = np.array([c is not None for c in self.caches], dtype=bool)
        keep = have[pg] if len(pg) else np.zeros(0, dtype=bool)
        pg, pk = pg[keep], pk[keep]
        self.pair_key = pk
        layer = pk // (self.loc.shape[1] // self.L) if self.L else pk
        step = pg * self.L + layer  # (P,) a GPU's step
        # per holding: GPU, step, layer, flat stamp index, row offset of the sorted stamps, the
        # end of its GPU's row there, and its GPU's slots (one gather serves them all)
        self.pairs = np.stack([pg, step, layer, pg * self.H + self.loc[pg, pk], pg * _BIG,
                               (pg + 1) * self.H, self.cap[pg]])
        most = np.bincount(step, minlength=self.G * self.L).reshape(self.G, self.L)
        self.cap_step = np.repeat(self.cap, self.L)  # (G*L,)
        self.check_steps = bool((most.max(axis=1, initial=0) > self.cap)[have].any())
        self.offs = (np.arange(self.G, dtype=np.int64) * _BIG)[:, None]
        #: serve_lru_iteration's per-access positions when every holding is used (the usual
        #: iteration of a big batch): they depend only on the holdings
        self.full = _positions(pg, step, self.G, self.L, self.cap_step)

    def serve(self, used_flat: np.ndarray, step0: int, kern: Any = None) -> np.ndarray | None:
        """:func:`serve_lru_iteration` (LRU needs no step numbers), compiled with ``kern``."""
        return serve_lru_iteration(self, used_flat, kern)


class StampedLRU(OrderedArrayMode, LRUCache):
    """An :class:`LRUCache` whose state may live in a :class:`StampStore` row (see module doc;
    the two modes are :class:`sim.serving.step_arrays.ArrayMode`'s)."""


class KeepStore(StampStore):
    """eMoE's keep_predicted caches as recency stamps: LRU's state, but a step may not evict a
    pinned (predicted) key, so the iteration is never served at once here (``serve``: None);
    the compiled walk serves it step by step (sim/serving/prefetch_walk.py), the pins read from
    each cache's ``pinned``."""

    def serve(self, used_flat: np.ndarray, step0: int, kern: Any = None) -> np.ndarray | None:
        return None


class StampedKeepPredicted(OrderedArrayMode, KeepPredictedCache):
    """A :class:`KeepPredictedCache` whose recency order may live in a :class:`KeepStore` row
    (its predicted set stays on the object)."""


#: the array forms a cache policy may declare (``CachePolicy.array_form``) -> (the store of a
#: replica's GPUs, the cache class whose state lives in it): LRU's recency stamps, FIFO's and
#: LIFO's load stamps, LFU's counts (sim/serving/step_arrays.py), eMoE's keep_predicted stamps
#: (the compiled walk only) and the static cache's resident set (sim/serving/static_arrays.py)
ARRAY_FORMS: dict[str, tuple[type, type[ArrayMode]]] = {
    "stamps": (StampStore, StampedLRU),
    "fifo_stamps": (FifoStore, StampedFIFO),
    "lifo_stamps": (LifoStore, StampedLIFO),
    "lfu_counts": (LfuStore, CountedLFU),
    "keep_stamps": (KeepStore, StampedKeepPredicted),
    "static_set": (StaticStore, StampedStatic),
}


def array_form(policy: type[CachePolicy]) -> tuple[type, type[ArrayMode]] | None:
    """The (store, cache) classes that serve ``policy`` as arrays, or None: the policy declares no
    array form (a subclass of LRU that changes its rule inherits none)."""
    return ARRAY_FORMS.get(policy.array_form) if policy.array_form is not None else None


#: resident accesses of an iteration up to which the double-counted keys are found pairwise
PAIRWISE_MAX = 384


def serve_lru_iteration(store: StampStore, used_flat: np.ndarray, kern: Any = None
                        ) -> np.ndarray | None:
    """Serve one iteration's steps (step ``l``: the keys of layer ``l`` a GPU holds and the batch
    uses, ``used_flat`` (L*E,) bool) on every GPU of the store with a cache, all at once.

    Returns the misses per (layer, GPU) (L, G) int64, or None (nothing changed) when some step
    needs more keys than its GPU's slots: the caller then takes the general path. ``kern``:
    :mod:`sim.serving.compiled_walk`, whose :func:`~sim.serving.compiled_walk.lru_serve` serves
    the steps one by one (the same decisions and stamps)."""
    if kern is not None:
        return _serve_compiled(store, used_flat, kern)
    G, L, H = store.G, store.L, store.H
    sel = used_flat[store.pair_key]
    if sel.all():  # every holding used: the positions are the store's
        g, gl, layer, fi, off, row_end, cap = store.pairs  # (n,) each, in serving order
        n_g, gstart, start_g, before, over = store.full
    else:
        g, gl, layer, fi, off, row_end, cap = store.pairs[:, sel]
        n_g, gstart, start_g, before, over = _positions(g, gl, G, L, store.cap_step)
    n = len(g)
    if n == 0:
        store.why[:] = 0
        return np.zeros((L, G), dtype=np.int64)
    if store.check_steps and over:
        return None
    if store.objects and not _rows_to_arrays(store):
        return None
    S = store.S
    Sf = S.reshape(-1)
    s = Sf[fi]  # (n,) stamps at the start (-1: not resident)
    # resident keys more recent than the key at the start of the iteration
    newer = row_end - np.searchsorted((np.sort(S, axis=1) + store.offs).reshape(-1), s + off,
                                      "right")
    # the keys used since the key's last use: newer + before - twice, where twice (keys of earlier
    # steps already more recent than it, counted in both) is at most min(newer, before): it
    # decides only where newer < cap, before < cap and newer + before >= cap
    resident = s >= 0
    seen = newer + before
    hit = resident & (seen < cap)
    maybe = np.flatnonzero(resident & (seen >= cap) & (np.maximum(newer, before) < cap))
    if len(maybe):
        res = np.flatnonzero(resident)  # only resident keys can be more recent than a resident one
        sg = start_g[maybe]
        twice = _earlier_newer(res, s[res], start_g[res], layer[res], maybe, s[maybe], sg,
                               sg + before[maybe], layer[maybe])
        hit[maybe] = seen[maybe] - twice < cap[maybe]
    miss = ~hit
    gm = g[miss]
    m_g = np.bincount(gm, minlength=G)
    # stamps: the iteration's keys in serving order (a step's in increasing id) get the next n
    c0 = store.clock
    Sf[fi] = np.arange(c0, c0 + n)
    store.clock = c0 + n
    nres0 = store.nres
    nres = np.minimum(store.cap, nres0 + m_g)
    ev = nres0 + m_g - nres
    store.nres = nres
    if ev.any():
        # the nres most recent keys stay: where a GPU used at least that many this iteration, its
        # last nres accesses (stamps from c0 + gstart + n_g - nres on); else a sorted row's cut
        thr = np.where(ev > 0, c0 + gstart + n_g - nres, -1)
        few = np.flatnonzero((ev > 0) & (n_g < nres))
        if len(few):
            thr[few] = np.sort(S[few], axis=1)[np.arange(len(few)), H - nres[few]]
        S[S < thr[:, None]] = -1
    store.note(n_g, np.bincount(g[resident & miss], minlength=G), m_g, ev)
    return np.bincount(layer[miss] * G + gm, minlength=L * G).reshape(L, G)


def _rows_to_arrays(store: StampStore) -> bool:
    """Every cache in objects mode turned back to the store's rows, in row order; False (the
    iteration then takes the general path) where one cannot be (a resident key off its homes)."""
    for row in sorted(store.objects):
        c = store.caches[row]
        if c is not None and not c.to_arrays():
            return False
    return True


def _serve_compiled(store: StampStore, used_flat: np.ndarray, kern: Any) -> np.ndarray | None:
    """:func:`serve_lru_iteration` by :func:`sim.serving.compiled_walk.lru_serve`."""
    sel = used_flat[store.pair_key]
    if not sel.any():  # (as the reference: no cache is touched)
        store.why[:] = 0
        return np.zeros((store.L, store.G), dtype=np.int64)
    if store.check_steps:  # a step over its GPU's slots goes to the general path
        if _positions(store.pairs[0][sel], store.pairs[1][sel], store.G, store.L,
                      store.cap_step)[4]:
            return None
    if store.objects and not _rows_to_arrays(store):
        return None
    p = store.pairs
    used = used_flat if used_flat.dtype == np.bool_ else used_flat.astype(bool)
    if store.order is None:  # (the kernel's record of each GPU's residents in stamp order)
        store.order = np.zeros((store.G, store.H), dtype=np.int64)
        store.order_n = np.full(store.G, -1, dtype=np.int64)
    miss, figs = kern.lru_serve(store.S, store.nres, store.cap, p[0], p[2], p[3], store.pair_key,
                                used, store.clock, store.G, store.L, store.order, store.order_n)
    store.clock += int(figs[0].sum())
    store.note(figs[0], figs[1], figs[2], figs[3])
    return miss


def _positions(g: np.ndarray, gl: np.ndarray, G: int, L: int, cap_step: np.ndarray) -> tuple:
    """Of accesses on GPUs ``g`` (n,) at steps ``gl`` (n,) in serving order: accesses per GPU
    (G,), each GPU's first access (G,), each access's GPU's first (n,), the keys of its GPU's
    earlier steps (n,), and whether some step has more keys than its GPU's slots."""
    n_g = np.bincount(g, minlength=G)
    gstart = np.cumsum(n_g) - n_g  # (G,) each GPU's first access
    n_step = np.bincount(gl, minlength=G * L)
    start_g = gstart[g]  # (n,)
    before = (np.cumsum(n_step) - n_step)[gl] - start_g  # keys of the GPU's earlier steps
    return n_g, gstart, start_g, before, bool((n_step > cap_step).any())


def _earlier_newer(pos: np.ndarray, s: np.ndarray, gid: np.ndarray, layer: np.ndarray,
                   qpos: np.ndarray, qs: np.ndarray, qstart: np.ndarray, qfirst: np.ndarray,
                   qlayer: np.ndarray) -> np.ndarray:
    """For each query access (at ``qpos`` in serving order, stamp ``qs``): how many of the resident
    accesses (``pos``, ``s``, their GPU's first position ``gid``, ``layer``) of its GPU's earlier
    steps (positions ``qstart .. qfirst - 1``) have a larger stamp. Pairwise up to
    :data:`PAIRWISE_MAX` ** 2 pairs, else as a dominance count: a GPU's earlier steps are its
    layers below the query's, so the answer is the number of residents of the GPU with a larger
    stamp and a lower layer. Residents ranked by GPU then decreasing stamp (stamps are distinct:
    equal stamps are the same access, not counted), a query's newer residents are a rank range;
    the layers below the query's split into at most log2(L) aligned blocks of 2**j layers, and
    for each block size the residents sorted by (layer block, rank) count a range by two binary
    searches: O(n log n log L), not O(n L)."""
    nq, nr = len(qpos), len(pos)
    if nq * nr <= PAIRWISE_MAX * PAIRWISE_MAX:
        p = pos[None, :]
        return ((p >= qstart[:, None]) & (p < qfirst[:, None]) & (s[None, :] > qs[:, None])).sum(axis=1)
    s64, qs64 = s.astype(np.int64), qs.astype(np.int64)
    smin = min(int(s64.min()), int(qs64.min()))
    span = max(int(s64.max()), int(qs64.max())) - smin + 1
    qg = qstart.astype(np.int64) * span
    c = gid.astype(np.int64) * span + (span - 1 - (s64 - smin))  # by GPU, then decreasing stamp
    order = np.argsort(c)
    cs = c[order]
    rank = np.empty(nr, dtype=np.int64)
    rank[order] = np.arange(nr)
    newer_end = np.searchsorted(cs, qg + (span - 1 - (qs64 - smin)), "left")  # ranks below: newer
    gpu_first = np.searchsorted(cs, qg, "left")  # the first rank of the query's GPU
    lay, ql = layer.astype(np.int64), qlayer.astype(np.int64)
    out = np.zeros(nq, dtype=np.int64)
    N = nr + 1
    j, top = 0, int(ql.max())
    while (1 << j) <= top:
        sel = np.flatnonzero((ql >> j) & 1)  # layers below ql: the block of 2**j before ql >> j << j
        if len(sel):
            key = np.sort((lay >> j) * N + rank)
            base = ((ql[sel] >> j) - 1) * N
            out[sel] += (np.searchsorted(key, base + newer_end[sel], "left")
                         - np.searchsorted(key, base + gpu_first[sel], "left"))
        j += 1
    return out
