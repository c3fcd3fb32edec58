"""Round-robin request routing: the n-th routed request goes to the live replica at position
``n mod (live replicas)`` (vLLM's and most load balancers' default). The counter advances on every
pick, whatever the number of live replicas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.policies.base import ROUTER, RouterPolicy


@ROUTER.register("round_robin")
class RoundRobinRouter(RouterPolicy):
    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.n = 0  # requests routed so far

    def pick(self, alive: Sequence[int], loads: Sequence[int]) -> int:
        rep = alive[self.n % len(alive)]
        self.n += 1
        return rep
