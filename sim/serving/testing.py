"""Small builders for tests and examples: tiny models, a stub cost model with round numbers, and
a random routing pool (a stand-in where the fitted generator is not needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sim.serving.binding import RoutingPool, bind
from sim.world.config import ClusterConfig, HardwareConfig, ModelConfig, SimConfig
from sim.world.model import dense_weight_bytes, expert_bytes, kv_bytes_per_token

if TYPE_CHECKING:
    from traces.format import RoutingTrace


def tiny_model(layers: int = 2, experts: int = 4, top_k: int = 1) -> ModelConfig:
    """A model whose expert is 6 bytes (hidden 1, intermediate 1, bf16)."""
    return ModelConfig(name="tiny", num_layers=layers, num_experts=experts, top_k=top_k,
                       hidden_size=1, expert_intermediate_size=1, vocab_size=1, num_heads=1,
                       num_kv_heads=1, head_dim=1, dtype="bf16")


def tiny_config(layers: int = 2, experts: int = 4, top_k: int = 1, nodes: int = 1,
                gpus_per_node: int = 1, ep: int = 1, budget_fraction: float = 1.0,
                kv_tokens: int = 10**6, token_budget: int = 64, max_batch: int = 16,
                host_bytes_per_s: float = 2000.0, seed: int = 0) -> SimConfig:
    """A SimConfig of a tiny model on ``nodes x gpus_per_node`` GPUs; each replica's KV cache holds
    about ``kv_tokens`` tokens."""
    m = tiny_model(layers, experts, top_k)
    eb = expert_bytes(m)
    per_gpu_kv = int(np.ceil(kv_tokens * kv_bytes_per_token(m) / ep)) + 1
    mem = int(np.ceil(dense_weight_bytes(m) / ep)) + eb * layers * experts + per_gpu_kv
    hw = HardwareConfig(name="stub", memory_bytes=mem, host_link_bytes_per_s=host_bytes_per_s,
                        host_link_latency_s=0.0)
    cfg = SimConfig(seed=seed, model=m, hardware=hw,
                    cluster=ClusterConfig(nodes=nodes, gpus_per_node=gpus_per_node, expert_parallel=ep,
                                          expert_budget_fraction=budget_fraction, reserved_bytes=0))
    cfg.serving.token_budget = token_budget
    cfg.serving.max_batch_requests = max_batch
    cfg.output.progress = "off"
    return cfg


@dataclass
class StubCost:
    """Round-number costs: attention ``attn_s`` per layer when any token runs, gating free,
    ``expert_s_each`` per expert that has tokens (summed per GPU and layer), ``all_to_all_s``
    ``a2a_s`` (0 on one GPU; the simulator times its all-to-all on the network's links instead,
    from ``hardware``: sim/world/network.py), ``collectives_s`` of tensor-parallel all-reduces per
    layer, ``iteration_s_each`` per iteration, copies at ``host_link_bytes_per_s`` with no
    latency; on the host CPU ``cpu_expert_s_each`` per expert with tokens and
    ``cpu_transfer_s_each`` for a layer's hidden states there and back."""

    attn_s: float = 0.001
    expert_s_each: float = 0.002
    a2a_s: float = 0.0005
    host_link_bytes_per_s: float = 2000.0
    host_link_latency_s: float = 0.0
    collectives_s: float = 0.0
    iteration_s_each: float = 0.0
    host_copy_overhead_s: float = 0.0
    #: an expert with tokens computed on the host CPU; the hidden states there and back
    cpu_expert_s_each: float = 0.004
    cpu_transfer_s_each: float = 0.0005

    def gate_s(self, tokens: int) -> float:
        return 0.0

    def cpu_expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(tokens) > 0, self.cpu_expert_s_each, 0.0)

    def cpu_transfer_s(self, tokens: float) -> float:
        return self.cpu_transfer_s_each if tokens > 0 else 0.0

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(tokens) > 0, self.expert_s_each, 0.0)

    def moe_s(self, tokens: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
        from sim.cost.base import moe_by_sum

        return moe_by_sum(self.expert_s(tokens), group, groups)

    def attention_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    shards: int, kv_tokens: int | None = None) -> float:
        return self.attn_s if prefill_tokens + decode_tokens else 0.0

    def layer_collectives_s(self, tokens: int) -> float:
        return self.collectives_s if tokens else 0.0

    def iteration_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    kv_tokens: int, sequences: int) -> float:
        return self.iteration_s_each if prefill_tokens + decode_tokens else 0.0

    def copy_s(self, nbytes: float) -> float:
        return nbytes / self.host_link_bytes_per_s

    def all_to_all_s(self, bytes_per_gpu: float, gpus: int, inter_node: bool) -> float:
        return self.a2a_s if gpus > 1 else 0.0

    def report(self) -> dict:
        return {}


