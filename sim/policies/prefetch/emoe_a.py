"""eMoE-A (Tairin et al., "eMoE: task-aware memory-efficient MoE inference", arXiv 2503.06823,
Sec. 4): predict the next prompt's expert set per layer from earlier prompts; the predictor reruns
only every ``period`` prompts (p = 40 in the paper), its last prediction standing in between.

This is the statistical stand-in for their XLNet predictor (the learned one is ``emoe_learned``,
same interface): the prediction for layer l ranks experts by how many tokens of the last
``window`` observed prompts used them (ties: smaller id) and returns the first ``set_size``
(default: all with a positive count).

Cold start: a prediction needs observed prompts, so a rerun with none observed (the first
request) names no experts and the plan stays empty until the next rerun (request ``period``):
the first prompts are served on demand, which is what eMoE's "the first prompt loads all experts"
comes to under a budget smaller than the model (an earlier version named every expert here,
and the drivers then loaded 1,664 experts into 832 slots for each of the first 40 requests).
``reruns`` counts the predictions made (an empty one not included); the plan returned between
two reruns is the same prediction, which a driver loads once (:mod:`sim.serving.prediction`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy
from sim.policies.prefetch._ids import top_ids


@dataclass(frozen=True)
class EMoEAConfig:
    period: int = 40  # prompts between predictor reruns (p in the paper)
    window: int = 40  # observed prompts the prediction ranks by
    set_size: int | None = None  # experts per layer (None: all with a positive count)


@PREFETCH.register("emoe_a")
class EMoEAPrefetch(PrefetchPolicy):
    Config = EMoEAConfig
    plans_requests = True
    observes = True

    def setup(self) -> None:
        period, window, set_size = self.cfg.period, self.cfg.window, self.cfg.set_size
        if period < 1 or window < 1:
            raise ConfigError(f"emoe_a: period and window must be >= 1, got {period}, {window}")
        self.period, self.window, self.set_size = period, window, set_size
        self._done: deque[np.ndarray] = deque(maxlen=window)  # finished prompts' (L, E) counts
        self._cur: np.ndarray | None = None
        self._cur_id: str | None = None
        self._plan: dict[int, np.ndarray] | None = None
        self.reruns = 0

    def _close_current(self) -> None:
        if self._cur is not None:
            self._done.append(self._cur)
        self._cur, self._cur_id = None, None

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:
        if self._cur_id != ctx.request_id:
            self._close_current()
            self._cur = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)  # (L, E)
            self._cur_id = ctx.request_id
        ids = np.asarray(experts, dtype=np.int64).reshape(-1)
        self._cur[layer] += np.bincount(ids, minlength=self.num_experts)

    def next_layers(self, ctx: PrefetchContext, used: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``observe`` of every layer of an iteration at once (see the base class): the prompt's
        counts gain one for each expert a layer used (a layer's experts are distinct: its
        bincount is the row); no guess for a next layer (it plans requests only)."""
        L, E = self.num_layers, self.num_experts
        u = np.asarray(used, dtype=bool).reshape(L, E)
        if self._cur_id != ctx.request_id:  # (observe's first call of a new prompt)
            self._close_current()
            self._cur = np.zeros((L, E), dtype=np.int64)
            self._cur_id = ctx.request_id
        self._cur += u
        return np.zeros((L, 0), dtype=np.int64), np.zeros(L, dtype=np.int64)

    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        if self._cur_id != ctx.request_id:
            self._close_current()
        if self._plan is None or ctx.request_index % self.period == 0:
            if not self._done:
                self._plan = {}  # nothing observed: no prediction until the next rerun
            else:
                self.reruns += 1
                counts = np.sum(self._done, axis=0)  # (L, E)
                n = self.set_size or self.num_experts
                self._plan = {l: top_ids(counts[l].astype(np.float64), n)
                              for l in range(self.num_layers)}
        return dict(self._plan)
