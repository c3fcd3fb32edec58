"""Model sizes: bytes per parameter of a dtype, an expert's bytes, attention parameters, KV bytes
per token, the dense weights a replica holds (pure arithmetic over :class:`ModelConfig`)."""

from __future__ import annotations

from sim.common.errors import ConfigError
from sim.world.config import ModelConfig

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4, "int8": 1, "int4": 0.5}


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


def expert_weight_bytes(m: ModelConfig) -> float:
    """Bytes per parameter of a routed expert as stored (``model.expert_bits``, scales included;
    0: the dtype's)."""
    return m.expert_bits / 8 if m.expert_bits > 0 else dtype_bytes(m.dtype)


def dense_param_bytes(m: ModelConfig) -> float:
    """Bytes per parameter of the quantisable dense weights (attention, shared experts, dense MLPs)
    as stored (``model.dense_bits``; 0: the dtype's). Embeddings and the LM head stay at the dtype."""
    return m.dense_bits / 8 if m.dense_bits > 0 else dtype_bytes(m.dtype)


def expert_bytes(m: ModelConfig) -> int:
    """Bytes of one routed expert's weights (gate, up and down projections) as stored: what a
    copy moves and what a slot holds."""
    return int(3 * m.hidden_size * m.expert_intermediate_size * expert_weight_bytes(m))


def attention_params(m: ModelConfig) -> int:
    """Parameters of one layer's attention block."""
    h = m.hidden_size
    if m.attention == "mla":
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = (h * m.q_lora_rank + m.q_lora_rank * m.num_heads * qk) if m.q_lora_rank else \
            h * m.num_heads * qk
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + \
            m.kv_lora_rank * m.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
        return int(q + kv + m.num_heads * m.v_head_dim * h)
    return int(h * (m.num_heads + 2 * m.num_kv_heads) * m.head_dim + m.num_heads * m.head_dim * h)


def kv_bytes_per_token(m: ModelConfig) -> float:
    """KV-cache bytes one token takes over all layers (MLA caches the compressed latent)."""
    layers = m.num_layers + m.dense_layers
    if m.attention == "mla":
        per_layer = (m.kv_lora_rank + m.qk_rope_head_dim) * dtype_bytes(m.dtype)
    else:
        per_layer = 2 * m.num_kv_heads * m.head_dim * dtype_bytes(m.dtype)
    return float(per_layer * layers)


def dense_weight_bytes(m: ModelConfig) -> int:
    """Weights that every replica holds besides routed experts: attention, shared experts,
    dense layers, embeddings and the LM head."""
    layers = m.num_layers + m.dense_layers
    att = attention_params(m) * layers
    shared = m.shared_experts * 3 * m.hidden_size * m.expert_intermediate_size * m.num_layers
    dense = 3 * m.hidden_size * m.dense_intermediate_size * m.dense_layers
    emb = 2 * m.vocab_size * m.hidden_size
    return int((att + shared + dense) * dense_param_bytes(m) + emb * dtype_bytes(m.dtype))


def layer_weight_bytes(m: ModelConfig) -> int:
    """One MoE layer's weights as stored: its attention, shared experts and every routed expert
    (what layer streaming copies per layer per iteration)."""
    h = m.hidden_size
    dense = (attention_params(m) + m.shared_experts * 3 * h * m.expert_intermediate_size) * \
        dense_param_bytes(m)
    return int(dense) + m.num_experts * expert_bytes(m)
