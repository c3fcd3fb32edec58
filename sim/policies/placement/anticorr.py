"""Huang et al.'s anti-correlation placement ("Toward Efficient Inference for Mixture of Experts",
NeurIPS 2024, arXiv 2303.06182, Sec. 6): their greedy (``greedy``), where the cost of putting
expert e on GPU g is g's load share plus ``weight`` (0.5) x the summed Pearson correlation between
e's per-batch load and that of the experts already on g, so experts that peak together are split.
Correlations come from ``fit_history(history)`` with per-batch loads (B, L, E); without history
it is the greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.policies.base import PLACEMENT, Placement, PlacementPolicy
from sim.policies.placement._greedy import greedy_layer


@dataclass(frozen=True)
class AntiCorrConfig:
    weight: float = 0.5  # weight of the correlation term in the cost


@PLACEMENT.register("anticorr")
class AntiCorrelationPlacement(PlacementPolicy):
    Config = AntiCorrConfig

    def setup(self) -> None:
        self.weight = self.cfg.weight
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
