"""eMoE-A with the learned per-prompt predictor (Tairin et al., "eMoE: task-aware memory-efficient
MoE inference", arXiv 2503.06823).

The first prompt loads every expert (no history yet). Afterwards the predictor reruns every
``period`` prompts (``ctx.request_index % period == 0``) from the per-layer expert activation
shares of the prompts that finished before; in between, its last prediction stands. A prediction
is the ``set_size`` experts per layer the model expects to be used most. Layers where the task is
estimated insensitive (``sensitivity``: a sensitivity.json written by ``moesim predictor eval``)
skip prediction, as in eMoE.

Its cost is charged: ``cost_s()`` is the run time of the prediction made by the most recent
``on_request`` (the measured time of one predictor call, or ``call_s`` when given), 0.0 when the
standing prediction was reused.

torch is imported only inside the constructor (through ``sim.predictor``), so importing
``sim.policies`` stays torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy


@dataclass(frozen=True)
class EMoELearnedConfig:
    checkpoint: str = ""  # predictor directory from 'moesim predictor train' (required)
    period: int = 40  # prompts between predictor reruns
    set_size: int | None = None  # experts per layer (None: the checkpoint's)
    sensitivity: str | None = None  # a sensitivity.json from 'moesim predictor eval'
    call_s: float | None = None  # seconds one predictor call costs (None: measured)


@PREFETCH.register("emoe_learned")
class EMoELearned(PrefetchPolicy):
    Config = EMoELearnedConfig
    plans_requests = True
    observes = True

    def setup(self) -> None:
        checkpoint, period, set_size = self.cfg.checkpoint, self.cfg.period, self.cfg.set_size
        sensitivity, call_s = self.cfg.sensitivity, self.cfg.call_s
        if not checkpoint:
            raise ConfigError("prefetch policy emoe_learned needs checkpoint=DIR (from "
                              "'moesim predictor train')")
        if period < 1:
            raise ConfigError(f"emoe_learned period must be >= 1, got {period}")
        from sim.predictor.runtime import PromptRuntime  # torch is imported here only

        self._rt = PromptRuntime(checkpoint)
        if (self._rt.num_layers, self._rt.num_experts) != (self.num_layers, self.num_experts):
            raise ConfigError(
                f"{checkpoint}: predictor trained for {self._rt.num_layers} layers x "
                f"{self._rt.num_experts} experts, the model has {self.num_layers} x {self.num_experts}")
        self.period = int(period)
        self.set_size = int(set_size or self._rt.set_size)
        self._call_s = float(call_s) if call_s is not None else self._rt.measure_call_s()
        self._insensitive: dict[str, set[int]] = _read_sensitivity(sensitivity) if sensitivity else {}
        self._history: list[np.ndarray] = []  # finished prompts' (L, E) activation shares
        self._cur_id: str | None = None
        self._cur = np.zeros((self.num_layers, self.num_experts), dtype=np.float64)  # (L, E) counts
        self._standing: np.ndarray | None = None  # (L, set_size) last prediction
        self._last_cost_s = 0.0

    # -- protocol -------------------------------------------------------------------------------
    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        self._switch(ctx.request_id)
        self._last_cost_s = 0.0
        if not self._history:
            plan = {l: np.arange(self.num_experts) for l in range(self.num_layers)}
        else:
            if self._standing is None or ctx.request_index % self.period == 0:
                scores = self._rt.predict(np.stack(self._history))  # (L, E)
                self._standing = np.argsort(-scores, axis=-1, kind="stable")[:, :self.set_size]
                self._last_cost_s = self._call_s
            plan = {l: self._standing[l].copy() for l in range(self.num_layers)}
        skip = self._insensitive.get(ctx.task, set())
        return {l: e for l, e in plan.items() if l not in skip}

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:
        self._switch(ctx.request_id)
        np.add.at(self._cur[layer], np.asarray(experts, dtype=np.int64).ravel(), 1.0)

    def cost_s(self) -> float:
        return self._last_cost_s

    # -- helpers --------------------------------------------------------------------------------
    def _switch(self, request_id: str) -> None:
        if request_id == self._cur_id:
            return
        if self._cur_id is not None and self._cur.sum() > 0:
            share = self._cur / np.maximum(self._cur.sum(-1, keepdims=True), 1.0)
            self._history.append(share.astype(np.float32))
            del self._history[:-self._rt.history]
        self._cur_id = request_id
        self._cur = np.zeros_like(self._cur)


def _read_sensitivity(path: str) -> dict[str, set[int]]:
    """{task: layer indices estimated insensitive} from a sensitivity.json."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        return {task: {i for i, s in enumerate(v["sensitive"]) if not s}
                for task, v in data["tasks"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{p}: not a sensitivity.json from 'moesim predictor eval' ({exc})") from None
