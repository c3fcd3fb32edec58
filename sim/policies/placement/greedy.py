"""Huang et al.'s greedy load balancing ("Toward Efficient Inference for Mixture of Experts",
NeurIPS 2024, arXiv 2303.06182, Sec. 6): per layer, sort experts by historical load (heaviest
first; ties smaller id) and assign each to the least-loaded GPU that still has a free slot (ties
smaller GPU id), with an equal number of experts per GPU (``ceil(E / G)`` slots). One copy each.

``anticorr`` is their anti-correlation variant: the cost of putting expert e on GPU g is g's load
share plus 0.5 x the summed Pearson correlation between e's per-batch load and that of the
experts already on g, so experts that peak together are split. Correlations come from
``fit_history(history)`` with per-batch loads (B, L, E); without history it is the greedy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.policies.base import PLACEMENT, Placement, PlacementPolicy


def greedy_layer(load: np.ndarray, G: int, corr: np.ndarray | None = None, weight: float = 0.5,
                 slots: int | None = None) -> list[int]:
    """Owner GPU of each of the E experts of one layer (see the module docstring)."""
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


@PLACEMENT.register("greedy")
class GreedyPlacement(PlacementPolicy):
    def place(self, load: np.ndarray) -> Placement:
        load = np.asarray(load, dtype=np.float64)  # (L, E)
        reps = [[(g,) for g in greedy_layer(load[l], self.num_gpus)] for l in range(load.shape[0])]
        return Placement(num_gpus=self.num_gpus, replicas=reps)


@PLACEMENT.register("anticorr")
class AntiCorrelationPlacement(PlacementPolicy):
    def __init__(self, num_gpus: int, weight: float = 0.5, **kw: Any) -> None:
        super().__init__(num_gpus, **kw)
        self.weight = weight
        self._corr: np.ndarray | None = None  # (L, E, E)

    def fit_history(self, history: np.ndarray) -> None:
        """Per-batch expert loads (B, L, E) -> Pearson correlations (L, E, E); constant experts 0."""
        h = np.asarray(history, dtype=np.float64)
        B, L, E = h.shape
        z = h - h.mean(axis=0)
        sd = np.sqrt((z ** 2).sum(axis=0))  # (L, E)
        zn = np.divide(z, sd, out=np.zeros_like(z), where=sd > 0)
        corr = np.einsum("ble,blf->lef", zn, zn)  # (L, E, E)
        idx = np.arange(E)
        corr[:, idx, idx] = 0.0
        self._corr = corr

    def place(self, load: np.ndarray) -> Placement:
        load = np.asarray(load, dtype=np.float64)  # (L, E)
        reps = []
        for l in range(load.shape[0]):
            c = None if self._corr is None else self._corr[l]
            reps.append([(g,) for g in greedy_layer(load[l], self.num_gpus, c, self.weight)])
        return Placement(num_gpus=self.num_gpus, replicas=reps)
