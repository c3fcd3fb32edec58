"""FIFO, LIFO and LFU in arrays: a replica's GPU caches served one layer step at a time for every
GPU at once, with no Python work per key; and the two modes every array cache shares.

The same rules as :class:`sim.policies.cache.fifo.FIFOCache`, :class:`~sim.policies.cache.lifo.
LIFOBufferingCache` and :class:`~sim.policies.cache.lfu.LFUCache` (each array cache is a subclass,
so the general protocol still works), held differently: a :class:`StepStore` keeps, per GPU of a
replica and per key the GPU holds (its *home* keys, a local index in increasing key order), a stamp
(``-1``: not resident; else when it was loaded: one counter for the replica, stamps are compared
only within a GPU) and, for LFU, the key's uses and its last step.

Unlike LRU (a stack algorithm, :mod:`sim.serving.lru_arrays` serves an iteration in one pass),
these rules are served step by step, as ``access_steps`` serves them: at layer ``l`` each GPU's
resident keys of the step are hits; its misses load in increasing id order (the next stamps);
past its free slots each miss evicts one resident key outside the step, the one ``_victims``
picks: FIFO the oldest stamp; LIFO, under the iteration's active set (the keys the GPU serves
in it, as the walk passes them), an inactive key before an active one, then the newest stamp;
LFU the fewest uses, then the oldest last step, then the smallest id. Per step that is a
priority per resident key and the ``e`` smallest per GPU (``e`` its evictions): a few argmins
over the (GPUs, home keys) matrix. A step needing more keys than its GPU's slots (keys stream
through) is not in this form, nor LFU's figures past 62 bits: the iteration then goes through the
general path, and so does a replica of fewer than :data:`MIN_GPUS` GPUs, where the objects
are faster.

The two modes (:class:`ArrayMode`, also :class:`sim.serving.lru_arrays.StampedLRU`'s): each
cache object is in arrays mode (its store's row is the state) or objects mode (the policy's own
attributes are). Touching one of those attributes (``resident``, ``_order``; LFU's ``_count``,
``_last``, ``_heap``) turns the cache to objects (LFU's heap rebuilt: its victims are the
smallest current entries, whatever the heap's history); the store's ``serve`` turns it back.
``counts`` is kept in both. tests/sim/serving/test_fast_path.py and test_step_arrays.py hold
both paths to the same misses, evictions and byte-identical ``metrics.json``.
"""

from __future__ import annotations

from collections import OrderedDict
from heapq import heapify
from typing import Any, ClassVar

import numpy as np

from sim.policies.cache.fifo import FIFOCache
from sim.policies.cache.lfu import LFUCache
from sim.policies.cache.lifo import LIFOBufferingCache
from sim.serving.row_store import RowStore
from sim.world.facts import CacheCounts

_NONE = np.iinfo(np.int64).max  # the priority of a key that is no victim
_ACTIVE = 1 << 42  # LIFO: an active key's priority offset (stamps stay below 1 << 41)
#: evictions per GPU and step up to which victims are found by repeated argmin (else a sort)
ARGMIN_MAX = 16
#: the fewest GPUs a replica needs for these arrays to serve it: they cost numpy calls per step,
#: the objects Python work per GPU and key (measured, benchmarks in the module doc: at 8 GPUs of
#: one expert a layer the objects are 4-7x faster; at 64 GPUs of 5 the arrays 1.1-7x)
MIN_GPUS = 32
#: the rules' codes in the compiled serve (sim/serving/compiled_steps.py RULES)
RULE_CODES = {"fifo": 0, "lifo": 1, "lfu": 2}


