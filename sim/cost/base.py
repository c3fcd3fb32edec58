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

    def moe_s(self, tokens: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
        """Routed experts of each group (one MoE layer on one GPU): ``tokens`` (N,) per expert
        instance, ``group`` (N,) its group; returns (groups,) seconds. A model that only knows
        ``expert_s`` sums it per group (:func:`moe_by_sum`)."""

    def attention_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    shards: int, kv_tokens: int | None = None) -> float:
        """One layer's attention (+ shared experts, norms) for a batch, sharded ``shards`` ways.

        ``context_tokens``: the (query, key) pairs the batch attends (causal); ``kv_tokens``: the
        KV tokens read (FlashAttention: once per query tile; None: one per pair)."""

    def layer_collectives_s(self, tokens: int) -> float:
        """Tensor parallelism's all-reduces of one MoE layer for ``tokens`` tokens (0 at TP 1)."""

    def iteration_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    kv_tokens: int, sequences: int) -> float:
        """Per iteration besides the MoE layers: fixed engine overhead, embeddings, dense layers,
        LM head over ``sequences`` sampled tokens."""

    def copy_s(self, nbytes: float) -> float:
        """Host-to-device copy of ``nbytes`` alone on an idle link."""

    def all_to_all_s(self, bytes_per_gpu: float, gpus: int, inter_node: bool) -> float:
        """One all-to-all in which each of ``gpus`` GPUs sends ``bytes_per_gpu`` in total."""

    def report(self) -> dict:
        """Out-of-range and fallback counts (what was not measured); {} for the analytic model."""


def moe_by_sum(expert_s: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """Per-expert times (each its own launch) summed per group: ``moe_s`` of a model measured per
    expert (the table model, test stubs)."""
    return np.bincount(np.asarray(group).ravel(), weights=np.asarray(expert_s, dtype=np.float64).ravel(),
                       minlength=groups)
