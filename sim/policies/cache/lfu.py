"""LFU expert cache: evict the least frequently used resident expert, frequency counted over every
access since the start of the replay (resident or not); ties: least recently used, then smallest
id. Source: the LFU cache MoE-Infinity ships beside LRU and its priority cache
(EfficientMoE/MoE-Infinity, ``expert cache`` options; Xue et al., arXiv 2401.14361).

Victims come from the lazy min-heap of :mod:`sim.policies.cache._counted`.
"""

from __future__ import annotations

from sim.policies.base import CACHE
from sim.policies.cache._counted import CountedCache


@CACHE.register("lfu")
class LFUCache(CountedCache):
    _per_request = False
    #: served as arrays by the simulator (sim/serving/step_arrays.py)
    array_form = "lfu_counts"
