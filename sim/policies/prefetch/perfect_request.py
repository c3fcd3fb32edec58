"""Perfect per-prompt prediction: the ceiling for eMoE-A. It reads the trace's future
(``set_trace``): ``on_request(ctx)`` returns, per layer, every expert the request will use,
most-used first (ties: smaller id)."""

from __future__ import annotations

import numpy as np

from sim.policies.base import PREFETCH, PrefetchContext
from sim.policies.prefetch._ids import top_ids
from sim.policies.prefetch._oracle import TraceOracle


@PREFETCH.register("perfect_request")
class PerfectRequest(TraceOracle):
    plans_requests = True

    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        rows = self._rows(ctx)
        return {l: top_ids(np.bincount(rows[:, l].reshape(-1), minlength=self.num_experts)
                           .astype(np.float64), self.num_experts)
                for l in range(self.num_layers)}
