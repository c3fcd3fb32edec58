"""Huang et al.'s greedy load balancing ("Toward Efficient Inference for Mixture of Experts",
NeurIPS 2024, arXiv 2303.06182, Sec. 6): per layer, sort experts by historical load (heaviest
first; ties smaller id) and assign each to the least-loaded GPU that still has a free slot (ties
smaller GPU id), with an equal number of experts per GPU (``ceil(E / G)`` slots). One copy each.
Their anti-correlation variant is ``anticorr``.
"""

from __future__ import annotations

import numpy as np

from sim.policies.base import PLACEMENT, Placement, PlacementPolicy
from sim.policies.placement._greedy import greedy_layer


@PLACEMENT.register("greedy")
class GreedyPlacement(PlacementPolicy):
    def place(self, load: np.ndarray) -> Placement:
        load = np.asarray(load, dtype=np.float64)  # (L, E)
        reps = [[(g,) for g in greedy_layer(load[l], self.num_gpus)] for l in range(load.shape[0])]
        return Placement(num_gpus=self.num_gpus, replicas=reps)
