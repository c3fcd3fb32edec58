"""eMoE's keep-the-predicted-set cache (Tairin et al., "eMoE: Task-aware Memory Efficient
Mixture-of-Experts-Based (MoE) Model Inference", arXiv 2503.06823, Sec. 4): the predictor names the
experts the next prompts will use; those are loaded and kept, the rest offloaded.

As a cache: ``set_predicted(keys)`` names the predicted set (every driver calls it whenever its
predictor names one; a driver without a predictor never does; the set a driver passes fits the
slots: :func:`sim.policies._predictor.fit_predicted`). The predicted keys that are resident are
held (``pinned``) until the next ``set_predicted``: no step and no prefetch evicts one. Other
experts are served from the slots left, least recently used first among them (ties smallest id);
when no slot is left (every resident key predicted or needed by the step) they stream through a
staging buffer (a miss, not kept). A predicted key that misses is loaded like any key (and then
held). With an empty predicted set it is LRU. The caller's ``active`` set is not used: the
predicted set takes its place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sim.policies._cache import NO_KEYS
from sim.policies.base import CACHE
from sim.policies.cache.lru import LRUCache


@CACHE.register("keep_predicted")
class KeepPredictedCache(LRUCache):
    uses_prediction = True
    #: served as recency stamps beside its pins by the simulator's compiled walk
    #: (sim/serving/prefetch_walk.py)
    array_form = "keep_stamps"

    @property
    def predicted(self) -> frozenset[int]:
        """The predicted set held (the keys of the last ``set_predicted``)."""
        return self.pinned

    def set_predicted(self, keys: Iterable[int]) -> None:
        self.pinned = frozenset(int(k) for k in keys)

    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        pinned = self.pinned
        if pinned:
            exclude = _Union(exclude, pinned)
        return super()._victims(step, n, exclude, NO_KEYS)


class _Union:
    """``a | b`` for membership tests, without building the set."""

    __slots__ = ("a", "b")

    def __init__(self, a: Collection[int], b: Collection[int]) -> None:
        self.a, self.b = a, b

    def __contains__(self, k: object) -> bool:
        return k in self.a or k in self.b
