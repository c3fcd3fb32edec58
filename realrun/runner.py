"""Replay a routing trace on a real device: real expert weights, real copies, real Triton kernels.

For every batch of ``batch_tokens`` consecutive trace tokens and every MoE layer:

1. router logits that reproduce the trace's recorded top-k (``routing_logits``) go through the
   Triton top-k gating and dynamic-gating alignment kernels;
2. the experts the batch needs at that layer are made resident through an
   :class:`~realrun.expert_cache.ExpertCache` driven by the *same* CachePolicy class the
   simulator and the replay use (Huang et al.'s batch setting: experts run in increasing id
   order; when they do not all fit, they run in chunks of at most ``capacity`` experts, each chunk
   made resident before its grouped-FFN launch, the rest of the batch passed as ``active``);
3. the grouped SwiGLU kernel reads each expert through the expert-to-slot table (a non-resident
   expert is never read), and the combine kernel scatters the results back.

The layer's output does not depend on the cache policy: the cache changes time and bytes, never
results (tested against :func:`kernels.reference.moe_layer_ref`). The metrics use the simulator's
names (``hit_rate``, ``h2d_bytes``, ...) so sim and realrun runs load into one table.

Weights are random (seeded); the hidden and intermediate sizes are the model's divided by
``shrink`` so that a CPU run stays small. Nothing here imports simpy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from realrun.expert_cache import ExpertCache
from sim.errors import ConfigError
from sim.policies import CACHE
from traces.format import RoutingTrace

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    order (rank k gets logit 8 - k/K, unchosen experts 0)."""
    T, K = experts.shape
    logits = torch.zeros((T, num_experts), dtype=torch.float32)
    ranks = torch.arange(K, dtype=torch.float32)
    logits.scatter_(1, torch.as_tensor(experts, dtype=torch.int64),
                    (8.0 - ranks / K).expand(T, K).contiguous())
    return logits


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
        self.capacity = max(1, round(cfg.capacity_frac * num_experts))
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
        self.step = 0

    def layer(self, l: int, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """One MoE layer: x (T, H), logits (T, E) -> (T, H)."""
        from kernels.align import dynamic_gating
        from kernels.combine_op import combine
        from kernels.gating import topk_gating
        from kernels.grouped_ffn import grouped_swiglu

        cache = self.caches[l]
        ids, w = topk_gating(logits, self.K, renormalize=True)  # (T, K)
        align = dynamic_gating(ids, self.cfg.block_size, self.E)
        needed = sorted(set(ids.reshape(-1).tolist()))
        y = None
        for c0 in range(0, len(needed), self.capacity):
            chunk = needed[c0:c0 + self.capacity]
            cache.ensure(self.step, chunk, active=needed[c0:])
            self.step += 1
            slot = torch.full((self.E,), -1, dtype=torch.int32)
            slot[chunk] = cache.slot_of[chunk]
            part = grouped_swiglu(x, cache.slots["w13"], cache.slots["w2"], slot.to(self.device),
                                  align, self.K, self.cfg.block_size)  # (P, H)
            y = part if y is None else y + part
        return combine(y, align.inv, w)

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
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="realrun", unit="batch")
        for b0 in batches:
            b1 = min(T, b0 + cfg.batch_tokens)
            x = torch.randn((b1 - b0, cfg.hidden), generator=g).to(self.dtype).to(self.device)
            for l in range(self.L):
                logits = routing_logits(trace.experts[b0:b1, l], self.E).to(self.device)
                t0 = time.perf_counter()
                x = self.layer(l, x, logits)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                layer_s[l] += time.perf_counter() - t0
                x = x / (x.float().pow(2).mean(-1, keepdim=True).sqrt() + 1e-6).to(x.dtype)
        wall = time.perf_counter() - t_start
        hits = sum(c.hits for c in self.caches)
        misses = sum(c.misses for c in self.caches)
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
            "accesses": int(hits + misses),
            "hits": int(hits),
            "misses": int(misses),
            "hit_rate": float(hits / max(1, hits + misses)),
            "h2d_bytes": int(sum(c.stats.bytes for c in self.caches)),
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
