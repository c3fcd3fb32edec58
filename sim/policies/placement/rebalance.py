"""Periodic rebalancing from a sliding window (vLLM's EPLB: window of 1000 steps, rebalance every
3000; DeepSeek EPLB leaves load prediction to a moving average). Wraps an inner placement policy:
every ``period`` batches it replans on the loads of the last ``window`` batches; the weight moves a
new plan causes (replicas a GPU must newly hold) are charged as copies by the caller
(``moves(old, new)`` counts them; the placement evaluation and the simulator multiply by the
expert size).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PLACEMENT, Placement, PlacementPolicy


def moves(old: Placement, new: Placement) -> int:
    """Replicas in ``new`` not present in ``old`` (each is one expert's weights copied)."""
    n = 0
    for lo, ln in zip(old.replicas, new.replicas):
        for a, b in zip(lo, ln):
            n += len(set(b) - set(a))
    return n


@dataclass(frozen=True)
class RebalanceConfig:
    inner: str = "greedy"  # the placement policy replanned
    window: int = 100  # batches whose loads a replan sees
    period: int = 50  # batches between replans
    inner_kwargs: dict[str, Any] | None = None  # the inner policy's arguments


@PLACEMENT.register("rebalance")
class PeriodicRebalance(PlacementPolicy):
    Config = RebalanceConfig

    def setup(self) -> None:
        inner, window, period = self.cfg.inner, self.cfg.window, self.cfg.period
        inner_kwargs = self.cfg.inner_kwargs
        if window < 1 or period < 1:
            raise ConfigError(f"rebalance: window and period must be >= 1, got {window}, {period}")
        if inner == "rebalance":
            raise ConfigError("rebalance: inner policy cannot be rebalance")
        self.window, self.period = window, period
        self.inner = PLACEMENT.make(inner, num_gpus=self.num_gpus, **(inner_kwargs or {}))
        self._hist: deque[np.ndarray] = deque(maxlen=window)
        self._since = 0
        self.current: Placement | None = None
        self.moved = 0

    def fit_history(self, history: np.ndarray) -> None:
        """Per-batch loads (B, L, E) of the planning window, handed to an inner policy that learns
        from them (``anticorr``, ``split``); the replans hand it their window the same way."""
        self.inner.fit_history(history)

    def place(self, load: np.ndarray) -> Placement:
        self.current = self.inner.place(load)
        return self.current

    def observe(self, batch_load: np.ndarray) -> Placement | None:
        """Record one batch's (L, E) loads; every ``period`` batches replan on the window and
        return the new placement (its moves added to ``self.moved``), else None."""
        self._hist.append(np.asarray(batch_load, dtype=np.float64))
        self._since += 1
        if self._since < self.period:
            return None
        self._since = 0
        self.fit_history(np.stack(self._hist))
        new = self.inner.place(np.sum(self._hist, axis=0))
        if self.current is not None:
            self.moved += moves(self.current, new)
        self.current = new
        return new
