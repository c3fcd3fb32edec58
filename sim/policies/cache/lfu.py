"""LFU expert cache: evict the least frequently used resident expert, frequency counted over every
access since the start of the replay (resident or not); ties: least recently used, then smallest
id. Source: the LFU cache MoE-Infinity ships beside LRU and its priority cache
(EfficientMoE/MoE-Infinity, ``expert cache`` options; Xue et al., arXiv 2401.14361).

Victims come from a lazy min-heap of (count, last use, id): an entry is current while the key is
resident and its count is unchanged (counts only grow), so stale entries are skipped when popped;
the heap is rebuilt when it grows past a few times the capacity. ``access`` and the fast
``replay`` share :meth:`_serve`.
"""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from typing import Any

import numpy as np

from sim.policies.base import CACHE, CachePolicy


@CACHE.register("lfu")
class LFUCache(CachePolicy):
    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self._count = [0] * self.num_keys
        self._last = [-1] * self.num_keys
        self._heap: list[tuple[int, int, int]] = []

    def _compact(self) -> None:
        cnt, last = self._count, self._last
        self._heap = [(cnt[k], last[k], k) for k in self.resident]
        heapify(self._heap)

    def _serve(self, step: int, row: list[int]) -> tuple[list[int], list[int]]:
        res = self.resident
        cnt = self._count
        heap = self._heap
        miss, n_ev, n_keep = self._plan(row)
        evicted: list[int] = []
        while len(evicted) < n_ev:
            c, _, k = heappop(heap)
            if k in res and c == cnt[k] and k not in row:
                evicted.append(k)
                res.discard(k)
        res.update(miss[:n_keep])
        last = self._last
        for k in row:
            c = cnt[k] + 1
            cnt[k] = c
            last[k] = step
            if k in res:
                heappush(heap, (c, step, k))
        if len(heap) > 4 * self.capacity + 64:
            self._compact()
        return miss, evicted

    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        return self._serve(step, sorted(set(int(k) for k in keys)))

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        rows = np.sort(np.asarray(keys), axis=1).tolist()  # (S, K)
        # _serve inlined (counts only): same state and decisions
        res, cnt, last, cap = self.resident, self._count, self._last, self.capacity
        heap = self._heap
        limit = 4 * cap + 64
        misses = 0
        for step, row in enumerate(rows, first_step):
            miss = [k for k in row if k not in res]
            if miss:
                nm = len(miss)
                misses += nm
                room = cap - len(res)
                if nm > room:
                    n_ev = min(nm - room, len(res) - len(row) + nm)
                    ev = 0
                    while ev < n_ev:
                        c, _, k = heappop(heap)
                        if k in res and c == cnt[k] and k not in row:
                            res.discard(k)
                            ev += 1
                    miss = miss[: room + n_ev]
                res.update(miss)
            for k in row:
                c = cnt[k] + 1
                cnt[k] = c
                last[k] = step
                if k in res:
                    heappush(heap, (c, step, k))
            if len(heap) > limit:
                self._heap = heap
                self._compact()
                heap = self._heap
        self._heap = heap
        return misses

    # -- base insert() (prefetch) path ----------------------------------------------------------
    def _on_insert(self, step: int, key: int) -> None:
        heappush(self._heap, (self._count[key], self._last[key], key))

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        cnt, last = self._count, self._last
        return min(candidates, key=lambda k: (cnt[k], last[k], k))