def random_pool(layers: int, experts: int, top_k: int, entries: int, tokens: int,
                rng: np.random.Generator, task: str = "unknown") -> RoutingPool:
    """``entries`` requests of ``tokens`` tokens with uniformly random distinct top-k experts."""
    n = entries * tokens
    ex = np.argsort(rng.random((n, layers, experts)), axis=2)[:, :, :top_k].astype(np.int16)  # (N, L, K)
    return RoutingPool(experts=ex, offsets=np.arange(entries, dtype=np.int64) * tokens,
                       lengths=np.full(entries, tokens, dtype=np.int64), tasks=[task] * entries,
                       source="random")


def random_run(cfg: SimConfig, seed: int, n: int = 14, tokens: int = 9, entries: int = 4
               ) -> tuple[pd.DataFrame, RoutingPool, Any, np.random.Generator]:
    """A Simulation's inputs after ``cfg``: ``n`` requests arriving up to 10 ms apart with 1-14
    prompt and 1-5 output tokens, bound (``wrap``) to a random pool of ``entries`` entries of
    ``tokens`` tokens: ``(workload, pool, binding, rng)``, the rng as pool and binding left it."""
    rng = np.random.default_rng(seed)
    m = cfg.model
    pool = random_pool(m.num_layers, m.num_experts, m.top_k, entries=entries, tokens=tokens, rng=rng)
    r = np.random.default_rng(seed + 1)
    wl = workload(np.cumsum(r.uniform(0, 0.01, n)).tolist(), r.integers(1, 15, n).tolist(),
                  r.integers(1, 6, n).tolist())
    return wl, pool, bind(pool, wl, "wrap", rng), rng


def pool_from_rows(rows: list[list[list[int]]], task: str = "unknown") -> RoutingPool:
    """One entry whose token t routes layer l to experts ``rows[t][l]``."""
    ex = np.asarray(rows, dtype=np.int16)  # (T, L, K)
    return RoutingPool(experts=ex, offsets=np.zeros(1, dtype=np.int64),
                       lengths=np.array([len(ex)], dtype=np.int64), tasks=[task], source="hand")


def routing_trace(experts, num_experts: int = 4, request_of: list[str] | None = None,
                  model: str = "toy") -> RoutingTrace:
    """A prefill chat trace whose token t routes layer l to ``experts[t][l]``; ``request_of[t]``
    names token t's request (default: one request), positions count up within each run of it."""
    from traces.format import RoutingTrace, TraceMeta, make_tokens

    ex = np.asarray(experts, dtype=np.int16)  # (T, L, K)
    T, L, K = ex.shape
    rid = request_of if request_of is not None else ["r0"] * T
    pos = np.zeros(T, dtype=np.int32)
    for i in range(1, T):
        pos[i] = pos[i - 1] + 1 if rid[i] == rid[i - 1] else 0
    return RoutingTrace(experts=ex, weights=None, tokens=make_tokens(rid, pos, "prefill", "chat"),
                        meta=TraceMeta(model=model, num_layers=L, num_experts=num_experts, top_k=K))


def workload(arrival_s: list[float], prompt: list[int], output: list[int]) -> pd.DataFrame:
    from traces.workload import make_workload

    return make_workload(arrival_s, prompt, output)
