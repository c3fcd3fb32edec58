"""DeepSeek-EPLB-style redundant experts (deepseek-ai/EPLB, ``rebalance_experts``): replicate hot
experts, then pack the replicas onto GPUs so each GPU gets the same number of expert slots and
about the same load; hierarchical when ``num_nodes > 1`` (experts packed to nodes first, then
replicated and packed to each node's GPUs).

Per layer, with ``S = (E + R) / G`` slots per GPU (``R = num_redundant``, ``E + R`` a multiple of
G): (1) replication: R times, give one more replica to the expert with the largest load per
replica (ties smaller id); (2) balanced packing: replicas heaviest first (load / replicas; ties
smaller expert id) to the least-loaded GPU with a free slot that does not hold that expert yet
(ties smaller GPU id). Hierarchical: experts are first packed to nodes with ``E / num_nodes``
each by the same balanced packing, then each node replicates within its share ``R / num_nodes``
and packs to its GPUs. A GPU never holds more than S replicas (tests/sim/replay/test_placement.py).
Load prediction is left to the caller, as in EPLB (the planning window's loads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PLACEMENT, Placement, PlacementPolicy


def replicate(load: np.ndarray, total: int, max_per: int) -> np.ndarray:
    """Replica counts (E,) summing to ``total`` >= E, hottest per replica first, at most
    ``max_per`` each (a GPU never holds two copies of one expert)."""
    E = len(load)
    if total > E * max_per:
        raise ConfigError(f"eplb: {total} replicas of {E} experts need more than {max_per} GPUs")
    reps = np.ones(E, dtype=np.int64)
    for _ in range(total - E):
        per = np.where(reps < max_per, load / reps, -np.inf)
        e = int(np.lexsort((np.arange(E), -per))[0])
        reps[e] += 1
    return reps


def pack(weights: np.ndarray, items: np.ndarray, bins: int, cap: int) -> list[list[int]]:
    """Balanced packing: item i (weight ``weights[i]``, identity ``items[i]``) heaviest first to the
    least-loaded bin with room not already holding that identity (if possible)."""
    order = np.lexsort((items, -weights))
    load = np.zeros(bins)
    out: list[list[int]] = [[] for _ in range(bins)]
    for i in order:
        free = [b for b in range(bins) if len(out[b]) < cap]
        if not free:
            raise ConfigError(f"packing {len(items)} items into {bins} bins of {cap} slots")
        fresh = [b for b in free if items[i] not in out[b]] or free
        b = min(fresh, key=lambda b: (load[b], b))
        out[b].append(int(items[i]))
        load[b] += weights[i]
    return out


@dataclass(frozen=True)
class EPLBConfig:
    num_redundant: int | None = None  # extra replicas per layer (None: to fill the last GPU slot row)
    num_nodes: int = 1  # > 1: hierarchical (nodes first, then each node's GPUs)


@PLACEMENT.register("eplb")
class EPLBPlacement(PlacementPolicy):
    Config = EPLBConfig

    def setup(self) -> None:
        num_redundant, num_nodes = self.cfg.num_redundant, self.cfg.num_nodes
        if num_nodes < 1 or self.num_gpus % num_nodes:
            raise ConfigError(f"eplb: num_gpus {self.num_gpus} must be a multiple of num_nodes {num_nodes}")
        self.num_redundant, self.num_nodes = num_redundant, num_nodes

    def place(self, load: np.ndarray) -> Placement:
        load = np.asarray(load, dtype=np.float64)  # (L, E)
        L, E = load.shape
        G, N = self.num_gpus, self.num_nodes
        R = self.num_redundant if self.num_redundant is not None else (-E) % G or G
        if (E + R) % G or E % N or R % N:
            raise ConfigError(f"eplb: experts {E} + redundant {R} must be a multiple of GPUs {G}, "
                              f"and both of nodes {N}")
        S, gpn = (E + R) // G, G // N
        reps = []
        for l in range(L):
            node_of = pack(load[l], np.arange(E), N, E // N)
            row: list[list[int]] = [[] for _ in range(E)]
            for n, experts in enumerate(node_of):
                ex = np.array(sorted(experts), dtype=np.int64)
                cnt = replicate(load[l, ex], len(ex) + R // N, gpn)
                items = np.repeat(ex, cnt)
                w = np.repeat(load[l, ex] / cnt, cnt)
                for j, members in enumerate(pack(w, items, gpn, S)):
                    for e in members:
                        row[e].append(n * gpn + j)
            reps.append([tuple(sorted(r)) for r in row])
        return Placement(num_gpus=G, replicas=reps)
