"""Contiguous expert placement, as expert parallelism in GShard / DeepSpeed-MoE shards it: GPU g
of an expert-parallel group of G holds experts ``g*E/G .. (g+1)*E/G - 1`` of every layer (with
E < G, expert e sits on GPU ``e*G // E``; when E is not a multiple of G the first GPUs take one
more). One copy of each expert, no replication."""

from __future__ import annotations

import numpy as np

from sim.policies.base import PLACEMENT, Placement, PlacementPolicy


@PLACEMENT.register("contiguous")
class ContiguousPlacement(PlacementPolicy):
    def place(self, load: np.ndarray) -> Placement:
        L, E = load.shape
        G = self.num_gpus
        # np.array_split semantics: the first E % G GPUs hold one more expert
        owner = np.concatenate([np.full(len(c), g) for g, c in enumerate(np.array_split(np.arange(E), G))]) \
            if E >= G else (np.arange(E) * G) // E
        row = [(int(owner[e]),) for e in range(E)]
        return Placement(num_gpus=G, replicas=[list(row) for _ in range(L)])
