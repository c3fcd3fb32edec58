"""A static expert set: the experts loaded first (the warm start: the weights placed before
serving) stay, and nothing else ever becomes resident. A miss streams through (counted, not kept):
it is copied for that step only or, with ``offload.expert_exec`` cpu / auto / cost, computed on
the host CPU.

This is how the CPU-offloading runtimes hold experts: kTransformers keeps a fixed share of the
experts on the GPU and computes the rest on the CPU (kvcache-ai/ktransformers,
doc/en/kt-kernel/experts-sched-Tutorial.md); llama.cpp keeps ``--n-cpu-moe`` layers' experts in
host memory and, for a batch of at least 32 tokens, copies them to the GPU for that batch only
(PR #13386); Fiddler places the popular experts on the GPU and computes the others on the CPU
(arXiv 2402.07033). Which experts stay is the warm start's choice, ``fill`` (kTransformers'
placement policies): ``first`` (front-loading: the GPU's first experts, whole front layers under a
global cache, each layer's first under ``cluster.cache_scope=per_layer``) or ``frequency`` (the
experts the routing history uses most, as the placement policies plan on it; Fiddler's popular
experts). kTransformers' ``dynamic`` policy (re-chosen while serving) is not modelled.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sim.policies.base import CACHE, CachePolicy

FILLS = ("first", "frequency")


@dataclass
class StaticConfig:
    #: which experts the warm start places: "first" (front-loading) or "frequency" (most used)
    fill: str = "first"

    def __post_init__(self) -> None:
        if self.fill not in FILLS:
            from sim.common.errors import ConfigError

            raise ConfigError(f"cache policy 'static' argument fill={self.fill!r}: expected one of "
                              f"{', '.join(FILLS)}")


@CACHE.register("static")
class StaticCache(CachePolicy):
    Config = StaticConfig
    #: the simulator's fast form: resident masks, an iteration at once once settled
    #: (sim/serving/static_arrays.py)
    array_form = "static_set"

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
