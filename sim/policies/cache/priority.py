"""MoE-Infinity-style activation-aware priority cache (Xue et al., "MoE-Infinity: Efficient MoE
Inference on Personal Machines with Sparsity-Aware Expert Cache", arXiv 2401.14361; code
EfficientMoE/MoE-Infinity). MoE-Infinity keeps, per request, an expert activation matrix (layer x
expert counts) and prefers to keep the experts the *current request* activates most.

Here: evict the resident key with the fewest activations in the current request, then the fewest
activations since the start (the request-independent prior), then least recently used, then
smallest id. ``begin_request(i)`` resets the per-request counts (every driver calls it when a
request starts). MoE-Infinity's extra weight on early layers is not modelled: a cache holds one
layer's experts in the plain replay. Victims come from the lazy min-heap of
:mod:`sim.policies.cache._counted`.
"""

from __future__ import annotations

from sim.policies.base import CACHE
from sim.policies.cache._counted import CountedCache


@CACHE.register("priority")
class ActivationPriorityCache(CountedCache):
    uses_requests = True
    _per_request = True

    def begin_request(self, index: int) -> None:
        self._req = [0] * self.num_keys
        self._rebuild()
