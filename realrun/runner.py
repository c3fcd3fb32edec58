"""Replay a routing trace on a real device: real expert weights, real copies, real kernels.

For every batch of ``batch_tokens`` consecutive trace tokens and every MoE layer:

1. router logits that reproduce the trace's recorded top-k (``routing_logits``) go through
   realrun's one router (:func:`realrun.model.route`: on a GPU the Triton top-k gating and
   dynamic-gating alignment kernels, on the CPU torch);
2. the experts the batch needs at that layer are made resident through an
   :class:`~realrun.expert_cache.ExpertCache` driven by the *same* CachePolicy class the
   simulator and the replay use, in the one batch semantics of ``moesim cache mode=batch``
   (:func:`sim.world.facts.batch_executions`: the batch's experts run one at a time in increasing id
   order, each one cache step with the batch's union as ``active``). The experts are launched
   together in one call of realrun's one expert executor (:func:`realrun.model.expert_ffn`, the
   executor ``realrun validate`` uses too) until a decision would evict an expert that has not
   run yet; that chunk is launched first. So the counts equal the replay's, by construction;
3. the executor reads each expert through the expert-to-slot table (a non-resident expert is
   never read): on a GPU the grouped SwiGLU and combine kernels, on the CPU torch one expert at a
   time. The Triton kernels are tested on the CPU under the interpreter in tests/kernels; realrun
   does not run them there (the interpreter is minutes where torch is seconds).

The layer's output does not depend on the cache policy: the cache changes time and bytes, never
results (tested against :func:`kernels.reference.moe_layer_ref`). The metrics use the simulator's
names (``hit_rate``, ``h2d_bytes``, ...) so sim and realrun runs load into one table.

Weights are random (seeded); the hidden and intermediate sizes are the model's divided by
``shrink`` so that a CPU run stays small. Nothing here imports simpy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from realrun import model
from realrun.expert_cache import ExpertCache
from realrun.model import DTYPES
from sim.common.errors import ConfigError, MoesimError
from sim.policies import CACHE
from sim.world.facts import CacheCounts, batch_executions, cache_slots
from traces.format import RoutingTrace


@dataclass
class RealrunConfig:
    hidden: int
    intermediate: int
    cache_policy: str = "lru"
    capacity_frac: float = 0.5
    batch_tokens: int = 16
    block_size: int = 16
    device: str = "cpu"
    dtype: str = "fp32"
    seed: int = 0
    max_tokens: int | None = None


def routing_logits(experts: np.ndarray, num_experts: int) -> torch.Tensor:
    """(T, K) recorded expert ids -> (T, E) logits whose softmax top-k is exactly those ids, in
    order: :func:`realrun.model.routing_logits` of a host array."""
    return model.routing_logits(torch.as_tensor(experts), num_experts)


def make_weights(num_layers: int, num_experts: int, hidden: int, inter: int, dtype: torch.dtype,
                 seed: int) -> list[dict[str, torch.Tensor]]:
    """Seeded random expert weights per layer: w13 (E, 2N, H), w2 (E, H, N), host memory."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_layers):
        w13 = torch.randn((num_experts, 2 * inter, hidden), generator=g) / hidden**0.5
        w2 = torch.randn((num_experts, hidden, inter), generator=g) / inter**0.5
        out.append({"w13": w13.to(dtype), "w2": w2.to(dtype)})
    return out


