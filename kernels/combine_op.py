"""Combine: gate-weighted sum of the expert outputs back into token order.

``out[t] = sum_k topk_weights[t, k] * y_sorted[inv[t * K + k]]``; a slot with ``inv == -1``
(dropped by static capacity gating) adds nothing. Written as a gather through the inverse
permutation rather than an atomic scatter, so each output row is summed by one program in a
fixed k order: the result is bitwise deterministic.

Example: T=2, K=2, inv = [0, 2, 1, 3], weights = [[0.75, 0.25], [0.5, 0.5]]
    out[0] = 0.75 * y_sorted[0] + 0.25 * y_sorted[2]
    out[1] = 0.5  * y_sorted[1] + 0.5  * y_sorted[3]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sim.common.errors import ConfigError

__all__ = ["combine", "combine_kernel"]


@triton.jit
def combine_kernel(
    y_ptr,  # (P, H)
    inv_ptr,  # (T*K,) int32
    w_ptr,  # (T, K) float32
    out_ptr,  # (T, H)
    H,
    stride_y,
    TOP_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    t = tl.program_id(0)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    acc = tl.zeros((BLOCK_H,), tl.float32)
    for k in tl.static_range(TOP_K):
        pos = tl.load(inv_ptr + t * TOP_K + k)
        w = tl.load(w_ptr + t * TOP_K + k).to(tl.float32)
        keep = (offs_h * 0 + pos) >= 0  # (BH,) the slot was kept (not dropped)
        v = tl.load(y_ptr + pos.to(tl.int64) * stride_y + offs_h, mask=h_mask & keep, other=0.0)
        acc += w * v.to(tl.float32)
    tl.store(out_ptr + t * H + offs_h, acc.to(out_ptr.dtype.element_ty), mask=h_mask)


def combine(y_sorted: torch.Tensor, inv: torch.Tensor, topk_weights: torch.Tensor,
            block_h: int = 1024) -> torch.Tensor:
    """y_sorted (P, H), inv (T*K,) int32, topk_weights (T, K) -> (T, H) in y_sorted's dtype."""
    if y_sorted.dim() != 2 or topk_weights.dim() != 2:
        raise ConfigError("combine: y_sorted must be (P, H) and topk_weights (T, K)")
    T, K = topk_weights.shape
    if inv.numel() != T * K:
        raise ConfigError(f"combine: inv must have T*K={T * K} entries, got {inv.numel()}")
    if inv.device != y_sorted.device or topk_weights.device != y_sorted.device:
        raise ConfigError("combine: y_sorted, inv and topk_weights must be on one device")
    H = y_sorted.shape[1]
    out = torch.empty((T, H), dtype=y_sorted.dtype, device=y_sorted.device)
    if T == 0 or H == 0:
        return out
    if y_sorted.stride(1) != 1:
        y_sorted = y_sorted.contiguous()
    block_h = min(block_h, triton.next_power_of_2(H))
    combine_kernel[(T, triton.cdiv(H, block_h))](
        y_sorted, inv.to(torch.int32).contiguous(), topk_weights.float().contiguous(), out, H,
        y_sorted.stride(0), TOP_K=K, BLOCK_H=block_h,
    )
    return out
