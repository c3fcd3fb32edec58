"""MoE-Infinity-style trace-similarity prefetch (Xue et al., arXiv 2401.14361, "activation-aware
prefetching"; EfficientMoE/MoE-Infinity): each request builds an expert activation matrix
(layer x expert token counts); past requests' matrices form a library; the current request's
matrix so far is matched to the library by cosine similarity, and the best match's experts at the
next layer are prefetched.

``next_layer(ctx, l, experts)`` returns the ``num_predict`` (default top_k x 2) experts the most
similar past request used most at layer l+1 (ties: smaller id); the match is recomputed when the
request has observed ``refresh`` more layer steps since the last match (default: every layer
step). The library keeps the last ``max_history`` finished requests. No history: nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy
from sim.policies.prefetch._ids import top_ids


@dataclass(frozen=True)
class SimilarityConfig:
    num_predict: int | None = None  # experts predicted (None: 2 x top_k)
    max_history: int = 1000  # finished requests kept in the library
    refresh: int = 1  # layer steps between re-matches


@PREFETCH.register("similarity")
class TraceSimilarityPrefetch(PrefetchPolicy):
    Config = SimilarityConfig
    plans_requests = True
    predicts_next_layer = True
    observes = True

    def setup(self) -> None:
        num_predict, max_history = self.cfg.num_predict, self.cfg.max_history
        refresh = self.cfg.refresh
        if max_history < 1 or refresh < 1:
            raise ConfigError("similarity: max_history and refresh must be >= 1")
        self.num_predict = num_predict if num_predict is not None else 2 * self.top_k
        self.refresh = refresh
        self._lib: deque[np.ndarray] = deque(maxlen=max_history)  # (L*E,) unit vectors
        self._lib_mat: np.ndarray | None = None  # np.stack(self._lib), built once per change
        self._lib_raw: deque[np.ndarray] = deque(maxlen=max_history)  # (L, E) counts
        self._cur: np.ndarray | None = None
        self._cur_id: str | None = None
        self._since = 0
        self._match: int | None = None

    def _start(self, rid: str) -> None:
        if self._cur is not None and self._cur.any():
            v = self._cur.reshape(-1).astype(np.float64)
            self._lib.append(v / np.linalg.norm(v))
            self._lib_raw.append(self._cur)
            self._lib_mat = None
        self._cur = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)  # (L, E)
        self._cur_id, self._since, self._match = rid, 0, None

    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        if self._cur_id != ctx.request_id:
            self._start(ctx.request_id)
        return {}

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:
        if self._cur_id != ctx.request_id:
            self._start(ctx.request_id)
        ids = np.asarray(experts, dtype=np.int64).reshape(-1)
        self._cur[layer] += np.bincount(ids, minlength=self.num_experts)
        self._since += 1

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if not self._lib or layer + 1 >= self.num_layers or self._cur is None:
            return np.zeros(0, dtype=np.int64)
        if self._match is None or self._since >= self.refresh:
            if self._lib_mat is None:  # (the same matrix as stacking it at every match)
                self._lib_mat = np.stack(self._lib)  # (N, L*E)
            lib = self._lib_mat
            sims = lib @ self._cur.reshape(-1).astype(np.float64)  # (N,)
            self._match = int(np.argmax(sims))  # first maximum: the oldest of equals
            self._since = 0
        return top_ids(self._lib_raw[self._match][layer + 1].astype(np.float64), self.num_predict)
