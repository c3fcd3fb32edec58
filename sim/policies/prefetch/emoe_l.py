"""eMoE-L (Tairin et al., "eMoE: task-aware memory-efficient MoE inference", arXiv 2503.06823,
Sec. 3-4): predict layer l+1's experts from the experts layer l just used, using layer-to-layer
transition statistics (their Fig. 3 shows these transitions are concentrated).

Statistics: ``M[l, i, j]`` = how often expert i at layer l was followed by expert j at layer l+1
in the same token. Learned on training traces with :meth:`fit` (experts (T, L, K)), and online
from ``observe`` (which records the experts each layer used; consecutive layers of the same
request are paired). ``next_layer(ctx, l, experts)`` scores each expert j of layer l+1 by
``sum_{i in experts} M[l, i, j]`` and returns the ``num_predict`` best with a positive score
(ties: smaller id), ``num_predict`` defaulting to top_k x the number of experts given, capped at
``max_predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy
from sim.policies.prefetch._ids import top_ids


@dataclass(frozen=True)
class EMoELConfig:
    num_predict: int | None = None  # experts predicted (None: top_k x experts given)
    max_predict: int | None = None  # cap on num_predict
    learn_online: bool = True  # learn transitions from observe()


@PREFETCH.register("emoe_l")
class EMoELayerPrefetch(PrefetchPolicy):
    Config = EMoELConfig
    predicts_next_layer = True
    observes = True

    def setup(self) -> None:
        num_predict, max_predict = self.cfg.num_predict, self.cfg.max_predict
        learn_online = self.cfg.learn_online
        if num_predict is not None and num_predict < 0:
            raise ConfigError(f"emoe_l: num_predict must be >= 0, got {num_predict}")
        self.num_predict, self.max_predict = num_predict, max_predict
        self.learn_online = learn_online
        L, E = self.num_layers, self.num_experts
        self.M = np.zeros((max(L - 1, 0), E, E), dtype=np.float64)  # (L-1, E, E)
        self._prev: tuple[str, int, np.ndarray] | None = None

    def fit(self, experts: np.ndarray) -> EMoELayerPrefetch:
        """Add transition counts from a training trace's experts (T, L, K)."""
        ex = np.asarray(experts, dtype=np.int64)
        T, L, K = ex.shape
        for l in range(L - 1):
            a = np.repeat(ex[:, l, :], K, axis=1).reshape(-1)  # (T*K*K,)
            b = np.tile(ex[:, l + 1, :], (1, K)).reshape(-1)
            np.add.at(self.M[l], (a, b), 1.0)
        return self

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:
        if not self.learn_online:
            return
        if not 0 <= layer < self.num_layers:
            raise ConfigError(f"emoe_l: observed layer {layer}; the model has {self.num_layers}")
        ex = np.asarray(experts, dtype=np.int64)
        cur = ex.reshape(-1, ex.shape[-1]) if ex.ndim > 1 else ex.reshape(1, -1)  # (n, K)
        prev = self._prev
        # (the previous layer observed, so 1 <= layer <= L - 1: a row of M)
        if prev is not None and prev[0] == ctx.request_id and prev[1] == layer - 1 and \
                prev[2].shape[0] == cur.shape[0]:
            K1, K2 = prev[2].shape[1], cur.shape[1]
            a = np.repeat(prev[2], K2, axis=1).reshape(-1)
            b = np.tile(cur, (1, K1)).reshape(-1)
            np.add.at(self.M[layer - 1], (a, b), 1.0)
        self._prev = (ctx.request_id, layer, cur)

    def next_layers(self, ctx: PrefetchContext, used: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """``observe`` then ``next_layer`` for every layer of an iteration (see the base class):
        ``next_layer(l)`` reads ``M[l]``, which only ``observe(l + 1)`` changes, after it, so
        every guess reads the counts as the iteration found them, and the observations add one
        to ``M[l - 1][i, j]`` for each i used at l - 1 and j at l (layer 0 pairs with nothing
        before it). The scores are sums of counts (integers in float64: exact in any order); the
        ranking is :func:`top_ids`' (a stable sort by score keeps ties in id order, and the
        positive scores come first)."""
        L, E = self.num_layers, self.num_experts
        u = np.asarray(used, dtype=bool).reshape(L, E)
        ranked = np.zeros((L, E), dtype=np.int64)
        n = np.zeros(L, dtype=np.int64)
        if L > 1:
            score = np.matmul(u[:-1, None, :].astype(np.float64), self.M)[:, 0, :]  # (L-1, E)
            order = np.argsort(-score, axis=1, kind="stable")
            ranked[:-1] = order
            pos = (np.take_along_axis(score, order, axis=1) > 0).sum(axis=1)  # (L-1,)
            want = np.full(L - 1, self.num_predict, dtype=np.int64) if self.num_predict is \
                not None else self.top_k * np.maximum(1, u[:-1].sum(axis=1))
            if self.max_predict is not None:
                want = np.minimum(want, self.max_predict)
            n[:-1] = np.minimum(np.minimum(want, E), pos)
        if self.learn_online:
            if L > 1:
                self.M += u[:-1, :, None] & u[1:, None, :]
            self._prev = (ctx.request_id, L - 1, np.flatnonzero(u[L - 1]).reshape(1, -1))
        return ranked, n

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if layer + 1 >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        ids = np.unique(np.asarray(experts, dtype=np.int64).reshape(-1))
        n = self.num_predict if self.num_predict is not None else self.top_k * max(1, len(ids))
        if self.max_predict is not None:
            n = min(n, self.max_predict)
        score = self.M[layer][ids].sum(axis=0)  # (E,)
        return top_ids(score, min(n, self.num_experts))
