"""Least-loaded request routing (join the shortest queue): the live replica with the fewest
waiting + running requests; ties: the smallest replica index."""

from __future__ import annotations

from collections.abc import Sequence

from sim.policies.base import ROUTER, RouterPolicy


@ROUTER.register("least_loaded")
class LeastLoadedRouter(RouterPolicy):
    def pick(self, alive: Sequence[int], loads: Sequence[int]) -> int:
        return min(zip(loads, alive))[1]
