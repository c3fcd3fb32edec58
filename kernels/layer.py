"""A whole MoE layer from the kernels: gating -> alignment -> grouped SwiGLU -> combine.

``moe_layer(..., gating="dynamic")`` is dropless dynamic gating (Huang et al.; vLLM's fused MoE
path); ``gating="static"`` is the static-capacity baseline (overflow dropped, segments padded to
capacity). Both return (T, H) in x's dtype; ``return_align=True`` also returns the alignment
(its ``num_dropped`` says how many token-expert assignments static gating dropped).
"""

from __future__ import annotations

import torch

from kernels.align import dynamic_gating
from kernels.combine_op import combine
from kernels.gating import topk_gating
from kernels.grouped_ffn import grouped_swiglu
from kernels.static_gating import static_capacity_gating
from kernels.tuning import FfnConfig, default_ffn_config
from sim.common.errors import ConfigError

__all__ = ["moe_layer"]


def moe_layer(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    expert_slot: torch.Tensor | None = None,
    *,
    gating: str = "dynamic",
    capacity_factor: float = 1.25,
    config: FfnConfig | None = None,
    return_align: bool = False,
    **gating_kwargs,
):
    """x (T, H), router_logits (T, E), w13 (S, 2N, H), w2 (S, H, N) -> (T, H).

    expert_slot (E,): slot of each expert in w13/w2, -1 if not resident (default: slot e = e).
    gating_kwargs go to :func:`kernels.topk_gating` (scoring, renormalize, bias, groups, ...).
    """
    T, E = router_logits.shape
    if x.shape[0] != T:
        raise ConfigError(f"moe_layer: x has {x.shape[0]} tokens, router_logits {T}")
    if expert_slot is None:
        if w13.shape[0] < E:
            raise ConfigError(
                f"moe_layer: no expert_slot given and only {w13.shape[0]} slots for {E} experts")
        expert_slot = torch.arange(E, dtype=torch.int32, device=x.device)
    if expert_slot.numel() != E:
        raise ConfigError(f"moe_layer: expert_slot must have E={E} entries, got {expert_slot.numel()}")
    if config is None:
        config = default_ffn_config(T * top_k, E)
    ids, weights = topk_gating(router_logits, top_k, **gating_kwargs)  # (T, K)
    if gating == "dynamic":
        align = dynamic_gating(ids, config.block_m, E)
    elif gating == "static":
        align = static_capacity_gating(ids, E, capacity_factor, config.block_m)
    else:
        raise ConfigError(f"moe_layer: gating must be 'dynamic' or 'static', got {gating!r}")
    y = grouped_swiglu(x, w13, w2, expert_slot, align, top_k, config.block_m, config)  # (P, H)
    out = combine(y, align.inv, weights)  # (T, H)
    return (out, align) if return_align else out
