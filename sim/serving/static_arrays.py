"""The static cache in arrays: a replica's GPU caches as resident masks, a whole iteration served
at once once nothing can change any more.

The same rule as :class:`sim.policies.cache.static.StaticCache` (the array cache is a subclass, so
the general protocol still works; the rule of kTransformers' fixed GPU experts, llama.cpp's
``--n-cpu-moe`` copies for a batch, Fiddler's popular experts): a key that becomes resident stays
(pinned), a miss loads into a free slot while there is one, and once none is left every miss
streams through (counted, copied for its step, not kept). So a cache is *settled* once it is
full or holds every key its GPU holds: from then on its resident set never changes, a key
hits iff it is resident, every miss streams and nothing is evicted. A warm start fills the
caches before serving, so in practice they are settled from the first iteration.

:class:`StaticStore` serves an iteration of settled caches with a few numpy calls: the misses per
(layer, GPU) are the used holdings not resident. An iteration where a cache can still load a
key (a free slot and a key it holds not resident) goes through the general path, whose ``access``
fills it (the two modes of :class:`sim.serving.step_arrays.ArrayMode`: the store's row or the
object's ``resident`` set is the state). tests/sim/serving/test_fast_path.py holds both paths to
byte-identical ``metrics.json``; tests/sim/serving/test_static_arrays.py works them out by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.policies.cache.static import StaticCache
from sim.serving.row_store import RowStore
from sim.serving.step_arrays import ArrayMode
from sim.world.facts import CacheCounts


class StaticStore(RowStore):
    """A replica's G static caches over their home keys.

    ``homes[g]``: the keys GPU ``g`` holds (increasing); ``loc`` (G, num_keys) a key's local index
    on a GPU (-1: not held); ``S`` (G, H) a resident key's load stamp (-1: not resident); per GPU
    ``nres`` resident keys, ``cap`` slots, ``nhome`` home keys, ``tally`` the accesses, misses and
    evictions and ``streamed`` the misses streamed through not yet added to its cache's counts,
    ``why`` the last iteration's distinct keys and misses on keys resident at its start (none:
    a resident key stays)."""

    def __init__(self, home_masks: list[np.ndarray], L: int) -> None:
        G = len(home_masks)  # (a replica has GPUs: at least one)
        self.G, self.L = G, L
        self.homes = [np.flatnonzero(m) for m in home_masks]
        self.H = H = max(len(h) for h in self.homes)
        N = len(home_masks[0])
        self.loc = np.full((G, N), -1)
        for g, h in enumerate(self.homes):
            self.loc[g, h] = np.arange(len(h))
        self.S = np.full((G, H), -1)
        self.clock = 0
        self.nres = np.zeros(G, dtype=np.int64)
        self.cap = np.zeros(G, dtype=np.int64)
        self.nhome = np.array([len(h) for h in self.homes])
        self.tally = np.zeros((3, G), dtype=np.int64)
        self.streamed = np.zeros(G, dtype=np.int64)
        self.why = np.zeros((2, G), dtype=np.int64)
        self.caches: list[Any] = [None] * G
        self.objects: set[int] = set()
        g, k = np.nonzero(self.loc >= 0)
        self._all = (g, k, k // (N // L))
        self._bind()  # (no cache attached yet: a replica whose GPUs all hold every key has none)

    def _bind(self) -> None:
        """The holdings of the GPUs with a cache (GPU, key, layer, flat index into ``S``)."""
        g, k, layer = self._all
        self.have = np.array([c is not None for c in self.caches])
        keep = self.have[g]
        self.hg, self.hk, self.hl = g[keep], k[keep], layer[keep]
        self.hflat = self.hg * self.H + self.loc[self.hg, self.hk]

    def serve(self, used_flat: np.ndarray, step0: int, kern: Any = None) -> np.ndarray | None:
        """Serve one iteration's steps (layer ``l``: the keys of layer ``l`` a GPU holds and the
        batch uses, ``used_flat`` (L*E,) bool) on every GPU with a cache: the misses per (layer,
        GPU) (L, G) int64, or None (the general path serves the iteration) while a cache is not
        settled (see the module doc). ``step0``, ``kern``: unused (no step order matters)."""
        G, L = self.G, self.L
        for row in sorted(self.objects):
            c = self.caches[row]
            if c is not None and not c.to_arrays():
                return None
        if (self.have & (self.nres < np.minimum(self.cap, self.nhome))).any():
            return None  # (a cache that can still load a key: the general path fills it)
        sel = used_flat[self.hk]
        g, lay = self.hg[sel], self.hl[sel]
        miss = self.S.ravel()[self.hflat[sel]] < 0
        gm = g[miss]
        m_g = np.bincount(gm, minlength=G)
        none = np.zeros(G, dtype=np.int64)
        self.note(np.bincount(g, minlength=G), none, m_g, none)
        self.streamed += m_g
        return np.bincount(lay[miss] * G + gm, minlength=L * G).reshape(L, G)

    def settle(self) -> None:
        """:meth:`RowStore.settle`, and each row's streamed misses added to its cache's counts."""
        s = self.streamed
        for row in np.flatnonzero(s).tolist():
            self.caches[row]._counts.streamed += int(s[row])
        s[:] = 0
        super().settle()


class StampedStatic(ArrayMode, StaticCache):
    """:class:`StaticCache` in a :class:`StaticStore` row (stamps: load order; ``pinned``, the
    policy's own set, equals the resident set and stays on the object: a settled cache changes
    neither)."""

    def _get_counts(self) -> CacheCounts:
        return ArrayMode.counts.fget(self)  # type: ignore[attr-defined]

    def _set_counts(self, value: CacheCounts) -> None:
        self.store.streamed[self.row] = 0
        ArrayMode.counts.fset(self, value)  # type: ignore[attr-defined]

    counts = property(_get_counts, _set_counts)

