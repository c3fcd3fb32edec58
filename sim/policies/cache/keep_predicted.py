"""eMoE's keep-the-predicted-set cache (Tairin et al., "eMoE: Task-aware Memory Efficient
Mixture-of-Experts-Based (MoE) Model Inference", arXiv 2503.06823, Sec. 4): the predictor names the
experts the next prompts will use; those are loaded and kept, the rest offloaded.

As a cache: ``set_predicted(keys)`` names the predicted set (the replay and the simulator call it
whenever the predictor reruns). Victims: resident keys outside the predicted set first, least
recently used first; only when none is left, predicted keys, least recently used first; ties
smallest id. With an empty predicted set it is LRU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from sim.policies._ordered import OrderedCache
from sim.policies.base import CACHE


@CACHE.register("keep_predicted")
class KeepPredictedCache(OrderedCache):
    _touch_hits = True
    _uses_active = True
    uses_prediction = True

    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self.predicted: frozenset[int] = frozenset()

    def set_predicted(self, keys: Iterable[int]) -> None:
        self.predicted = frozenset(int(k) for k in keys)

    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        return self._serve(sorted(set(int(k) for k in keys)), self.predicted)

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        rows = np.sort(np.asarray(keys), axis=1).tolist()  # (S, K)
        serve = self._serve
        pred = self.predicted
        misses = 0
        for row in rows:
            misses += len(serve(row, pred)[0])
        return misses

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        return super()._victim(step, candidates, self.predicted)