class RealMoE:
    """The MoE layers of one model replica on ``device``, one expert cache per layer."""

    def __init__(self, cfg: RealrunConfig, num_layers: int, num_experts: int, top_k: int) -> None:
        if cfg.dtype not in DTYPES:
            raise ConfigError(f"realrun dtype {cfg.dtype!r}, expected one of {list(DTYPES)}")
        if not 0 < cfg.capacity_frac <= 1:
            raise ConfigError(f"capacity_frac must be in (0, 1], got {cfg.capacity_frac}")
        if cfg.batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be >= 1, got {cfg.batch_tokens}")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda asked for, but torch sees no CUDA GPU")
        self.L, self.E, self.K = num_layers, num_experts, top_k
        self.dtype = DTYPES[cfg.dtype]
        self.capacity = cache_slots(cfg.capacity_frac, num_experts, "capacity_frac")
        if self.capacity < 1:
            raise ConfigError(f"capacity_frac={cfg.capacity_frac} of {num_experts} experts is "
                              f"{self.capacity} slots; an expert cache needs at least one")
        weights = make_weights(num_layers, num_experts, cfg.hidden, cfg.intermediate, self.dtype,
                               cfg.seed)
        if CACHE.get(cfg.cache_policy).requires_future:
            raise ConfigError(f"cache policy {cfg.cache_policy!r} is an oracle (reads the future); "
                              f"realrun runs online policies only")
        self.caches = [
            ExpertCache(w, CACHE.make(cfg.cache_policy, capacity=self.capacity, num_keys=num_experts),
                        self.device)
            for w in weights
        ]
        self.host_weights = weights
        self.steps = [0] * num_layers  # each layer's cache counts its own steps

    def layer(self, l: int, x: torch.Tensor, logits: torch.Tensor, runs: Any = None) -> torch.Tensor:
        """One MoE layer: x (T, H), logits (T, E) -> (T, H). ``runs``: the batch's expert runs in
        order (:func:`sim.world.facts.batch_executions`); None: the gated tokens are one batch.
        Routing and the experts go through realrun's one router and executor
        (:func:`realrun.model.route`, :func:`realrun.model.expert_ffn`: torch on the CPU, the
        Triton kernels on a GPU)."""
        cache = self.caches[l]
        policy = cache.policy
        r = model.route(logits, self.K, self.cfg.block_size)
        if runs is None:
            _, runs = batch_executions(r.ids.cpu().numpy(), max(1, len(r.ids)), self.E)
        needed = [int(e) for e in runs]
        union = frozenset(needed)
        y = torch.zeros_like(x)
        pending: list[int] = []  # decided and resident, not launched yet
        for e in needed:
            misses, evicted = policy.access(self.steps[l], (e,), union)
            self.steps[l] += 1
            if pending and not pending_safe(pending, evicted):
                y += self._launch(x, cache, pending, r)
                pending = []
            cache.apply(evicted, [k for k in misses if k in policy.resident])
            if e in policy.resident:
                pending.append(e)
            else:  # it streams through the staging slot: launched now, alone
                if pending:
                    y += self._launch(x, cache, pending, r)
                    pending = []
                y += self._launch(x, cache, [e], r, staged=cache.stage(e))
        if pending:
            y += self._launch(x, cache, pending, r)
        return y

    def _launch(self, x: torch.Tensor, cache: ExpertCache, experts: list[int], r: model.Routed,
                staged: int | None = None) -> torch.Tensor:
        """The part of the layer's output from ``experts`` (resident, or the one expert in the
        staging slot ``staged``), through the slot table: the other experts' slots are -1."""
        slot = torch.full((self.E,), -1, dtype=torch.int32)
        slot[experts] = cache.slot_of[experts] if staged is None else staged
        return model.expert_ffn(x, r, slot, cache.slots["w13"], cache.slots["w2"], self.K,
                                self.cfg.block_size)

    def run_trace(self, trace: RoutingTrace, progress: bool = False
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Replay ``trace``; returns (metrics, timings): metrics are counts that the same seed
        reproduces byte for byte, timings are measured seconds."""
        cfg = self.cfg
        T = trace.num_tokens if cfg.max_tokens is None else min(cfg.max_tokens, trace.num_tokens)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        layer_s = np.zeros(self.L)
        t_start = time.perf_counter()
        batches = range(0, T, cfg.batch_tokens)
        # each layer's expert runs, batch by batch (the replay's batch semantics)
        execs = [batch_executions(trace.experts[:T, l], cfg.batch_tokens, self.E) for l in range(self.L)]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="realrun", unit="batch", file=sys.stderr,
                           mininterval=0.5 if sys.stderr.isatty() else 5.0)
        for b0 in batches:
            b1 = min(T, b0 + cfg.batch_tokens)
            x = torch.randn((b1 - b0, cfg.hidden), generator=g).to(self.dtype).to(self.device)
            b = b0 // cfg.batch_tokens
            for l in range(self.L):
                logits = routing_logits(trace.experts[b0:b1, l], self.E).to(self.device)
                starts, ids = execs[l]
                t0 = time.perf_counter()
                x = self.layer(l, x, logits, ids[starts[b]:starts[b + 1]])
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                layer_s[l] += time.perf_counter() - t0
                x = x / (x.float().pow(2).mean(-1, keepdim=True).sqrt() + 1e-6).to(x.dtype)
        wall = time.perf_counter() - t_start
        counts = CacheCounts.total(c.policy.counts for c in self.caches)
        copied = sum(c.stats.bytes for c in self.caches)
        if self.caches and copied != counts.loads * self.caches[0].expert_bytes:
            raise MoesimError(f"internal: copied {copied} bytes for {counts.loads} expert loads")
        copies = [s for c in self.caches for s in c.stats.samples]
        copy_s = np.array([s for _, s in copies]) if copies else np.zeros(0)
        metrics = {
            "engine": "realrun",
            "cache_policy": cfg.cache_policy,
            "capacity_frac": cfg.capacity_frac,
            "capacity_experts": self.capacity,
            "tokens": int(T),
            "batch_tokens": cfg.batch_tokens,
            "hidden": cfg.hidden,
            "intermediate": cfg.intermediate,
            "dtype": cfg.dtype,
            **counts.record(self.caches[0].expert_bytes if self.caches else 0),
            "h2d_copies": len(copies),
        }
        timings = {
            "device": _device_name(self.device),
            "copy_s_total": float(copy_s.sum()),
            "copy_s_median": float(np.median(copy_s)) if len(copy_s) else 0.0,
            "layer_s_mean": float(layer_s.mean() / max(1, -(-T // cfg.batch_tokens))),
            "wall_time_s": float(wall),
        }
        return metrics, timings


def pending_safe(pending: list[int], evicted: list[int]) -> bool:
    """No expert waiting for its launch is among the ``evicted`` (its slot would be overwritten)."""
    return not evicted or not set(evicted).intersection(pending)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
