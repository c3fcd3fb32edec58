"""Where the experts a GPU does not hold run (``offload.expert_exec``), layer by layer.

The cache decides the misses (with ``policy.cache=static`` nothing new becomes resident); this
module decides, per GPU and layer, which of them are copied over the host link (then computed on
the GPU with the resident ones, as today) and which are computed on the host CPU, and rewrites
that GPU's expert time for the layer:

- ``cpu``: every miss on the CPU (Fiddler, kTransformers, llama.cpp ``--n-cpu-moe``);
- ``auto``: llama.cpp's rule: on the CPU while the batch has fewer than ``offload.cpu_max_tokens``
  tokens, else every miss copied for the step (ggml-cuda's offload_op, PR #13386);
- ``cost``: each miss, heaviest (most tokens) first, to whichever of the link and the CPU would
  finish it sooner given what is already queued on each (HybriMoE's split by load, arXiv
  2504.05897: the CPU takes the lightly used experts, the link the heavy ones).

The time of a layer with host experts on GPU g: the GPU computes its resident (and copied)
experts while the host receives the tokens' hidden states, computes its experts one after
another with every core (:meth:`sim.cost.analytic.AnalyticCost.cpu_expert_s`) and sends the
outputs back (:meth:`~sim.cost.analytic.AnalyticCost.cpu_transfer_s`); the layer's experts end
when the slower of the two does: ``max(gpu_s, host_s)``. Copies are timed by the layer timing as
any miss (the GPU's part waits for them).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sim.world.offload_config import OffloadConfig


class HostExperts:
    def __init__(self, cost: Any, offload: OffloadConfig, expert_bytes: int, layers: int) -> None:
        self.cost = cost
        #: (L,) experts computed on the host per layer, over the run (metrics: where each layer's ran)
        self.by_layer = [0] * layers
        self.mode = offload.expert_exec
        self.max_tokens = offload.cpu_max_tokens
        self.copy_s = cost.copy_s(expert_bytes) - cost.host_link_latency_s  # bytes / bandwidth

    def split(self, miss: list[int], tokens: np.ndarray, batch_tokens: int
              ) -> tuple[list[int], list[int]]:
        """The misses ``miss`` (keys, with ``tokens[k]`` tokens each): (copied, on the CPU)."""
        if self.mode == "cpu" or (self.mode == "auto" and batch_tokens < self.max_tokens):
            return [], list(miss)
        if self.mode == "auto":
            return list(miss), []
        # cost: heaviest first (ties: smaller key), to the resource that finishes it sooner
        order = sorted(miss, key=lambda k: (-int(tokens[k]), k))
        per_cpu = self.cost.cpu_expert_s(tokens[order]).tolist()
        link_t, cpu_t = self.cost.host_link_latency_s, 0.0
        copy, cpu = [], []
        for k, c in zip(order, per_cpu):
            if link_t + self.copy_s <= cpu_t + c:
                link_t += self.copy_s
                copy.append(k)
            else:
                cpu_t += c
                cpu.append(k)
        return sorted(copy), sorted(cpu)

    def host_s(self, cpu: list[int], tokens: np.ndarray, batch_tokens: int) -> float:
        """The host's part of a layer: the hidden states of the tokens its experts take (at most
        the batch's) there and back, and its experts one after another."""
        t = tokens[cpu]
        sent = min(int(t.sum()), batch_tokens)
        return self.cost.cpu_transfer_s(sent) + float(self.cost.cpu_expert_s(t).sum())

    def run(self, decisions: Iterator[Any], serve_cls: type, tokens: np.ndarray,
            comp: list[list[float]], states: list[Any], need: list[list[Any]],
            batch_tokens: int) -> Iterator[Any]:
        """The walk's decisions with each :class:`~sim.serving.walk.Serve`'s misses split: the
        copied ones stay its misses, the others run on the host; ``comp[l][g]`` becomes
        ``max(GPU experts, host part)`` where GPU g ran any on the host (before the timing reads
        it). Other decisions pass unchanged."""
        cost = self.cost
        for d in decisions:
            if d.__class__ is not serve_cls:
                yield d
                continue
            l, out = d.layer, []
            for g, m in enumerate(d.miss):
                if not m:
                    out.append(m)
                    continue
                copy, cpu = self.split(m, tokens, batch_tokens)
                out.append(copy)
                if cpu:
                    on_cpu = set(cpu)
                    gpu_keys = [k for k in need[g][l] if k not in on_cpu]
                    gpu_s = float(cost.moe_s(tokens[gpu_keys], np.zeros(len(gpu_keys), dtype=np.int64),
                                             1)[0]) if gpu_keys else 0.0
                    host = self.host_s(cpu, tokens, batch_tokens)
                    comp[l][g] = max(gpu_s, host)
                    st = states[g]
                    st.cpu_experts += len(cpu)
                    st.cpu_s += host
                    st.host_excess_s += comp[l][g] - gpu_s
                    self.by_layer[l] += len(cpu)
            yield serve_cls(l, out)
