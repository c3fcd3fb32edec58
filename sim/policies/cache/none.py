"""No expert cache: every expert a step needs is copied for that step and not kept (it streams
through the slots, which are only a staging buffer; a prefetch has nowhere to go and is skipped).
mixtral-offloading's "w/o LRU cache & pre-loading" ablation (arXiv 2312.17238, Table 2): each
layer loads the experts its token picks, at every token."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sim.policies.base import CACHE, CachePolicy


@CACHE.register("none")
class NoCache(CachePolicy):
    def __init__(self, capacity: int, num_keys: int, cfg: Any = None) -> None:
        super().__init__(capacity, num_keys, cfg)
        self.capacity = 0  # nothing is kept, whatever the slots: every miss streams through

    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        raise AssertionError("a cache without slots has no resident key to evict")
