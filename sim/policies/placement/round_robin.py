"""Round-robin expert placement: expert e of every layer on GPU ``e mod G`` (the interleaved
sharding baseline, e.g. FasterTransformer / Tutel expert-parallel layouts). One copy each."""

from __future__ import annotations

import numpy as np

from sim.policies.base import PLACEMENT, Placement, PlacementPolicy


@PLACEMENT.register("round_robin")
class RoundRobinPlacement(PlacementPolicy):
    def place(self, load: np.ndarray) -> Placement:
        L, E = np.asarray(load).shape
        row = [(e % self.num_gpus,) for e in range(E)]
        return Placement(num_gpus=self.num_gpus, replicas=[list(row) for _ in range(L)])
