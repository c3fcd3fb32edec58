"""Huang et al.'s expert buffering ("Toward Efficient Inference for Mixture of Experts",
NeurIPS 2024, arXiv 2303.06182, Sec. 5): a per-GPU cache of experts, the rest in CPU memory.
Evict experts that are not active in the current batch first, then last-in-first-out.

Why LIFO (their example): a GPU runs its experts in increasing id order; with a cache of 2 and
experts (1, 2, 3) needed, loading 3 evicts 2 (the latest in) and keeps 1, the expert reused soonest
by the next batch; FIFO would evict 1 and miss on every expert of every batch.

``active`` (the keys the surrounding batch needs) is passed to ``access``; without it (plain
per-token replay) the policy is plain LIFO. Keys inserted in the same step: largest id is the
latest (a step's misses load in increasing id order).
"""

from __future__ import annotations

from sim.policies.base import CACHE
from sim.policies.cache._ordered import OrderedCache


@CACHE.register("lifo")
class LIFOBufferingCache(OrderedCache):
    _touch_hits = False
    _from_back = True
    #: a driver serving batches passes the batch's experts as ``active`` (replay batch mode, sim)
    uses_active = True
    #: served as arrays by the simulator (sim/serving/step_arrays.py)
    array_form = "lifo_stamps"
