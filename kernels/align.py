"""Dynamic gating (Huang et al.) / vLLM's ``moe_align_block_size``: group token slots by expert.

Given the top-k expert ids of T tokens, produce the flat slots ``t * K + k`` sorted by expert,
each expert's segment padded with the sentinel ``T * K`` only up to the next multiple of the block
size (no token is dropped), the expert of each block, the padded total, the per-expert counts and
the inverse permutation (where each flat slot went). The grouped FFN reads its rows through
``sorted_token_ids`` and the combine reads them back through ``inv``.

Worked example (the one in vLLM's docstring, with expert ids 0-based)::

    topk_ids = [[1, 2, 3], [0, 1, 3], [0, 2, 3], [0, 1, 2]]     T = 4, K = 3, E = 4, block_size = 4
    flattened          = [1, 2, 3, 0, 1, 3, 0, 2, 3, 0, 1, 2]   (flat slot i -> expert)
    expert_counts      = [3, 3, 3, 3] -> each segment padded by one sentinel (12) to 4
    sorted_token_ids   = [3, 6, 9, 12,  0, 4, 10, 12,  1, 7, 11, 12,  2, 5, 8, 12,  12 x 8]
                          (length T*K + E*(block_size-1) = 24; the tail past the total is sentinel)
    expert_ids         = [0, 1, 2, 3, -1, -1]   (one per block; -1 past the padded total)
    num_tokens_post_padded = [16]
    inv                = [4, 8, 12, 0, 5, 13, 1, 9, 14, 2, 6, 10]   (sorted_token_ids[inv[i]] == i)

Within an expert, slots keep their flat order, so the output is deterministic (vLLM's CUDA kernel
may order them differently inside a segment; its tests compare segments as sets).

Four launches, all without atomics: (1) per chunk of slots, a histogram over experts;
(2) per expert, an exclusive scan of its chunk counts; (3) per expert, its padded segment offset
(scan over experts) and its entries of ``expert_ids``; (4) per chunk, each slot's position =
segment offset + earlier chunks' count + rank inside the chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.reference import AlignResult
from sim.common.errors import ConfigError

__all__ = [
    "moe_align_block_size",
    "dynamic_gating",
    "align_count_kernel",
    "align_scan_kernel",
    "align_offsets_kernel",
    "align_scatter_kernel",
]

#: slots handled per program in the count and scatter stages
CHUNK = 64


@triton.jit
def align_count_kernel(
    topk_ids_ptr,  # (T*K,) int32
    chunk_counts_ptr,  # (E, C) int32 out: slots of chunk c routed to expert e
    numel,
    num_tokens,
    num_chunks,
    num_experts,
    TOP_K: tl.constexpr,
    K_MAJOR: tl.constexpr,  # chunk over priority order p -> flat (p % T) * K + p // T
    CHUNK_SIZE: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    c = tl.program_id(0)
    p = c * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)  # (C,)
    mask = p < numel
    if K_MAJOR:
        flat = (p % num_tokens) * TOP_K + p // num_tokens
    else:
        flat = p
    e = tl.load(topk_ids_ptr + flat, mask=mask, other=-1)  # (C,)
    ex = tl.arange(0, BLOCK_E)  # (E,)
    counts = tl.sum((e[:, None] == ex[None, :]).to(tl.int32), axis=0)  # (E,)
    tl.store(chunk_counts_ptr + ex * num_chunks + c, counts, mask=ex < num_experts)


@triton.jit
def align_scan_kernel(
    chunk_counts_ptr,  # (E, C) int32
    chunk_prefix_ptr,  # (E, C) int32 out: slots of expert e in chunks before c
    counts_ptr,  # (E,) int32 out
    num_chunks,
    BLOCK_C: tl.constexpr,
):
    e = tl.program_id(0)
    run = tl.zeros((), tl.int32)
    for start in range(0, num_chunks, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        m = c < num_chunks
        v = tl.load(chunk_counts_ptr + e * num_chunks + c, mask=m, other=0)
        incl = tl.cumsum(v, axis=0)
        tl.store(chunk_prefix_ptr + e * num_chunks + c, run + incl - v, mask=m)
        run += tl.sum(v, axis=0)
    tl.store(counts_ptr + e, run)


@triton.jit
def align_offsets_kernel(
    counts_ptr,  # (E,) int32
    offsets_ptr,  # (E + 1,) int32 out
    expert_ids_ptr,  # (P_max // B,) int32 out (prefilled with -1)
    total_ptr,  # (1,) int32 out
    num_experts,
    block_size,
    BLOCK_E: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    e = tl.program_id(0)
    ex = tl.arange(0, BLOCK_E)
    m = ex < num_experts
    cnt = tl.load(counts_ptr + ex, mask=m, other=0)
    padded = (cnt + block_size - 1) // block_size * block_size  # (E,)
    incl = tl.cumsum(padded, axis=0)
    excl = incl - padded
    start = tl.sum(tl.where(ex == e, excl, 0), axis=0)
    length = tl.sum(tl.where(ex == e, padded, 0), axis=0)
    if e == 0:
        total = tl.sum(padded, axis=0)
        tl.store(offsets_ptr + ex, excl, mask=m)
        tl.store(offsets_ptr + num_experts, total)
        tl.store(total_ptr, total)
    b0 = start // block_size
    nb = length // block_size
    for s in range(0, nb, BLOCK_B):
        b = s + tl.arange(0, BLOCK_B)
        tl.store(expert_ids_ptr + b0 + b, tl.zeros((BLOCK_B,), tl.int32) + e, mask=b < nb)


@triton.jit
def align_scatter_kernel(
    topk_ids_ptr,  # (T*K,) int32
    chunk_prefix_ptr,  # (E, C) int32
    offsets_ptr,  # (E + 1,) int32 (dynamic) / unused (static)
    sorted_ids_ptr,  # (P_max,) int32 out (prefilled with the sentinel)
    inv_ptr,  # (T*K,) int32 out
    numel,
    num_tokens,
    num_chunks,
    capacity,  # static: slots kept per expert
    segment,  # static: rows per expert segment
    TOP_K: tl.constexpr,
    STATIC: tl.constexpr,
    CHUNK_SIZE: tl.constexpr,
):
    c = tl.program_id(0)
    i = tl.arange(0, CHUNK_SIZE)
    p = c * CHUNK_SIZE + i  # (C,)
    mask = p < numel
    if STATIC:
        flat = (p % num_tokens) * TOP_K + p // num_tokens
    else:
        flat = p
    e = tl.load(topk_ids_ptr + flat, mask=mask, other=-1)  # (C,)
    earlier = (e[:, None] == e[None, :]) & (i[None, :] < i[:, None])  # (C, C)
    rank = tl.sum(earlier.to(tl.int32), axis=1)  # (C,)
    rank += tl.load(chunk_prefix_ptr + e * num_chunks + c, mask=mask, other=0)
    if STATIC:
        keep = mask & (rank < capacity)
        pos = e * segment + rank
    else:
        keep = mask
        pos = tl.load(offsets_ptr + e, mask=mask, other=0) + rank
    tl.store(sorted_ids_ptr + pos, flat, mask=keep)
    tl.store(inv_ptr + flat, tl.where(keep, pos, -1), mask=mask)


def check_topk_ids(topk_ids: torch.Tensor, num_experts: int, where: str) -> tuple[int, int]:
    if topk_ids.dim() != 2:
        raise ConfigError(f"{where}: topk_ids must be (T, K), got shape {tuple(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ConfigError(f"{where}: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if num_experts < 1:
        raise ConfigError(f"{where}: num_experts must be >= 1, got {num_experts}")
    T, K = topk_ids.shape
    if T * K >= 2**31 - 1:
        raise ConfigError(f"{where}: T*K={T * K} does not fit int32 slot ids")
    return T, K


def _count_and_scan(ids32: torch.Tensor, num_tokens: int, top_k: int, num_experts: int, k_major: bool):
    """Stages 1-2: per-(expert, chunk) counts, their exclusive scan over chunks, per-expert totals."""
    numel = ids32.numel()
    dev = ids32.device
    num_chunks = max(1, triton.cdiv(numel, CHUNK))
    chunk_counts = torch.empty((num_experts, num_chunks), dtype=torch.int32, device=dev)
    chunk_prefix = torch.empty_like(chunk_counts)
    counts = torch.empty((num_experts,), dtype=torch.int32, device=dev)
    align_count_kernel[(num_chunks,)](
        ids32, chunk_counts, numel, num_tokens, num_chunks, num_experts,
        TOP_K=top_k, K_MAJOR=k_major, CHUNK_SIZE=CHUNK, BLOCK_E=triton.next_power_of_2(num_experts),
    )
    align_scan_kernel[(num_experts,)](
        chunk_counts, chunk_prefix, counts, num_chunks,
        BLOCK_C=min(1024, triton.next_power_of_2(num_chunks)),
    )
    return chunk_prefix, counts, num_chunks


def dynamic_gating(topk_ids: torch.Tensor, block_size: int, num_experts: int) -> AlignResult:
    """Group the T*K token slots by expert, padding each segment up to ``block_size``; drop nothing.

    topk_ids (T, K) int32/int64 with values in [0, num_experts) (not checked on the device: an
    out-of-range id is undefined behaviour, as in vLLM). Returns an :class:`AlignResult`; see the
    module docstring for a worked example. ``sorted_token_ids`` has ``T*K + E*(block_size-1)``
    entries (vLLM's bound), ``expert_ids`` one per block of it.
    """
    T, K = check_topk_ids(topk_ids, num_experts, "dynamic_gating")
    if block_size < 1:
        raise ConfigError(f"dynamic_gating: block_size must be >= 1, got {block_size}")
    dev = topk_ids.device
    numel = T * K
    ids32 = topk_ids.reshape(-1).to(torch.int32).contiguous()  # (T*K,)
    p_max = numel + num_experts * (block_size - 1)
    sorted_ids = torch.full((p_max,), numel, dtype=torch.int32, device=dev)
    expert_ids = torch.full((triton.cdiv(p_max, block_size),), -1, dtype=torch.int32, device=dev)
    total = torch.zeros((1,), dtype=torch.int32, device=dev)
    offsets = torch.zeros((num_experts + 1,), dtype=torch.int32, device=dev)
    inv = torch.empty((numel,), dtype=torch.int32, device=dev)
    counts = torch.zeros((num_experts,), dtype=torch.int32, device=dev)
    if numel > 0:
        chunk_prefix, counts, num_chunks = _count_and_scan(ids32, T, K, num_experts, k_major=False)
        align_offsets_kernel[(num_experts,)](
            counts, offsets, expert_ids, total, num_experts, block_size,
            BLOCK_E=triton.next_power_of_2(num_experts), BLOCK_B=128,
        )
        align_scatter_kernel[(num_chunks,)](
            ids32, chunk_prefix, offsets, sorted_ids, inv, numel, T, num_chunks, 0, 0,
            TOP_K=K, STATIC=False, CHUNK_SIZE=CHUNK,
        )
    return AlignResult(
        sorted_token_ids=sorted_ids,
        expert_ids=expert_ids,
        num_tokens_post_padded=total,
        expert_counts=counts,
        expert_offsets=offsets,
        inv=inv,
        num_dropped=torch.zeros((), dtype=torch.int64, device=dev),
    )


def moe_align_block_size(
    topk_ids: torch.Tensor, block_size: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's contract: ``(sorted_token_ids, expert_ids, num_tokens_post_padded)``.

    sorted_token_ids (T*K + E*(block_size-1),) int32: indices into ``topk_ids.flatten()`` grouped by
    expert, each expert's segment padded with the sentinel ``T*K`` to a multiple of block_size;
    expert_ids (cdiv(len(sorted_token_ids), block_size),) int32: the expert of each block (-1 past
    the padded total); num_tokens_post_padded (1,) int32. See the module docstring's example.
    """
    r = dynamic_gating(topk_ids, block_size, num_experts)
    return r.sorted_token_ids, r.expert_ids, r.num_tokens_post_padded
