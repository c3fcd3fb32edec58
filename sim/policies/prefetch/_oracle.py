"""The perfect predictors' shared base: it reads the trace's future (``set_trace``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.errors import ConfigError
from sim.policies.base import PrefetchContext, PrefetchPolicy


class TraceOracle(PrefetchPolicy):
    requires_future = True

    def __init__(self, num_layers: int, num_experts: int, top_k: int, cfg: Any = None) -> None:
        super().__init__(num_layers, num_experts, top_k, cfg)
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
