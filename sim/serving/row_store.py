"""What the array caches' stores share (:mod:`sim.serving.step_arrays`' FIFO / LIFO / LFU store and
:mod:`sim.serving.lru_arrays`' LRU stamps): a row per GPU cache, its cache object, the rows in
objects mode, the iteration's why-figures and the counts each row still owes its cache."""

from __future__ import annotations

from typing import Any

import numpy as np


class RowStore:
    """What the array stores share (this module's and the LRU stamps'): a row per GPU cache, its
    cache object (``caches``), the rows in objects mode (``objects``), and the iteration's why
    and tally."""

    def attach(self, cache: Any) -> None:
        """``cache`` (new: in objects mode) is the one of its row now."""
        row = cache.row
        self.S[row] = -1
        self.nres[row] = 0
        self.cap[row] = cache.capacity
        self.caches[row] = cache
        self.objects.add(row)
        self._bind()

    #: whether some row's ``tally`` is owed to its cache's counts (:meth:`settle`)
    owed: bool = False

    def note(self, keys: np.ndarray, reused: np.ndarray, misses: np.ndarray,
             evictions: np.ndarray) -> None:
        """The iteration's per-GPU figures: distinct keys and misses on keys it had resident
        (``why``), and the accesses, misses and evictions its caches' counts still owe (``tally``)."""
        self.why[0] = keys
        self.why[1] = reused
        t = self.tally
        t[0] += keys
        t[1] += misses
        t[2] += evictions
        self.owed = True

    def settle(self) -> None:
        """Add every row's owed accesses, misses and evictions to its cache's counts (hits:
        accesses less misses); the tally is then zero."""
        t = self.tally
        for row in np.flatnonzero(t.any(axis=0)).tolist():
            c = self.caches[row]._counts
            c.hits += int(t[0, row] - t[1, row])
            c.misses += int(t[1, row])
            c.evictions += int(t[2, row])
        t[:] = 0
        self.owed = False

    def _bind(self) -> None:
        raise NotImplementedError
