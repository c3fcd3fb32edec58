"""eMoE task-aware expert loading (Tairin et al., arXiv 2503.06823, Sec. 4.3).

Config data: ``sensitivity[task]`` -- per-layer 0/1 (or one value for every layer): whether the
task is sensitive at that layer (insensitive: output similarity stays above 85% under random
routing); ``output_tokens[task]`` -- the task's profiled output length W_o. Insensitive
(task, layer) pairs skip prediction.

For each layer, expert i's expected tokens ``N_i = sum over tasks of (sum_j W_j + T x W_o) x s x
f_i``, with W_j the input lengths and T the number of running requests of that task, s its
sensitivity at the layer and f_i the task's predicted routing frequency of expert i there (the
share of its tokens routed to i, learned from ``observe``; uniform until observed). The ``top``
(L in the paper) experts with positive N_i per layer are loaded. Running requests come from
``ctx.extra["running"]`` as (task, prompt_tokens) pairs, the new request included; without it,
the new request alone.

:func:`reroute` is the optional rerouting: a token whose chosen expert is absent goes to its best
resident expert not already chosen; rerouted choices count against routing fidelity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy
from sim.policies.prefetch._ids import top_ids


def reroute(experts: np.ndarray, resident: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """experts (n, K) chosen ids, resident (E,) bool, scores (n, E) router scores (or (E,) one
    preference for every token). Absent choices go to the best-scoring resident expert not
    already chosen by that token (ties smaller id); with none left the choice stays. Returns the
    new (n, K) ids and how many choices were rerouted."""
    ex = np.array(experts, dtype=np.int64)  # (n, K)
    n, K = ex.shape
    sc = np.broadcast_to(np.asarray(scores, dtype=np.float64), (n, len(resident)))
    moved = 0
    for t in np.flatnonzero(~resident[ex].all(axis=1)):
        order = np.lexsort((np.arange(len(resident)), -sc[t]))  # best first
        taken = set(ex[t].tolist())
        cands = [int(e) for e in order if resident[e] and e not in taken]
        for k in range(K):
            if not resident[ex[t, k]] and cands:
                ex[t, k] = cands.pop(0)
                moved += 1
    return ex, moved


@dataclass(frozen=True)
class EMoETaskConfig:
    top: int | None = None  # experts loaded per layer (L in the paper; None: all)
    sensitivity: dict[str, Any] | None = None  # task -> 0/1 per layer (or one for all)
    output_tokens: dict[str, float] | None = None  # task -> profiled output length W_o
    default_output_tokens: float = 128  # W_o of a task not in output_tokens


@PREFETCH.register("emoe_task")
class TaskAwareLoading(PrefetchPolicy):
    Config = EMoETaskConfig
    plans_requests = True
    observes = True

    def setup(self) -> None:
        top, sensitivity = self.cfg.top, self.cfg.sensitivity
        output_tokens, default_output_tokens = self.cfg.output_tokens, self.cfg.default_output_tokens
        self.top = top if top is not None else self.num_experts
        self.sens: dict[str, np.ndarray] = {}
        for task, s in (sensitivity or {}).items():
            arr = np.broadcast_to(np.asarray(s, dtype=np.float64), (self.num_layers,)).copy()
            if not np.isin(arr, (0.0, 1.0)).all():
                raise ConfigError(f"emoe_task: sensitivity of task {task!r} must be 0/1 per layer")
            self.sens[task] = arr
        self.wo = dict(output_tokens or {})
        self.default_wo = default_output_tokens
        self._counts: dict[str, np.ndarray] = {}  # task -> (L, E) tokens routed

    def sensitivity(self, task: str) -> np.ndarray:
        return self.sens.get(task, np.ones(self.num_layers))

    def frequency(self, task: str) -> np.ndarray:
        """(L, E) predicted routing share f_i per layer (uniform before any observation)."""
        c = self._counts.get(task)
        if c is None or not c.any():
            return np.full((self.num_layers, self.num_experts), 1.0 / self.num_experts)
        tot = c.sum(axis=1, keepdims=True)
        return np.divide(c, tot, out=np.full(c.shape, 1.0 / self.num_experts), where=tot > 0)

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:
        c = self._counts.setdefault(ctx.task, np.zeros((self.num_layers, self.num_experts)))
        c[layer] += np.bincount(np.asarray(experts, dtype=np.int64).reshape(-1),
                                minlength=self.num_experts)

    def expected_tokens(self, running: list[tuple[str, int]]) -> np.ndarray:
        """(L, E) N_i summed over the tasks of ``running``."""
        N = np.zeros((self.num_layers, self.num_experts))
        for task in dict.fromkeys(t for t, _ in running):
            W = sum(int(w) for t, w in running if t == task)
            T = sum(1 for t, _ in running if t == task)
            wo = float(self.wo.get(task, self.default_wo))
            N += (W + T * wo) * self.sensitivity(task)[:, None] * self.frequency(task)
        return N

    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        running = ctx.extra.get("running") or [(ctx.task, ctx.prompt_tokens)]
        N = self.expected_tokens(list(running))
        return {l: top_ids(N[l], self.top) for l in range(self.num_layers) if N[l].any()}
