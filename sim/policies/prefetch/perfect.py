"""Perfect prediction: the prefetch oracle. It reads the trace's future (``set_trace``).

- ``perfect`` (next layer): ``next_layer(ctx, l, experts)`` returns exactly the experts token
  ``ctx.extra["token"]`` uses at layer l+1 (the replay sets it; without it, the request's
  experts at layer l+1 over all its tokens).
- ``perfect_request`` (per prompt): ``on_request(ctx)`` returns, per layer, every expert the
  request will use, most-used first (ties: smaller id) -- the ceiling for eMoE-A.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy
from sim.policies.emoe_l import top_ids


class _Oracle(PrefetchPolicy):
    requires_future = True

    def __init__(self, num_layers: int, num_experts: int, top_k: int, **kw: Any) -> None:
        super().__init__(num_layers, num_experts, top_k)
        self._ex: np.ndarray | None = None
        self._bounds: dict[str, tuple[int, int]] = {}

    def set_trace(self, trace: Any) -> None:
        self._ex = np.asarray(trace.experts, dtype=np.int64)  # (T, L, K)
        b = trace.request_bounds()
        self._bounds = {str(r): (int(b[i]), int(b[i + 1])) for i, r in enumerate(trace.request_ids())}

    def _rows(self, ctx: PrefetchContext) -> np.ndarray:
        if self._ex is None:
            raise ConfigError(f"prefetch policy {self.name!r} reads the future: call set_trace()")
        if ctx.request_id not in self._bounds:
            raise ConfigError(f"{self.name}: request {ctx.request_id!r} is not in the trace")
        a, b = self._bounds[ctx.request_id]
        return self._ex[a:b]  # (n, L, K)


@PREFETCH.register("perfect")
class PerfectNextLayer(_Oracle):
    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if layer + 1 >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        if "token" in ctx.extra:
            assert self._ex is not None
            return np.sort(self._ex[int(ctx.extra["token"]), layer + 1])
        return np.unique(self._rows(ctx)[:, layer + 1])


@PREFETCH.register("perfect_request")
class PerfectRequest(_Oracle):
    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        rows = self._rows(ctx)
        return {l: top_ids(np.bincount(rows[:, l].reshape(-1), minlength=self.num_experts)
                           .astype(np.float64), self.num_experts)
                for l in range(self.num_layers)}
