"""Exhaustive placement: the oracle for small cases. Per layer, tries every assignment of the E
experts to G GPUs with an equal number per GPU (``E / G``, E a multiple of G), one copy each, and
keeps the one with the smallest maximum GPU load (ties: the first in lexicographic order of owner
vectors, GPUs symmetric so expert 0 is on GPU 0). Planned on the loads it is given: handed the
evaluation window's loads it is the offline optimum Huang et al.'s NP-hard objective asks for.
Refuses more than ``max_experts`` experts per layer (the search is multinomial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PLACEMENT, Placement, PlacementPolicy


def best_layer(load: np.ndarray, G: int) -> tuple[float, list[int]]:
    E = len(load)
    cap = E // G
    best: list[Any] = [np.inf, None]
    owner = [-1] * E
    gl = [0.0] * G
    cnt = [0] * G

    def rec(e: int, used: int) -> None:
        if max(gl) >= best[0]:
            return
        if e == E:
            best[0], best[1] = max(gl), list(owner)
            return
        for g in range(min(used + 1, G)):  # symmetry: a new GPU only as the next unused one
            if cnt[g] < cap:
                owner[e] = g
                gl[g] += load[e]
                cnt[g] += 1
                rec(e + 1, max(used, g + 1))
                gl[g] -= load[e]
                cnt[g] -= 1

    rec(0, 0)
    return float(best[0]), best[1]


@dataclass(frozen=True)
class ExhaustiveConfig:
    max_experts: int = 16  # refuse larger layers (the search is multinomial)


@PLACEMENT.register("exhaustive")
class ExhaustivePlacement(PlacementPolicy):
    Config = ExhaustiveConfig

    def setup(self) -> None:
        self.max_experts = self.cfg.max_experts

    def place(self, load: np.ndarray) -> Placement:
        load = np.asarray(load, dtype=np.float64)  # (L, E)
        L, E = load.shape
        G = self.num_gpus
        if E % G:
            raise ConfigError(f"exhaustive placement needs experts {E} to be a multiple of GPUs {G}")
        if E > self.max_experts:
            raise ConfigError(f"exhaustive placement over {E} experts is too large "
                              f"(max_experts={self.max_experts})")
        reps = [[(g,) for g in best_layer(load[l], G)[1]] for l in range(L)]
        return Placement(num_gpus=G, replicas=reps)
