"""FIFO expert cache: evict the earliest inserted resident expert (keys inserted in the same step:
smallest id first, since a step's misses are loaded in increasing id order). Hits do not reorder.

Source: the FIFO baseline Huang et al. compare expert buffering against ("Toward Efficient
Inference for Mixture of Experts", NeurIPS 2024, arXiv 2303.06182, Sec. 5).
"""

from __future__ import annotations

from sim.policies.base import CACHE
from sim.policies.cache._ordered import OrderedCache


@CACHE.register("fifo")
class FIFOCache(OrderedCache):
    _touch_hits = False
    _from_back = False
    #: served as arrays by the simulator (sim/serving/step_arrays.py)
    array_form = "fifo_stamps"
