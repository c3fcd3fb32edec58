"""A static expert set: the experts loaded first (the warm start: the weights placed before
serving) stay, and nothing else ever becomes resident. A miss streams through (counted, not kept):
it is copied for that step only or, with ``offload.expert_exec`` cpu / auto / cost, computed on
the host CPU.

This is how the CPU-offloading runtimes hold experts: kTransformers keeps a fixed share of the
experts on the GPU and computes the rest on the CPU (kvcache-ai/ktransformers,
doc/en/kt-kernel/experts-sched-Tutorial.md); llama.cpp keeps ``--n-cpu-moe`` layers' experts in
host memory and, for a batch of at least 32 tokens, copies them to the GPU for that batch only
(PR #13386); Fiddler places the popular experts on the GPU and computes the others on the CPU
(arXiv 2402.07033). Which experts stay is the warm start's choice (the GPU's first experts:
whole front layers under a global cache, each layer's first under ``cluster.cache_scope=per_layer``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sim.policies.base import CACHE, CachePolicy


@CACHE.register("static")
class StaticCache(CachePolicy):
    def __init__(self, capacity: int, num_keys: int, cfg: Any = None) -> None:
        super().__init__(capacity, num_keys, cfg)
        #: every resident key (one set, grown in place: the step routine reads it once per call
        #: and must see the keys a step of the same call made resident)
        self.pinned: set[int] = set()  # type: ignore[assignment]

    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        raise AssertionError("a static cache evicts nothing (every resident key is pinned)")

    def _hold(self, loaded: list[int]) -> None:
        self.pinned.update(loaded)  # what became resident stays

    def _on_step(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]) -> None:
        self._hold(loaded)

    def _on_insert(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]) -> None:
        self._hold(loaded)
