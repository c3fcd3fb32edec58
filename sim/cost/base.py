"""The cost-model protocol: the one seam between the simulator and real measurements.

The simulator asks only these questions; the analytic roofline (:mod:`sim.cost.analytic`) and the
calibrated table (:mod:`sim.cost.table`) answer them. Times are seconds on *one* GPU.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CostModel(Protocol):
    #: host-to-device copy bandwidth (bytes/s) and setup latency of one copy
    host_link_bytes_per_s: float
    host_link_latency_s: float

    def gate_s(self, tokens: int) -> float:
        """Router (gating) time of one MoE layer for ``tokens`` tokens."""

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        """Per-expert FFN time for the given token counts (any shape; 0 tokens -> 0 s)."""

    def attention_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    shards: int) -> float:
        """One layer's attention (+ shared experts, norms) for a batch, sharded ``shards`` ways.

        ``context_tokens`` is the sum over decode tokens of the KV length each reads."""

    def copy_s(self, nbytes: float) -> float:
        """Host-to-device copy of ``nbytes`` alone on an idle link."""

    def all_to_all_s(self, bytes_per_gpu: float, gpus: int, inter_node: bool) -> float:
        """One all-to-all in which each of ``gpus`` GPUs sends ``bytes_per_gpu`` in total."""

    def report(self) -> dict:
        """Out-of-range and fallback counts (what was not measured); {} for the analytic model."""
