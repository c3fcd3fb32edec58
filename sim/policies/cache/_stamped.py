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

Each cache object is in one of two modes: arrays (the store's row is the state) or objects (the
``resident`` set and the ``_order`` OrderedDict of :class:`OrderedCache` are). Touching either
attribute turns the cache to objects; :func:`serve_lru_iteration` turns it back. ``counts`` is
kept in both. tests/sim/test_fast_path.py holds both paths to byte-identical ``metrics.json``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from sim.policies.cache.lru import LRUCache

_BIG = 1 << 40  # row offset when a replica's rows of stamps are searched as one sorted array


class StampStore:
    """Recency stamps of a replica's G GPU caches over their home keys.

    ``homes[g]``: the keys GPU ``g`` holds (increasing); ``loc`` (G, num_keys): the local index of
    a key on a GPU (-1: not held there); ``S`` (G, H) the stamps (H: the most keys a GPU holds;
    padding stays -1)."""

    def __init__(self, home_masks: list[np.ndarray]) -> None:
        G = len(home_masks)
        self.homes = [np.flatnonzero(m) for m in home_masks]
        H = max((len(h) for h in self.homes), default=0)
        self.H = H
        self.loc = np.full((G, len(home_masks[0]) if G else 0), -1, dtype=np.int64)
        for g, h in enumerate(self.homes):
            self.loc[g, h] = np.arange(len(h))
        self.S = np.full((G, H), -1, dtype=np.int64)
        # (key, GPU) holdings ordered by GPU then key: the order a GPU's steps use its keys
        gk = np.argwhere(self.loc >= 0)  # (P, 2) (GPU, key), GPU-major
        self.pair_gpu, self.pair_key = gk[:, 0], gk[:, 1]
        self.pair_loc = self.loc[self.pair_gpu, self.pair_key]


class StampedLRU(LRUCache):
    """An :class:`LRUCache` whose state may live in a :class:`StampStore` row (see module doc)."""

    def __init__(self, capacity: int, num_keys: int, store: StampStore, row: int, cfg: Any = None
                 ) -> None:
        self._arrays = False
        super().__init__(capacity, num_keys, cfg)
        self.store, self.row = store, row
        self.clock = 0  # the next stamp
        self.nres = 0  # resident keys (kept in arrays mode)

    # -- the two modes --------------------------------------------------------------------------
    @property
    def resident(self) -> set[int]:  # type: ignore[override]
        if self._arrays:
            self._to_objects()
        return self._res

    @resident.setter
    def resident(self, value: set[int]) -> None:
        self._res = value

    @property
    def _order(self) -> OrderedDict[int, None]:  # type: ignore[override]
        if self._arrays:
            self._to_objects()
        return self._od

    @_order.setter
    def _order(self, value: OrderedDict[int, None]) -> None:
        self._od = value

    def _to_objects(self) -> None:
        srow = self.store.S[self.row]
        idx = np.flatnonzero(srow >= 0)
        keys = self.store.homes[self.row][idx[np.argsort(srow[idx])]].tolist()  # oldest first
        self._arrays = False
        self._res = set(keys)
        self._od = OrderedDict.fromkeys(keys)

    def to_arrays(self) -> bool:
        """Make the store's row the state; False (staying in objects mode) if a resident key is
        not one of the GPU's home keys (the arrays have no slot for it)."""
        if self._arrays:
            return True
        loc = self.store.loc[self.row]
        keys = list(self._od)
        if keys and int(loc[keys].min()) < 0:
            return False
        srow = self.store.S[self.row]
        srow[:] = -1
        srow[loc[keys]] = np.arange(self.clock, self.clock + len(keys))
        self.clock += len(keys)
        self.nres = len(keys)
        self._arrays = True
        return True


