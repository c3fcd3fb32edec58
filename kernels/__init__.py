"""Triton MoE kernels and their torch reference. Independent of the simulator (imports only
``sim.common``); realrun runs them, ``sim.app`` benchmarks them.

Public API (all tensors on one device; shapes: T tokens, E experts, K top-k, H hidden, N ffn,
S cache slots, B block size, P padded slots)::

    topk_gating(logits, top_k, *, scoring="softmax"|"sigmoid", renormalize=True, bias=None,
                num_groups=1, topk_group=None, group_score="max"|"top2_sum", scaling_factor=1.0)
        (T, E) logits -> (topk_ids (T, K) int32, topk_weights (T, K) float32). Mixtral, DeepSeek-V2
        (group-limited greedy) and DeepSeek-V3 (sigmoid + selection bias, top-2-sum groups).

    moe_align_block_size(topk_ids, block_size, num_experts)
        vLLM's contract: (sorted_token_ids (T*K + E*(B-1),) int32 padded with the sentinel T*K,
        expert_ids (one per block, -1 past the total) int32, num_tokens_post_padded (1,) int32).

    dynamic_gating(topk_ids, block_size, num_experts) -> AlignResult
        the same plus expert_counts (E,), expert_offsets (E+1,), inv (T*K,) and num_dropped (= 0).

    static_capacity_gating(topk_ids, num_experts, capacity_factor, block_size) -> AlignResult
        fixed capacity ceil(cf*T*K/E) per expert, overflow dropped (inv = -1), num_dropped counts it.

    grouped_swiglu(x, w13, w2, expert_slot, align, top_k, block_size, config=None)
        (T, H) x, w13 (S, 2N, H), w2 (S, H, N), expert_slot (E,) slot or -1 -> y_sorted (P, H);
        one launch per GEMM for all experts; a non-resident expert's weights are never read.

    combine(y_sorted, inv, topk_weights) -> (T, H): gate-weighted gather back to token order.

    moe_layer(x, router_logits, w13, w2, top_k, expert_slot=None, *, gating="dynamic"|"static",
              capacity_factor=1.25, config=None, return_align=False, **gating_kwargs) -> (T, H)

    FfnConfig, get_ffn_config(...), default_ffn_config(...): tuned launch configs (kernels/tuning.py,
        JSON files in kernels/configs/); peak_for_device(name): peak HBM bandwidth and bf16 FLOP/s
        used for "share of peak" (kernels/peaks.py).

    kernels.reference: the torch reference of each kernel and of a whole layer (moe_layer_ref).

The names above are imported lazily, on first use: ``import kernels`` does not import Triton, so
``moesim kernels bench device=cpu interpret=true`` can still switch Triton to its interpreter
(TRITON_INTERPRET=1 must be set before the kernel modules are imported).
"""

from __future__ import annotations

import importlib

_API = {
    "topk_gating": "kernels.gating",
    "moe_align_block_size": "kernels.align",
    "dynamic_gating": "kernels.align",
    "static_capacity_gating": "kernels.static_gating",
    "grouped_swiglu": "kernels.grouped_ffn",
    "combine": "kernels.combine_op",  # module named apart so kernels.combine stays the function
    "moe_layer": "kernels.layer",
    "AlignResult": "kernels.reference",
    "FfnConfig": "kernels.tuning",
    "get_ffn_config": "kernels.tuning",
    "default_ffn_config": "kernels.tuning",
    "peak_for_device": "kernels.peaks",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
