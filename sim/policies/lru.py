"""LRU expert cache, as in mixtral-offloading (Eliseev & Mazur, 2023): evict the least recently
used expert. Ties (equal last use, e.g. keys loaded in the same step) go to the smallest key."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sim.policies.base import CACHE, CachePolicy


@CACHE.register("lru")
class LRUCache(CachePolicy):
    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self._last: dict[int, int] = {}

    def _on_hit(self, step: int, key: int) -> None:
        self._last[key] = step

    def _on_insert(self, step: int, key: int) -> None:
        self._last[key] = step

    def _on_evict(self, key: int) -> None:
        del self._last[key]

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        last = self._last
        return min(candidates, key=lambda k: (last[k], k))
