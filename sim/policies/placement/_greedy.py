"""Huang et al.'s greedy assignment of one layer's experts to GPUs (shared by ``greedy`` and
``anticorr``, which adds a correlation term to the cost)."""

from __future__ import annotations

import numpy as np


def greedy_layer(load: np.ndarray, G: int, corr: np.ndarray | None = None, weight: float = 0.5,
                 slots: int | None = None) -> list[int]:
    """Owner GPU of each of the E experts of one layer: experts heaviest first (ties smaller id),
    each to the GPU of least cost with a free slot (``slots`` per GPU, default ``ceil(E / G)``;
    ties smaller GPU id); cost = the GPU's share of the load so far, plus ``weight`` x the summed
    ``corr`` (E, E) between the expert and those already on the GPU when ``corr`` is given."""
    E = len(load)
    cap = slots if slots is not None else -(-E // G)
    order = np.lexsort((np.arange(E), -load))  # heaviest first, ties smaller id
    gpu_load = np.zeros(G)
    count = np.zeros(G, dtype=np.int64)
    owner = [-1] * E
    members: list[list[int]] = [[] for _ in range(G)]
    total = float(load.sum()) or 1.0
    for e in order:
        best, best_cost = -1, np.inf
        for g in range(G):
            if count[g] >= cap:
                continue
            cost = gpu_load[g] / total
            if corr is not None and members[g]:
                cost += weight * float(corr[e, members[g]].sum())
            if cost < best_cost:
                best, best_cost = g, cost
        owner[int(e)] = best
        gpu_load[best] += load[e]
        count[best] += 1
        members[best].append(int(e))
    return owner
