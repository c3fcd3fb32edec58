"""Shared machinery for caches whose victim is the resident key with the fewest uses (LFU, and
MoE-Infinity's per-request priority, which ranks by uses in the current request first).

State, per key: ``_count`` uses since the start (resident or not), ``_last`` the step of the last
use and, with ``_per_request``, ``_req`` uses in the current request. Victims come from a lazy
min-heap of entries ``(req, count, last, key)`` (without ``req`` for LFU): an entry is current
while its key is resident and its count unchanged (counts only grow; ``begin_request`` and
compaction rebuild the heap), so stale entries are skipped when popped. Every resident key has a
current entry outside a step: the touch hooks push one for each key of a step or a prefetch
(whose entries a victim search may have dropped). The heap is rebuilt when it grows past a few
times the capacity.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from heapq import heapify, heappop, heappush
from typing import Any, ClassVar

from sim.policies.base import CachePolicy


class CountedCache(CachePolicy):
    #: rank by uses in the current request first (reset by ``begin_request``)
    _per_request: ClassVar[bool] = False

    def __init__(self, capacity: int, num_keys: int, cfg: Any = None) -> None:
        super().__init__(capacity, num_keys, cfg)
        n = self.num_keys
        self._count = [0] * n
        self._last = [-1] * n
        self._req: list[int] | None = [0] * n if self._per_request else None
        self._heap: list[tuple[int, ...]] = []
        self._heap_limit = 4 * self.capacity + 64

    def _entry(self, k: int) -> tuple[int, ...]:
        if self._req is None:
            return (self._count[k], self._last[k], k)
        return (self._req[k], self._count[k], self._last[k], k)

    def _rebuild(self) -> None:
        self._heap = [self._entry(k) for k in self.resident]
        heapify(self._heap)

    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        res, cnt, heap = self.resident, self._count, self._heap
        out: list[int] = []
        while n:
            e = heappop(heap)
            k = e[-1]
            # current (e[-3] is the count), not excluded (an excluded key's entry is dropped:
            # the touch hook after the step or prefetch pushes a fresh one)
            if k in res and e[-3] == cnt[k] and k not in exclude and k not in out:
                out.append(k)
                n -= 1
        return out

    def _on_step(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                 ) -> None:
        res, cnt, last, heap = self.resident, self._count, self._last, self._heap
        req = self._req
        if req is None:
            for k in row:
                c = cnt[k] + 1
                cnt[k] = c
                last[k] = step
                if k in res:
                    heappush(heap, (c, step, k))
        else:
            for k in row:
                c = cnt[k] + 1
                cnt[k] = c
                last[k] = step
                r = req[k] + 1
                req[k] = r
                if k in res:
                    heappush(heap, (r, c, step, k))
        if len(heap) > self._heap_limit:
            self._rebuild()

    def _on_insert(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                   ) -> None:
        # the loaded keys, and the protected ones (their entries may have been dropped)
        for k in row:
            if k in self.resident:
                heappush(self._heap, self._entry(k))
