"""Static capacity gating: the baseline that Huang et al.'s dynamic gating replaced.

Every expert gets a fixed segment of ``capacity = ceil(capacity_factor * T * K / E)`` slots,
whatever its load. Slots are filled in priority order (all tokens' first choices in token order,
then all second choices, ..., as fairseq/GShard top-2 gating does); assignments beyond the
capacity are dropped (their token gets nothing from that expert) and the segment is padded to
``round_up(capacity, block_size)`` rows with the sentinel ``T * K``. The grouped FFN then computes
every row of every segment, which is the padding waste dynamic gating removes.

Worked example::

    topk_ids = [[0, 1], [0, 2], [0, 1], [3, 0]]    T = 4, K = 2, E = 4, capacity_factor = 1.0
    capacity = ceil(1.0 * 4 * 2 / 4) = 2, block_size = 2 -> segment = 2
    priority order (k-major): flat slots 0, 2, 4, 6 (first choices), then 1, 3, 5, 7
    expert 0 gets flat slots 0, 2 (full); 4 and 7 are dropped; expert 1: 1, 5; expert 2: 3; expert 3: 6
    sorted_token_ids = [0, 2,  1, 5,  3, 8,  6, 8]    num_dropped = 2
    inv = [0, 2, 1, 4, -1, 3, 6, -1]

Same output type as dynamic gating (:class:`kernels.reference.AlignResult`), so the grouped FFN
and the combine kernels serve both. It reuses the dynamic-gating stage kernels with ``K_MAJOR`` /
``STATIC`` set; the segment offsets are fixed, so there is no offsets stage.
"""

from __future__ import annotations

import torch
import triton

from kernels.align import CHUNK, _count_and_scan, align_scatter_kernel, check_topk_ids
from kernels.reference import AlignResult, static_capacity
from sim.common.errors import ConfigError

__all__ = ["static_capacity_gating", "static_capacity"]


def static_capacity_gating(
    topk_ids: torch.Tensor, num_experts: int, capacity_factor: float, block_size: int
) -> AlignResult:
    """Fixed-capacity layout of the T*K slots; overflow dropped; ``num_dropped`` counts the drops.

    topk_ids (T, K) int32/int64. Returns an :class:`AlignResult` whose ``sorted_token_ids`` has
    ``E * round_up(capacity, block_size)`` rows and whose ``inv`` is -1 for dropped slots.
    ``num_dropped`` is a 0-d int64 device tensor (read it with ``.item()``, which synchronises).
    """
    T, K = check_topk_ids(topk_ids, num_experts, "static_capacity_gating")
    if block_size < 1:
        raise ConfigError(f"static_capacity_gating: block_size must be >= 1, got {block_size}")
    if not capacity_factor > 0:
        raise ConfigError(f"static_capacity_gating: capacity_factor must be > 0, got {capacity_factor}")
    dev = topk_ids.device
    numel = T * K
    cap = static_capacity(T, K, num_experts, capacity_factor)
    seg = triton.cdiv(cap, block_size) * block_size
    ids32 = topk_ids.reshape(-1).to(torch.int32).contiguous()  # (T*K,)
    sorted_ids = torch.full((num_experts * seg,), numel, dtype=torch.int32, device=dev)
    expert_ids = torch.arange(num_experts, dtype=torch.int32, device=dev).repeat_interleave(seg // block_size)
    offsets = torch.arange(num_experts + 1, dtype=torch.int32, device=dev) * seg
    inv = torch.empty((numel,), dtype=torch.int32, device=dev)
    counts = torch.zeros((num_experts,), dtype=torch.int32, device=dev)
    if numel > 0:
        chunk_prefix, counts, num_chunks = _count_and_scan(ids32, T, K, num_experts, k_major=True)
        align_scatter_kernel[(num_chunks,)](
            ids32, chunk_prefix, offsets, sorted_ids, inv, numel, T, num_chunks, cap, seg,
            TOP_K=K, STATIC=True, CHUNK_SIZE=CHUNK,
        )
    num_dropped = (counts.to(torch.int64) - cap).clamp_min(0).sum()
    return AlignResult(
        sorted_token_ids=sorted_ids,
        expert_ids=expert_ids,
        num_tokens_post_padded=torch.tensor([num_experts * seg], dtype=torch.int32, device=dev),
        expert_counts=counts,
        expert_offsets=offsets,
        inv=inv,
        num_dropped=num_dropped,
    )