class ArrayMode:
    """The two modes of a cache whose state may live in a store's row (see the module doc).

    Each object-mode attribute is a property whose getter turns the cache to objects first
    (``resident`` here; a subclass adds its own the same way, plain methods so that the choice is
    made per call) and whose setter writes the ``_m``-prefixed slot. A subclass says how the
    resident keys and its own state go into the row (:meth:`_objects_from`,
    :meth:`_row_from_objects`)."""

    def __init__(self, capacity: int, num_keys: int, store: Any, row: int, cfg: Any = None) -> None:
        self._arrays = False
        self.store, self.row = store, row
        super().__init__(capacity, num_keys, cfg)  # type: ignore[call-arg]
        store.attach(self)

    def _get_resident(self) -> set[int]:
        if self._arrays:
            self._to_objects()
        return self._mresident

    def _set_resident(self, value: set[int]) -> None:
        self._mresident = value

    resident = property(_get_resident, _set_resident)

    @property
    def counts(self) -> CacheCounts:
        st = self.store
        if st.owed:  # (read per cache operation in objects mode: one flag, no numpy)
            st.settle()
        return self._counts

    @counts.setter
    def counts(self, value: CacheCounts) -> None:
        self.store.tally[:, self.row] = 0
        self._counts = value

    @property
    def nres(self) -> int:
        return int(self.store.nres[self.row]) if self._arrays else len(self._mresident)

    def _to_objects(self) -> None:
        st = self.store
        srow = st.S[self.row]
        idx = np.flatnonzero(srow >= 0)
        keys = st.homes[self.row][idx[np.argsort(srow[idx])]].tolist()  # oldest first
        self._arrays = False
        st.objects.add(self.row)
        self._mresident = set(keys)
        self._objects_from(keys)

    def to_arrays(self) -> bool:
        """Make the store's row the state; False (staying in objects mode) if a resident key is
        not one of the GPU's home keys (the arrays have no slot for it)."""
        if self._arrays:
            return True
        st, row = self.store, self.row
        loc = st.loc[row]
        keys = self._resident_order()
        if keys and int(loc[keys].min()) < 0:
            return False
        srow = st.S[row]
        srow[:] = -1
        c = st.clock
        srow[loc[keys]] = np.arange(c, c + len(keys))
        st.clock = c + len(keys)
        st.nres[row] = len(keys)
        self._row_from_objects()
        self._arrays = True
        st.objects.discard(row)
        return True

    def _objects_from(self, keys: list[int]) -> None:
        """Rebuild the object state from the row (``keys``: the resident ones, oldest first)."""

    def _resident_order(self) -> list[int]:
        """The resident keys, in the order their stamps keep (oldest first)."""
        return sorted(self._mresident)

    def _row_from_objects(self) -> None:
        """Copy the policy's own per-key state into the store's row."""


class OrderedArrayMode(ArrayMode):
    """The list-ordered caches (LRU, FIFO, LIFO): the ``_order`` OrderedDict is the stamps' order."""

    def _get_order(self) -> OrderedDict[int, None]:
        if self._arrays:
            self._to_objects()
        return self._m_order

    def _set_order(self, value: OrderedDict[int, None]) -> None:
        self._m_order = value

    _order = property(_get_order, _set_order)

    def _objects_from(self, keys: list[int]) -> None:
        self._m_order = OrderedDict.fromkeys(keys)

    def _resident_order(self) -> list[int]:
        return list(self._m_order)


class StampedFIFO(OrderedArrayMode, FIFOCache):
    """:class:`FIFOCache` in a :class:`StepStore` row (stamps: load order)."""


class StampedLIFO(OrderedArrayMode, LIFOBufferingCache):
    """:class:`LIFOBufferingCache` in a :class:`StepStore` row (stamps: load order)."""


class CountedLFU(ArrayMode, LFUCache):
    """:class:`LFUCache` in a :class:`StepStore` row: uses and last step per home key there."""

    def _get_count(self) -> list[int]:
        if self._arrays:
            self._to_objects()
        return self._m_count

    def _set_count(self, value: list[int]) -> None:
        self._m_count = value

    def _get_last(self) -> list[int]:
        if self._arrays:
            self._to_objects()
        return self._m_last

    def _set_last(self, value: list[int]) -> None:
        self._m_last = value

    def _get_heap(self) -> list[Any]:
        if self._arrays:
            self._to_objects()
        return self._m_heap

    def _set_heap(self, value: list[Any]) -> None:
        self._m_heap = value

    _count = property(_get_count, _set_count)
    _last = property(_get_last, _set_last)
    _heap = property(_get_heap, _set_heap)

    def _objects_from(self, keys: list[int]) -> None:
        st, row = self.store, self.row
        home = st.homes[row]
        cnt, last = self._m_count, self._m_last
        for k, c, t in zip(home.tolist(), st.C[row, :len(home)].tolist(),
                           st.T[row, :len(home)].tolist()):
            cnt[k] = c
            last[k] = t
        self._m_heap = [self._entry(k) for k in keys]
        heapify(self._m_heap)

    def _row_from_objects(self) -> None:
        st, row = self.store, self.row
        home = st.homes[row]
        st.C[row, :len(home)] = np.asarray(self._m_count, dtype=np.int64)[home]
        st.T[row, :len(home)] = np.asarray(self._m_last, dtype=np.int64)[home]


