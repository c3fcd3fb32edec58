"""Grouped expert FFN: SwiGLU experts over the expert-sorted token slots, all experts in one launch.

``y = (silu(x @ W1^T) * (x @ W3^T)) @ W2^T`` per expert, with vLLM's weight layout:
``w13`` (S, 2N, H) holds [W1; W3] (gate rows then up rows) and ``w2`` (S, H, N), where S is the
number of *slots* of the GPU expert cache. ``expert_slot`` (E,) maps an expert to its slot, or -1
when it is not resident: blocks of a non-resident expert write zeros and never read any weight,
so realrun can pass a weight buffer holding only the resident experts.

Two launches (a grouped GEMM each), both over the blocks of the alignment:
    1. gate_up: block m of ``sorted_token_ids`` x N-tile: gather the rows ``x[sorted // K]``,
       multiply by the expert's W1 and W3 tiles, store ``silu(g) * u`` (in x's dtype) -> (P, N);
    2. down:    block m x H-tile: (P, N) @ W2^T -> ``y_sorted`` (P, H).
Rows are the sorted slots; padding rows (sentinel) compute zeros; blocks past the padded total
return at once (their rows of y_sorted are left unwritten and the combine never reads them).
Accumulation is fp32; for fp32 inputs the dots use IEEE fp32 (no TF32), for fp16/bf16 the tensor
cores.

Example: T=2, K=2, E=2, both tokens route to experts 0 and 1, block_size 2:
    sorted_token_ids = [0, 2, 1, 3] (flat slots), expert_ids = [0, 1]
    block 0 (expert 0): rows x[0 // 2], x[2 // 2] = x[0], x[1] -> y_sorted[0:2] = FFN_0(x[0:2])
    block 1 (expert 1): rows x[1 // 2], x[3 // 2] = x[0], x[1] -> y_sorted[2:4] = FFN_1(x[0:2])
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.reference import AlignResult
from kernels.tuning import FfnConfig
from sim.common.errors import ConfigError

__all__ = ["grouped_swiglu", "grouped_gate_up_kernel", "grouped_down_kernel"]


@triton.jit
def grouped_gate_up_kernel(
    x_ptr,  # (T, H)
    w13_ptr,  # (S, 2N, H)
    inter_ptr,  # (P, N) out
    sorted_ids_ptr,  # (P,) int32
    expert_ids_ptr,  # (P // BLOCK_M,) int32
    total_ptr,  # (1,) int32
    slot_ptr,  # (E,) int32
    numel,  # T * K (the sentinel)
    num_rows,  # len(sorted_ids)
    N,
    H,
    stride_xt,
    stride_ws,
    stride_wn,
    stride_wh,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter only: its bf16 dot is wrong (Triton 3.x), so dot in fp32
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    n_mask = offs_n < N
    slot = tl.load(slot_ptr + tl.load(expert_ids_ptr + pid_m))
    out_ptrs = inter_ptr + offs_m[:, None] * N + offs_n[None, :]
    if slot < 0:
        tl.store(out_ptrs, tl.zeros((BLOCK_M, BLOCK_N), inter_ptr.dtype.element_ty), mask=n_mask[None, :])
        return
    tok = tl.load(sorted_ids_ptr + offs_m, mask=offs_m < num_rows, other=numel)  # (BM,) flat slots
    m_mask = tok < numel
    row = tok // TOP_K
    w_base = w13_ptr + slot.to(tl.int64) * stride_ws
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < H
        a = tl.load(x_ptr + row[:, None] * stride_xt + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # (BM, BK)
        wmask = k_mask[:, None] & n_mask[None, :]
        bg = tl.load(w_base + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wh,
                     mask=wmask, other=0.0)  # (BK, BN)
        bu = tl.load(w_base + (offs_n[None, :] + N) * stride_wn + offs_k[:, None] * stride_wh,
                     mask=wmask, other=0.0)  # (BK, BN)
        if UPCAST:
            a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
        if IEEE:
            acc_g = tl.dot(a, bg, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, bu, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(a, bg, acc_g)
            acc_u = tl.dot(a, bu, acc_u)
    h = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(out_ptrs, h.to(inter_ptr.dtype.element_ty), mask=n_mask[None, :])


@triton.jit
def grouped_down_kernel(
    inter_ptr,  # (P, N)
    w2_ptr,  # (S, H, N)
    y_ptr,  # (P, H) out
    expert_ids_ptr,
    total_ptr,
    slot_ptr,
    N,
    H,
    stride_ws,
    stride_wh,
    stride_wn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # tile of H (the output columns)
    BLOCK_K: tl.constexpr,  # tile of N (the reduction)
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter only: its bf16 dot is wrong (Triton 3.x), so dot in fp32
):
    pid = tl.program_id(0)
    num_h = tl.cdiv(H, BLOCK_N)
    pid_m = pid // num_h
    pid_h = pid % num_h
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_h = pid_h * BLOCK_N + tl.arange(0, BLOCK_N)
    h_mask = offs_h < H
    slot = tl.load(slot_ptr + tl.load(expert_ids_ptr + pid_m))
    out_ptrs = y_ptr + offs_m[:, None] * H + offs_h[None, :]
    if slot < 0:
        tl.store(out_ptrs, tl.zeros((BLOCK_M, BLOCK_N), y_ptr.dtype.element_ty), mask=h_mask[None, :])
        return
    w_base = w2_ptr + slot.to(tl.int64) * stride_ws
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, N, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < N
        a = tl.load(inter_ptr + offs_m[:, None] * N + offs_k[None, :], mask=k_mask[None, :], other=0.0)
        b = tl.load(w_base + offs_h[None, :] * stride_wh + offs_k[:, None] * stride_wn,
                    mask=k_mask[:, None] & h_mask[None, :], other=0.0)  # (BK, BN)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    tl.store(out_ptrs, acc.to(y_ptr.dtype.element_ty), mask=h_mask[None, :])


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreted(kernel) -> bool:
    """True under TRITON_INTERPRET=1 (the kernel object is then an interpreter function)."""
    return type(kernel).__name__ == "InterpretedFunction"


def grouped_swiglu(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    expert_slot: torch.Tensor,
    align: AlignResult,
    top_k: int,
    block_size: int,
    config: FfnConfig | None = None,
) -> torch.Tensor:
    """SwiGLU of every aligned token slot through its expert -> y_sorted (P_max, H) in x's dtype.

    x (T, H); w13 (S, 2N, H); w2 (S, H, N); expert_slot (E,) int32/int64, slot or -1;
    ``align`` from :func:`kernels.dynamic_gating` or :func:`kernels.static_capacity_gating` built
    with the same ``block_size`` (the BLOCK_M of the launch). ``config`` sets the tiles
    (default: :func:`kernels.tuning.default_ffn_config`); its block_m is overridden by block_size.
    """
    if x.dim() != 2:
        raise ConfigError(f"grouped_swiglu: x must be (T, H), got shape {tuple(x.shape)}")
    T, H = x.shape
    if x.dtype not in _DTYPES:
        raise ConfigError(f"grouped_swiglu: dtype must be one of {_DTYPES}, got {x.dtype}")
    if w13.dim() != 3 or w2.dim() != 3 or w13.shape[2] != H or w13.shape[1] % 2:
        raise ConfigError(f"grouped_swiglu: w13 must be (S, 2N, {H}), got {tuple(w13.shape)}")
    S, N = w13.shape[0], w13.shape[1] // 2
    if tuple(w2.shape) != (S, H, N):
        raise ConfigError(f"grouped_swiglu: w2 must be ({S}, {H}, {N}), got {tuple(w2.shape)}")
    if w13.dtype != x.dtype or w2.dtype != x.dtype:
        raise ConfigError(f"grouped_swiglu: weights must be {x.dtype}, got {w13.dtype} / {w2.dtype}")
    if expert_slot.dim() != 1:
        raise ConfigError("grouped_swiglu: expert_slot must be (E,)")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConfigError(f"grouped_swiglu: block_size must be a power of two >= 16, got {block_size}")
    p_max = align.sorted_token_ids.numel()
    if align.expert_ids.numel() * block_size < p_max:
        raise ConfigError("grouped_swiglu: the alignment was built with another block_size")
    for t in (w13, w2, expert_slot, align.sorted_token_ids):
        if t.device != x.device:
            raise ConfigError(f"grouped_swiglu: all tensors must be on {x.device}, got one on {t.device}")
    if config is None:
        from kernels.tuning import default_ffn_config

        config = default_ffn_config(T * top_k, expert_slot.numel())
    x = x.contiguous()
    w13 = w13 if w13.stride(2) == 1 else w13.contiguous()
    w2 = w2 if w2.stride(2) == 1 else w2.contiguous()
    slot32 = expert_slot.to(torch.int32)
    # rows rounded up to whole blocks (the kernels store whole blocks)
    num_m = align.expert_ids.numel()
    inter = torch.empty((num_m * block_size, N), dtype=x.dtype, device=x.device)  # (P, N)
    y = torch.empty((num_m * block_size, H), dtype=x.dtype, device=x.device)  # (P, H)
    sorted_ids = align.sorted_token_ids
    ieee = x.dtype == torch.float32
    upcast = x.dtype == torch.bfloat16 and _interpreted(grouped_gate_up_kernel)
    if num_m > 0 and T > 0:
        grouped_gate_up_kernel[(num_m * triton.cdiv(N, config.block_n),)](
            x, w13, inter, sorted_ids, align.expert_ids, align.num_tokens_post_padded, slot32,
            T * top_k, p_max, N, H, x.stride(0), w13.stride(0), w13.stride(1), w13.stride(2),
            TOP_K=top_k, BLOCK_M=block_size, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
            IEEE=ieee, UPCAST=upcast,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
        grouped_down_kernel[(num_m * triton.cdiv(H, config.block_n),)](
            inter, w2, y, align.expert_ids, align.num_tokens_post_padded, slot32,
            N, H, w2.stride(0), w2.stride(1), w2.stride(2),
            BLOCK_M=block_size, BLOCK_N=config.block_n, BLOCK_K=config.block_k, IEEE=ieee, UPCAST=upcast,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
    return y[:p_max]
