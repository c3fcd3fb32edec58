"""MoE-Infinity-style activation-aware priority cache (Xue et al., "MoE-Infinity: Efficient MoE
Inference on Personal Machines with Sparsity-Aware Expert Cache", arXiv 2401.14361; code
EfficientMoE/MoE-Infinity). MoE-Infinity keeps, per request, an expert activation matrix (layer x
expert counts) and prefers to keep the experts the *current request* activates most.

Here: evict the resident key with the fewest activations in the current request, then the fewest
activations since the start (the request-independent prior), then least recently used, then
smallest id. ``begin_request(i)`` resets the per-request counts (the replay and the simulator call
it when a request starts). MoE-Infinity's extra weight on early layers is not modelled: a cache
holds one layer's experts in the plain replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from typing import Any

import numpy as np

from sim.policies.base import CACHE, CachePolicy


@CACHE.register("priority")
class ActivationPriorityCache(CachePolicy):
    uses_requests = True

    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self._req = [0] * self.num_keys  # activations in the current request
        self._count = [0] * self.num_keys  # activations since the start
        self._last = [-1] * self.num_keys
        self._heap: list[tuple[int, int, int, int]] = []

    def _rebuild(self) -> None:
        req, cnt, last = self._req, self._count, self._last
        self._heap = [(req[k], cnt[k], last[k], k) for k in self.resident]
        heapify(self._heap)

    def begin_request(self, index: int) -> None:
        self._req = [0] * self.num_keys
        self._rebuild()

    def _serve(self, step: int, row: list[int]) -> tuple[list[int], list[int]]:
        res = self.resident
        cnt, req, last = self._count, self._req, self._last
        heap = self._heap
        miss, n_ev, n_keep = self._plan(row)
        evicted: list[int] = []
        while len(evicted) < n_ev:
            _, c, _, k = heappop(heap)
            if k in res and c == cnt[k] and k not in row:
                evicted.append(k)
                res.discard(k)
        res.update(miss[:n_keep])
        for k in row:
            c = cnt[k] + 1
            cnt[k] = c
            r = req[k] + 1
            req[k] = r
            last[k] = step
            if k in res:
                heappush(heap, (r, c, step, k))
        if len(heap) > 4 * self.capacity + 64:
            self._rebuild()
        return miss, evicted

    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        return self._serve(step, sorted(set(int(k) for k in keys)))

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        rows = np.sort(np.asarray(keys), axis=1).tolist()  # (S, K)
        # _serve inlined (counts only): same state and decisions
        res, cnt, last, cap = self.resident, self._count, self._last, self.capacity
        req = self._req
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
                        _, c, _, k = heappop(heap)
                        if k in res and c == cnt[k] and k not in row:
                            res.discard(k)
                            ev += 1
                    miss = miss[: room + n_ev]
                res.update(miss)
            for k in row:
                c = cnt[k] + 1
                cnt[k] = c
                r = req[k] + 1
                req[k] = r
                last[k] = step
                if k in res:
                    heappush(heap, (r, c, step, k))
            if len(heap) > limit:
                self._heap = heap
                self._rebuild()
                heap = self._heap
        self._heap = heap
        return misses

    def _on_insert(self, step: int, key: int) -> None:
        heappush(self._heap, (self._req[key], self._count[key], self._last[key], key))

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        req, cnt, last = self._req, self._count, self._last
        return min(candidates, key=lambda k: (req[k], cnt[k], last[k], k))
