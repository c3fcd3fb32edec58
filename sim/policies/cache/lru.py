"""LRU expert cache, as in mixtral-offloading (Eliseev & Mazur, 2023, "Fast inference of
Mixture-of-Experts language models with offloading", arXiv 2312.17238; one LRU cache per layer).

Evicts the least recently used resident expert. Ties (equal last use, e.g. keys used in the same
step) go to the smallest id first: after each step the step's keys sit at the recent end of the
order in increasing id order.
"""

from __future__ import annotations

from sim.policies.base import CACHE
from sim.policies.cache._ordered import OrderedCache


@CACHE.register("lru")
class LRUCache(OrderedCache):
    _touch_hits = True
    #: served as recency stamps by the simulator (sim/serving/lru_arrays.py)
    array_form = "stamps"
