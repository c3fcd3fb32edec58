"""eMoE's keep-the-predicted-set cache (Tairin et al., "eMoE: Task-aware Memory Efficient
Mixture-of-Experts-Based (MoE) Model Inference", arXiv 2503.06823, Sec. 4): the predictor names the
experts the next prompts will use; those are loaded and kept, the rest offloaded.

As a cache: ``set_predicted(keys)`` names the predicted set (every driver calls it whenever its
predictor reruns; a driver without a predictor never does). Victims: resident keys outside the
predicted set first, least recently used first; only when none is left, predicted keys, least
recently used first; ties smallest id. With an empty predicted set it is LRU. The caller's
``active`` set is not used: the predicted set takes its place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sim.policies.base import CACHE
from sim.policies.cache.lru import LRUCache


@CACHE.register("keep_predicted")
class KeepPredictedCache(LRUCache):
    uses_prediction = True
    predicted: frozenset[int] = frozenset()

    def set_predicted(self, keys: Iterable[int]) -> None:
        self.predicted = frozenset(int(k) for k in keys)

    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        return super()._victims(step, n, exclude, self.predicted)
