"""Perfect next-layer prediction: the prefetch oracle (``perfect_request`` is its per-prompt
sibling). It reads the trace's future (``set_trace``; in the simulator ``set_routing`` and
``batch``, see :mod:`sim.policies.prefetch._oracle`).

``next_layer(ctx, l, experts)`` returns exactly the experts token ``ctx.extra["token"]`` uses at
layer l+1 (the replay sets it); in the simulator, those of the iteration's batch; otherwise the
request's experts at layer l+1 over all its tokens.

``lead`` d (default 1): at layer l it names those of layer l+d instead, so its copies start d
layers ahead (the simulator then loads them for layer l+d, :mod:`sim.serving.prediction`): the
comparison for a predictor that looks d layers ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext
from sim.policies.prefetch._oracle import TraceOracle


@dataclass(frozen=True)
class PerfectConfig:
    lead: int = 1  # layers ahead: at layer l, the experts of layer l + lead


@PREFETCH.register("perfect")
class PerfectNextLayer(TraceOracle):
    Config = PerfectConfig
    predicts_next_layer = True
    batch_rows = True

    def setup(self) -> None:
        super().setup()
        if not 1 <= self.cfg.lead < self.num_layers:
            raise ConfigError(f"perfect: lead={self.cfg.lead}; expected 1 <= lead < "
                              f"{self.num_layers} (the layers)")
        self.lead = int(self.cfg.lead)

    def next_layers(self, ctx: PrefetchContext, used: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """In a simulator's batch (see the base class): at layer l the experts layer l + lead
        uses, in increasing id order. The driver's ``used`` is the batch's truth: both are the
        union of the batch's pool rows' experts (the walk counts those rows; tests hold the two
        forms to the same runs). None outside a simulator's batch."""
        if self._batch is None or "token" in ctx.extra:
            return None
        L, E, d = self.num_layers, self.num_experts, self.lead
        u = np.asarray(used, dtype=bool).reshape(L, E)
        ranked = np.zeros((L, E), dtype=np.int64)
        n = np.zeros(L, dtype=np.int64)
        if d < L:
            ranked[:L - d] = np.argsort(~u[d:], axis=1, kind="stable")  # (the used, by id)
            n[:L - d] = u[d:].sum(axis=1)
        return ranked, n

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if layer + self.lead >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        return self._truth_next(ctx, layer + self.lead - 1)[0]