class StepStore(RowStore):
    """A replica's G GPU caches over their home keys, served step by step (see the module doc).

    ``homes[g]``: the keys GPU ``g`` holds (increasing); ``loc`` (G, num_keys) a key's local index
    on a GPU (-1: not held); ``S`` (G, H) stamps; ``C``, ``T`` (G, H) LFU's uses and last step;
    per GPU ``nres`` resident keys, ``cap`` slots, ``tally`` the accesses, misses and evictions not
    yet added to its cache's counts and ``why`` the last iteration's distinct keys and misses on
    keys resident at its start (the walk's why-tallies). ``rule``: fifo, lifo or lfu."""

    rule: ClassVar[str] = "fifo"

    def __init__(self, home_masks: list[np.ndarray], L: int) -> None:
        G = len(home_masks)
        self.G, self.L = G, L
        self.homes = [np.flatnonzero(m) for m in home_masks]
        self.H = H = max((len(h) for h in self.homes), default=0)
        N = len(home_masks[0]) if G else 0
        self.loc = np.full((G, N), -1, dtype=np.int64)
        for g, h in enumerate(self.homes):
            self.loc[g, h] = np.arange(len(h))
        self.S = np.full((G, H), -1, dtype=np.int64)
        self.C = np.zeros((G, H), dtype=np.int64)
        self.T = np.full((G, H), -1, dtype=np.int64)
        self.clock = 0
        self.nres = np.zeros(G, dtype=np.int64)
        self.cap = np.zeros(G, dtype=np.int64)
        self.tally = np.zeros((3, G), dtype=np.int64)
        self.why = np.zeros((2, G), dtype=np.int64)
        self.caches: list[Any] = [None] * G
        self.objects: set[int] = set()
        g, k = np.nonzero(self.loc >= 0)
        layer = k // (N // L) if L else k
        order = np.lexsort((k, g, layer))  # the serving order: by layer, then GPU, then key
        self._all = (g[order], k[order], layer[order])
        self._bind()

    def _bind(self) -> None:
        """The holdings of the GPUs with a cache, in serving order."""
        g, k, layer = self._all
        have = np.array([c is not None for c in self.caches], dtype=bool)
        keep = have[g] if len(g) else np.zeros(0, dtype=bool)
        self.hg, self.hk, self.hl = g[keep], k[keep], layer[keep]
        self.hi = self.loc[self.hg, self.hk]

    def serve(self, used_flat: np.ndarray, step0: int, kern: Any = None) -> np.ndarray | None:
        """Serve one iteration's steps ``step0 + l`` (layer ``l``: the keys of layer ``l`` a GPU
        holds and the batch uses, ``used_flat`` (L*E,) bool) on every GPU with a cache.

        Returns the misses per (layer, GPU) (L, G) int64, or None (the general path serves the
        iteration) when a step needs more keys than its GPU's slots or, served with numpy, the
        replica has fewer than :data:`MIN_GPUS` GPUs. ``kern``: the steps served compiled
        (:func:`sim.serving.compiled_steps.step_serve`, the same decisions) at any width."""
        G, L, H = self.G, self.L, self.H
        if G < MIN_GPUS and kern is None:  # a narrow replica: the objects are the faster form
            return None
        sel = used_flat[self.hk]
        g, i, lay = self.hg[sel], self.hi[sel], self.hl[sel]
        n = len(g)
        if n == 0:
            self.why[:] = 0
            return np.zeros((L, G), dtype=np.int64)
        if (np.bincount(lay * G + g, minlength=L * G).reshape(L, G) > self.cap).any():
            return None
        for row in sorted(self.objects):
            c = self.caches[row]
            if c is not None and not c.to_arrays():
                return None
        S, C, T = self.S, self.C, self.T
        rule = self.rule
        if rule == "lfu":  # (uses, last step + 1, local index) packed in one int64
            hb = max(H, 1).bit_length()
            tb = (step0 + L + 1).bit_length()
            if int(C.max(initial=0) + 1).bit_length() + tb + hb > 62:
                return None
        else:
            tb = hb = 0
        if kern is not None:
            miss_lg, figs, self.clock = kern.step_serve(RULE_CODES[rule], S, C, T, self.nres,
                                                        self.cap, g, i, lay, L, step0,
                                                        self.clock, tb, hb)
            self.note(figs[0], figs[1], figs[2], figs[3])
            return miss_lg
        if rule == "lfu":
            P = (C << (tb + hb)) | ((T + 1) << hb) | np.arange(H, dtype=np.int64)
        elif rule == "lifo":
            act = np.zeros((G, H), dtype=np.int64)
            act[g, i] = _ACTIVE
            P = act + ((1 << 41) - S)
        else:
            P = S.copy()
        # P (G, H): each resident key's victim priority (smallest first), kept through the steps
        P[S < 0] = _NONE
        held0 = S[g, i] >= 0  # (n,) resident at the start
        missed = np.zeros(n, dtype=bool)
        miss_lg = np.zeros((L, G), dtype=np.int64)
        ev_g = np.zeros(G, dtype=np.int64)
        nres, cap = self.nres, self.cap
        pos = np.full(G, -1, dtype=np.int64)
        bounds = np.searchsorted(lay, np.arange(L + 1)).tolist()
        for l in range(L):
            a, b = bounds[l], bounds[l + 1]
            if a == b:
                continue
            gl, il = g[a:b], i[a:b]
            hit = S[gl, il] >= 0
            if not hit.all():
                miss = ~hit
                missed[a:b] = miss
                gm, im = gl[miss], il[miss]
                m_g = np.bincount(gm, minlength=G)
                miss_lg[l] = m_g
                ev = np.maximum(nres + m_g - cap, 0)
                if ev.any():
                    rows = np.flatnonzero(ev)
                    pr = P[rows]
                    pos[rows] = np.arange(len(rows))
                    hp = pos[gl[hit]]  # the step's hits are no victims
                    pr[hp[hp >= 0], il[hit][hp >= 0]] = _NONE
                    pos[rows] = -1
                    vr, vc = _smallest(pr, ev[rows])
                    S[rows[vr], vc] = -1
                    P[rows[vr], vc] = _NONE
                    ev_g += ev
                c0 = self.clock
                new = np.arange(c0, c0 + len(gm))
                S[gm, im] = new
                self.clock = c0 + len(gm)
                if rule == "fifo":
                    P[gm, im] = new
                elif rule == "lifo":
                    P[gm, im] = act[gm, im] + ((1 << 41) - new)
                nres += m_g - ev
            if rule == "lfu":  # the step's keys (all resident now): one use more, used now
                C[gl, il] += 1
                T[gl, il] = step0 + l
                P[gl, il] = (C[gl, il] << (tb + hb)) | ((step0 + l + 1) << hb) | il
        self.note(np.bincount(g, minlength=G), np.bincount(g[held0 & missed], minlength=G),
                  miss_lg.sum(axis=0), ev_g)
        return miss_lg


def _smallest(pr: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``pr`` (distinct values below ``_NONE`` where it counts) the columns of its
    ``k[row]`` smallest entries: (rows, columns) of every pick."""
    kmax = int(k.max())
    if kmax <= ARGMIN_MAX:
        rs, cs = [], []
        ar = np.arange(len(pr))
        for j in range(kmax):
            c = pr.argmin(axis=1)
            take = k > j
            rs.append(ar[take])
            cs.append(c[take])
            pr[ar, c] = _NONE
        return np.concatenate(rs), np.concatenate(cs)
    order = np.argsort(pr, axis=1)[:, :kmax]
    take = np.arange(kmax) < k[:, None]
    return np.nonzero(take)[0], order[take]


class FifoStore(StepStore):
    rule = "fifo"


class LifoStore(StepStore):
    rule = "lifo"


class LfuStore(StepStore):
    rule = "lfu"
