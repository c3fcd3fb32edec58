"""The analytic roofline cost model.

Every time is ``max(flops / (peak * flops_efficiency), bytes / (hbm * hbm_efficiency))`` plus a
kernel-launch latency, with the constants of a :class:`~sim.config.HardwareConfig` (each cited in
its YAML under ``conf/hardware/``) and the shapes of a :class:`~sim.config.ModelConfig` (from the
model's ``config.json``). Copies and collectives are ``latency + bytes / bandwidth``.
"""

from __future__ import annotations

import numpy as np

from sim.config import HardwareConfig, ModelConfig, attention_params, dtype_bytes


class AnalyticCost:
    def __init__(self, model: ModelConfig, hw: HardwareConfig) -> None:
        self.model, self.hw = model, hw
        self.wbytes = dtype_bytes(model.dtype)
        self.flops_s = hw.bf16_flops * hw.flops_efficiency * (2.0 if model.dtype == "fp8" else 1.0)
        self.hbm_s = hw.hbm_bytes_per_s * hw.hbm_efficiency
        self.host_link_bytes_per_s = hw.host_link_bytes_per_s
        self.host_link_latency_s = hw.host_link_latency_s
        h, i = model.hidden_size, model.expert_intermediate_size
        self._expert_weight_bytes = 3.0 * h * i * self.wbytes
        self._expert_flops_per_token = 2.0 * 3 * h * i
        self._act_bytes_per_token = 2.0 * h * 2  # bf16 activations in + out
        self._attn_params = attention_params(model)
        self._shared_params = 3.0 * h * i * model.shared_experts
        kv_dim = (model.kv_lora_rank + model.qk_rope_head_dim) if model.attention == "mla" \
            else 2 * model.num_kv_heads * model.head_dim
        self._kv_bytes_per_ctx = kv_dim * self.wbytes
        qk_dim = (model.qk_nope_head_dim + model.qk_rope_head_dim) if model.attention == "mla" \
            else model.head_dim
        #: score + value flops per (query token, context token)
        self._attn_flops_per_pair = 2.0 * model.num_heads * (qk_dim + (model.v_head_dim or qk_dim))

    def _roof(self, flops: float, nbytes: float) -> float:
        return self.hw.kernel_latency_s + max(flops / self.flops_s, nbytes / self.hbm_s)

    def gate_s(self, tokens: int) -> float:
        m = self.model
        return self._roof(2.0 * tokens * m.hidden_size * m.num_experts,
                          m.hidden_size * m.num_experts * self.wbytes + tokens * m.hidden_size * 2)

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.float64)
        compute = t * (self._expert_flops_per_token / self.flops_s)
        memory = (self._expert_weight_bytes + t * self._act_bytes_per_token) / self.hbm_s
        return np.where(t > 0, self.hw.kernel_latency_s + np.maximum(compute, memory), 0.0)

    def attention_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    shards: int) -> float:
        tokens = prefill_tokens + decode_tokens
        if tokens == 0:
            return 0.0
        params = self._attn_params + self._shared_params
        # prefill attends causally to itself (~n^2/2 pairs per chunk, counted by the caller in
        # context_tokens); decode tokens read their whole KV cache
        flops = 2.0 * params * tokens + self._attn_flops_per_pair * context_tokens
        nbytes = params * self.wbytes + context_tokens * self._kv_bytes_per_ctx + \
            tokens * self.model.hidden_size * 2 * 4
        return self._roof(flops / shards, nbytes / shards)

    def copy_s(self, nbytes: float) -> float:
        return self.host_link_latency_s + nbytes / self.host_link_bytes_per_s

    def all_to_all_s(self, bytes_per_gpu: float, gpus: int, inter_node: bool) -> float:
        if gpus <= 1:
            return 0.0
        hw = self.hw
        bw, lat = (hw.network_bytes_per_s, hw.network_latency_s) if inter_node else \
            (hw.nvlink_bytes_per_s, hw.nvlink_latency_s)
        return lat + bytes_per_gpu * (gpus - 1) / gpus / bw

    def report(self) -> dict:
        return {}