def serve_lru_iteration(store: StampStore, caches: list[StampedLRU | None], used_flat: np.ndarray,
                        E: int, L: int) -> np.ndarray | None:
    """Serve one iteration's steps (step ``l``: the keys of layer ``l`` a GPU holds and the batch
    uses, ``used_flat`` (L*E,) bool) on every GPU with a cache, all at once.

    Returns the misses per (layer, GPU) (L, G) int64, or None (nothing changed) when some step
    needs more keys than its GPU's slots: the caller then takes the general path."""
    G = len(caches)
    have = np.array([c is not None for c in caches])
    sel = used_flat[store.pair_key] & have[store.pair_gpu]
    g = store.pair_gpu[sel]  # (n,) GPU of each access, in serving order
    k = store.pair_key[sel]
    li = store.pair_loc[sel]
    layer = k // E
    n = len(g)
    if n == 0:
        return np.zeros((L, G), dtype=np.int64)
    cap = np.array([c.capacity if c is not None else 0 for c in caches], dtype=np.int64)  # (G,)
    gl = g * L + layer  # (n,) nondecreasing: a step of a GPU
    per_step = np.bincount(gl, minlength=G * L).reshape(G, L)
    if (per_step.max(axis=1) > cap).any():
        return None
    for c in caches:
        if c is not None and not c.to_arrays():
            return None
    S = store.S
    H = store.H
    s = S[g, li]  # (n,) stamps at the start (-1: not resident)
    offs = np.arange(G, dtype=np.int64) * _BIG
    flat = (np.sort(S, axis=1) + offs[:, None]).ravel()
    # resident keys more recent than the key at the start of the iteration
    newer = H - (np.searchsorted(flat, s + offs[g], "right") - g * H)
    start_g = np.searchsorted(g, g, "left")  # first access of the GPU
    before = np.searchsorted(gl, gl, "left") - start_g  # keys of the GPU's earlier steps
    # earlier-step keys already more recent than the key (counted in ``newer`` too): among the
    # GPU's accesses by decreasing stamp, those before it whose layer is smaller
    order = np.lexsort((-s, g))
    onehot = np.zeros((n, L), dtype=np.int64)
    onehot[np.arange(n), layer[order]] = 1
    cum = np.cumsum(onehot, axis=0) - onehot  # (n, L) earlier in that order, per layer
    cum -= cum[start_g[order]]  # ... of the same GPU
    cum_l = np.cumsum(cum, axis=1)  # (n, L) ... with a layer <= l
    lo = layer[order] - 1
    twice = np.zeros(n, dtype=np.int64)
    twice[order] = np.where(lo >= 0, cum_l[np.arange(n), np.maximum(lo, 0)], 0)
    hit = (s >= 0) & (newer + before - twice < cap[g])
    miss = ~hit
    n_g = np.bincount(g, minlength=G)
    m_g = np.bincount(g[miss], minlength=G)
    # stamps: the GPU's keys in serving order get the next n_g stamps
    clock = np.array([c.clock if c is not None else 0 for c in caches], dtype=np.int64)
    S[g, li] = clock[g] + (np.arange(n) - start_g)
    nres0 = np.array([c.nres if c is not None else 0 for c in caches], dtype=np.int64)
    nres = np.minimum(cap, nres0 + m_g)
    ev = nres0 + m_g - nres
    if ev.any():
        rows = np.flatnonzero(ev)
        srt = np.sort(S[rows], axis=1)
        thr = srt[np.arange(len(rows)), H - nres[rows]]  # the least recent key kept
        sub = S[rows]
        sub[sub < thr[:, None]] = -1
        S[rows] = sub
    for gi, c in enumerate(caches):
        if c is None or not n_g[gi]:
            continue
        c.clock += int(n_g[gi])
        c.nres = int(nres[gi])
        cnt = c.counts
        cnt.hits += int(n_g[gi] - m_g[gi])
        cnt.misses += int(m_g[gi])
        cnt.evictions += int(ev[gi])
    return np.bincount(layer[miss] * G + g[miss], minlength=L * G).reshape(L, G)
