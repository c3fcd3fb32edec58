"""The perfect predictors' shared base: it reads the trace's future (``set_trace``).

In the cache replay the driver names the token (``ctx.extra["token"]``). In the simulator a
next-layer oracle (``batch_rows``) is given the routing pool once (``set_routing``, by
:class:`sim.serving.prediction.Prediction`) and, before each iteration, the pool rows of the batch's
tokens (``batch``); its truth for layer l+1 is then the union of those rows' experts there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PrefetchContext, PrefetchPolicy


class TraceOracle(PrefetchPolicy):
    requires_future = True

    def setup(self) -> None:
        self._ex: np.ndarray | None = None
        self._bounds: dict[str, tuple[int, int]] = {}
        self._batch: np.ndarray | None = None  # (T,) pool rows of the simulator's batch

    def set_trace(self, trace: Any) -> None:
        self.set_routing(trace.experts)
        b = trace.request_bounds()
        self._bounds = {str(r): (int(b[i]), int(b[i + 1])) for i, r in enumerate(trace.request_ids())}

    def set_routing(self, experts: np.ndarray) -> None:
        """The routing the driver replays, (N, L, K): the trace's tokens, or the simulator's pool."""
        self._ex = np.asarray(experts, dtype=np.int64)  # (N, L, K)

    def batch(self, rows: np.ndarray) -> None:
        """The simulator's next iteration serves the tokens of pool rows ``rows`` (T,)."""
        self._batch = np.asarray(rows, dtype=np.int64)

    def _truth_next(self, ctx: PrefetchContext, layer: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The experts layer ``layer + 1`` will use (sorted), and the key that seeds a noisy
        copy of them: (token, 1) for a replay token, (first row, rows) for a simulator batch,
        (first row of the request, -1) for a whole request."""
        if self._ex is None:
            raise ConfigError(f"prefetch policy {self.name!r} reads the future: call set_trace()")
        if "token" in ctx.extra:
            t = int(ctx.extra["token"])
            return np.sort(self._ex[t, layer + 1]), (t, 1)
        if self._batch is not None:
            rows = self._batch
            key = (int(rows[0]) if len(rows) else 0, len(rows))
            return np.unique(self._ex[rows, layer + 1]), key
        rows = self._rows(ctx)  # (a request not in the trace is refused here)
        return np.unique(rows[:, layer + 1]), (self._bounds[ctx.request_id][0], -1)

    def _rows(self, ctx: PrefetchContext) -> np.ndarray:
        if self._ex is None:
            raise ConfigError(f"prefetch policy {self.name!r} reads the future: call set_trace()")
        if ctx.request_id not in self._bounds:
            raise ConfigError(f"{self.name}: request {ctx.request_id!r} is not in the trace")
        a, b = self._bounds[ctx.request_id]
        return self._ex[a:b]  # (n, L, K)
