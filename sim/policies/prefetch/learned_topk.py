"""The learned per-token predictor as a next-layer prefetcher, its top-k taken as is (the rule
``learned_next`` had before it weighed each expert; kept to compare).

At layer l, the experts predicted for layer l+1 of the tokens being served are prefetched: in the
cache replay the token ``ctx.extra["token"]``, in the simulator the union over the iteration's
batch (copies start at layer l's gate time and layer l+1 waits for those still in flight: late
copies are stall; :mod:`sim.serving.prediction`, :mod:`sim.serving.walk`). The predictions are the
layer-causal per-token model's, computed once over ``trace_path`` by
:func:`sim.predictor.table.next_layer_table` (inputs known before layer l+1 runs: the token's
context and its true experts at layers < l+1) and cached beside the checkpoint.

Cost: ``cost_s()`` is charged on every layer of an iteration (the simulator's prediction-cost
path): ``call_s_per_token`` x the batch's tokens, where ``call_s_per_token`` defaults to the
measured batched scoring time per token divided by L (one forward predicts all L layers of a
token; this machine, when the table was built).

It counts what it predicted against what the next layer used (``accuracy()``: micro recall and
precision of the predicted sets; per token in the replay, per batch union in the simulator), so
a noisy oracle can be set to the same accuracy.

torch is imported only when the table is built (inside :mod:`sim.predictor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy

_TABLES: dict[tuple[str, str], Any] = {}  # (checkpoint, trace) -> (table, trace experts)


@dataclass(frozen=True)
class LearnedTopKConfig:
    checkpoint: str = ""  # predictor directory from 'moesim predictor train' (required)
    trace_path: str = ""  # the routing trace the driver replays (required; its prediction table)
    call_s_per_token: float | None = None  # seconds per token per layer (None: measured)


def _load(checkpoint: str, trace_path: str) -> tuple[Any, np.ndarray]:
    key = (checkpoint, trace_path)
    if key not in _TABLES:
        from sim.common.files import require_file
        from sim.predictor.table import next_layer_table
        from traces.format import read_trace

        trace = read_trace(require_file(trace_path, "policy.prefetch_args.trace_path"))
        _TABLES[key] = (next_layer_table(checkpoint, trace), np.asarray(trace.experts))
    return _TABLES[key]


@PREFETCH.register("learned_topk")
class LearnedTopK(PrefetchPolicy):
    Config = LearnedTopKConfig
    predicts_next_layer = True
    batch_rows = True

    def setup(self) -> None:
        if not self.cfg.checkpoint or not self.cfg.trace_path:
            raise ConfigError("prefetch policy learned_topk needs checkpoint=DIR (from 'moesim "
                              "predictor train') and trace_path=FILE (the routing trace replayed)")
        cs = self.cfg.call_s_per_token
        if cs is not None and not cs >= 0:
            raise ConfigError(f"learned_topk: call_s_per_token={cs}; expected >= 0")
        table, ex = _load(str(self.cfg.checkpoint), str(self.cfg.trace_path))
        if table.top.shape[1] != self.num_layers or ex.shape[1:] != (self.num_layers, self.top_k):
            raise ConfigError(f"{self.cfg.trace_path}: routing has {ex.shape[1]} layers, top-"
                              f"{ex.shape[2]}; the model has {self.num_layers}, top-{self.top_k}")
        self._top = table.top.astype(np.int64)  # (T, L, K)
        self._truth = ex  # (T, L, K) the trace's routing, for the accuracy counters
        self.mode = table.mode
        self.measured_s_per_token = float(table.s_per_token)
        self.s_per_token_layer = float(cs) if cs is not None else table.s_per_token / self.num_layers
        self._batch: np.ndarray | None = None
        self.hits = self.predicted = self.true = 0

    # -- simulator hooks (sim.serving.prediction) ------------------------------------------------------
    def set_routing(self, experts: np.ndarray) -> None:
        """The simulator's pool must be the table's trace, or its first prompts (its rows
        index the table)."""
        ex = np.asarray(experts)
        n = len(ex)
        if ex.shape[1:] != self._truth.shape[1:] or n > len(self._truth) or \
                not np.array_equal(ex, self._truth[:n]):
            raise ConfigError(f"learned_topk: the simulator's routing (trace.path) is not "
                              f"{self.cfg.trace_path}, the trace its predictions were computed on")

    def batch(self, rows: np.ndarray) -> None:
        self._batch = np.asarray(rows, dtype=np.int64)

    def cost_s(self) -> float:
        n = len(self._batch) if self._batch is not None else 1
        return self.s_per_token_layer * n

    # -- prediction ----------------------------------------------------------------------------
    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if layer + 1 >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        if "token" in ctx.extra:
            rows = np.array([int(ctx.extra["token"])])
        elif self._batch is not None:
            rows = self._batch
        else:
            raise ConfigError("learned_topk: the driver named no token or batch")
        if len(rows) and rows.max() >= len(self._top):
            raise ConfigError(f"learned_topk: token row {int(rows.max())} is past the "
                              f"{len(self._top)} tokens of {self.cfg.trace_path}")
        pred = np.unique(self._top[rows, layer + 1])
        true = np.unique(self._truth[rows, layer + 1])
        self.hits += len(np.intersect1d(pred, true, assume_unique=True))
        self.predicted += len(pred)
        self.true += len(true)
        return pred

    def next_layers(self, ctx: PrefetchContext, used: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """In a simulator's batch (see the base class): at layer l the union of the batch's
        predicted experts at layer l + 1, in increasing id order, and the accuracy counters as
        the layer-by-layer calls leave them (integers). None outside a simulator's batch."""
        rows = self._batch
        if rows is None or "token" in ctx.extra:
            return None
        L, E = self.num_layers, self.num_experts
        ranked = np.zeros((L, E), dtype=np.int64)
        n = np.zeros(L, dtype=np.int64)
        if L < 2:
            return ranked, n
        if len(rows) and rows.max() >= len(self._top):
            raise ConfigError(f"learned_topk: token row {int(rows.max())} is past the "
                              f"{len(self._top)} tokens of {self.cfg.trace_path}")
        pm = np.zeros((L - 1, E), dtype=bool)  # layer l's predicted (and true) experts at l + 1
        tm = np.zeros((L - 1, E), dtype=bool)
        for table, mask in ((self._top, pm), (self._truth, tm)):
            ex = table[rows, 1:]  # (T, L-1, K)
            mask[np.broadcast_to(np.arange(L - 1)[None, :, None], ex.shape), ex] = True
        self.hits += int((pm & tm).sum())
        self.predicted += int(pm.sum())
        self.true += int(tm.sum())
        ranked[:L - 1] = np.argsort(~pm, axis=1, kind="stable")  # (the predicted, by id)
        n[:L - 1] = pm.sum(axis=1)
        return ranked, n

    def accuracy(self) -> dict[str, float]:
        """Micro recall and precision of what it predicted so far (see the module doc)."""
        return {"recall": self.hits / max(self.true, 1),
                "precision": self.hits / max(self.predicted, 1)}
