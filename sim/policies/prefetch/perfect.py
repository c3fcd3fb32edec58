"""Perfect next-layer prediction: the prefetch oracle (``perfect_request`` is its per-prompt
sibling). It reads the trace's future (``set_trace``; in the simulator ``set_routing`` and
``batch``, see :mod:`sim.policies.prefetch._oracle`).

``next_layer(ctx, l, experts)`` returns exactly the experts token ``ctx.extra["token"]`` uses at
layer l+1 (the replay sets it); in the simulator, those of the iteration's batch; otherwise the
request's experts at layer l+1 over all its tokens.
"""

from __future__ import annotations

import numpy as np

from sim.policies.base import PREFETCH, PrefetchContext
from sim.policies.prefetch._oracle import TraceOracle


@PREFETCH.register("perfect")
class PerfectNextLayer(TraceOracle):
    predicts_next_layer = True
    batch_rows = True

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if layer + 1 >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        return self._truth_next(ctx, layer)[0]
