"""Torch reference of every MoE kernel and of a whole MoE layer.

Every kernel test imports this module and compares the Triton kernel with it: integer outputs
exactly, floating outputs to the tolerances stated in the tests. The references favour clarity over
speed (a Python loop over experts is fine here, never over tokens), and they use no Triton.

Shape legend:
    T  tokens                      E  routed experts          K  experts per token (top_k)
    H  hidden size (model dim)     N  expert intermediate size (ffn dim)
    S  weight slots resident in the GPU expert cache
    P  padded number of token slots after alignment (>= T*K)
    B  block size (rows of one grouped-GEMM tile; segments are padded to a multiple of it)

Conventions shared with the kernels:
    * a "flat slot" is ``t * K + k``: the k-th choice of token t, an index into ``topk_ids.view(-1)``;
    * the sentinel ``T * K`` marks a padding row in ``sorted_token_ids`` (vLLM's contract);
    * ``inv[t * K + k]`` is the position of that flat slot in ``sorted_token_ids``, or -1 when the
      slot was dropped (static capacity gating only);
    * ties in top-k are broken towards the lower expert id; tokens of one expert keep their
      flat-slot order (dynamic gating) or their priority order (static gating: every token's first
      choice before any token's second choice, as fairseq/GShard top-2 gating does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "AlignResult",
    "topk_gating_ref",
    "moe_align_block_size_ref",
    "dynamic_gating_ref",
    "static_capacity_gating_ref",
    "static_capacity",
    "grouped_swiglu_ref",
    "combine_ref",
    "moe_layer_ref",
]


@dataclass(frozen=True)
class AlignResult:
    """Token slots grouped by expert, each expert's segment padded to a multiple of the block size.

    sorted_token_ids: (P_max,) int32, flat slots sorted by expert, padded with the sentinel T*K
    expert_ids:       (P_max // B,) int32, the expert of each block; -1 past the padded total
    num_tokens_post_padded: (1,) int32, the padded total P (vLLM returns the same 1-element tensor)
    expert_counts:    (E,) int32, tokens routed to each expert (before padding; after dropping for
                      static gating they are still the routed counts)
    expert_offsets:   (E + 1,) int32, start of each expert's segment in sorted_token_ids; [E] = P
    inv:              (T*K,) int32, position of each flat slot in sorted_token_ids (-1: dropped)
    num_dropped:      () int64, token-expert assignments dropped (always 0 for dynamic gating)
    """

    sorted_token_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_tokens_post_padded: torch.Tensor
    expert_counts: torch.Tensor
    expert_offsets: torch.Tensor
    inv: torch.Tensor
    num_dropped: torch.Tensor


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _stable_topk_desc(sel: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of each row; ties go to the lower index."""
    return torch.sort(sel, dim=-1, descending=True, stable=True).indices[..., :k]


def topk_gating_ref(
    logits: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = True,
    bias: torch.Tensor | None = None,
    num_groups: int = 1,
    topk_group: int | None = None,
    group_score: str = "max",
    scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (T, E) -> (topk_ids (T, K) int32, topk_weights (T, K) float32).

    scoring="softmax": scores = softmax(logits); experts are selected on ``logits + bias`` (the
        same ranking as the probabilities, without rounding ties). Mixtral: renormalize=True.
        DeepSeek-V2(-Lite): renormalize=False, optionally group-limited with group_score="max".
    scoring="sigmoid": scores = sigmoid(logits); selected on ``scores + bias`` (DeepSeek-V3's
        aux-loss-free bias), group_score="top2_sum", renormalize=True; weights use the unbiased
        scores of the chosen experts.
    Group-limited top-k: experts are split into num_groups contiguous groups; only the topk_group
    groups with the best group score (max, or sum of the two best, of the selection scores) compete.
    The weights are multiplied by scaling_factor (DeepSeek's routed_scaling_factor) last.
    """
    x = logits.float()  # (T, E)
    T, E = x.shape
    if scoring == "softmax":
        scores = torch.softmax(x, dim=-1)
        sel = x.clone()
    elif scoring == "sigmoid":
        scores = torch.sigmoid(x)
        sel = scores.clone()
    else:
        raise ValueError(f"scoring must be 'softmax' or 'sigmoid', got {scoring!r}")
    if bias is not None:
        sel = sel + bias.float()[None, :]
    if topk_group is not None and topk_group < num_groups:
        g = sel.view(T, num_groups, E // num_groups)  # (T, G, E/G)
        if group_score == "max":
            gs = g.max(dim=-1).values
        elif group_score == "top2_sum":
            gs = torch.sort(g, dim=-1, descending=True).values[..., :2].sum(dim=-1)
        else:
            raise ValueError(f"group_score must be 'max' or 'top2_sum', got {group_score!r}")
        keep_groups = _stable_topk_desc(gs, topk_group)  # (T, topk_group)
        gmask = torch.zeros(T, num_groups, dtype=torch.bool, device=x.device)
        gmask.scatter_(1, keep_groups, True)
        emask = gmask.repeat_interleave(E // num_groups, dim=1)  # (T, E)
        sel = sel.masked_fill(~emask, float("-inf"))
    ids = _stable_topk_desc(sel, top_k)  # (T, K)
    w = torch.gather(scores, 1, ids)  # (T, K)
    if renormalize:
        w = w / w.sum(dim=-1, keepdim=True)
    w = w * scaling_factor
    return ids.to(torch.int32), w.float()


def _group_by_expert(topk_ids: torch.Tensor, num_experts: int, priority: torch.Tensor):
    """Flat slots ordered by (expert, priority); also the rank of each flat slot within its expert."""
    flat = topk_ids.reshape(-1).long()  # (T*K,)
    n = flat.numel()
    # stable sort by expert of the slots listed in priority order
    order_p = torch.sort(flat[priority], stable=True).indices
    order = priority[order_p]  # (T*K,) flat slots grouped by expert
    counts = torch.bincount(flat, minlength=num_experts)[:num_experts]  # (E,)
    starts = torch.cumsum(counts, 0) - counts  # (E,)
    rank = torch.empty(n, dtype=torch.long, device=flat.device)
    rank[order] = torch.arange(n, device=flat.device) - starts[flat[order]]
    return flat, order, counts, rank


def dynamic_gating_ref(topk_ids: torch.Tensor, block_size: int, num_experts: int) -> AlignResult:
    """Dynamic gating (Huang et al.) = vLLM's moe_align_block_size, plus counts and the inverse."""
    T, K = topk_ids.shape
    n = T * K
    dev = topk_ids.device
    flat, order, counts, rank = _group_by_expert(topk_ids, num_experts, torch.arange(n, device=dev))
    padded = (counts + block_size - 1) // block_size * block_size  # (E,)
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(padded, 0)
    total = int(offsets[-1])
    p_max = n + num_experts * (block_size - 1)
    sorted_ids = torch.full((p_max,), n, dtype=torch.int32, device=dev)
    pos = offsets[flat] + rank  # (T*K,)
    sorted_ids[pos] = torch.arange(n, dtype=torch.int32, device=dev)
    expert_ids = torch.full((math.ceil(p_max / block_size),), -1, dtype=torch.int32, device=dev)
    expert_ids[: total // block_size] = torch.repeat_interleave(
        torch.arange(num_experts, dtype=torch.int32, device=dev), padded // block_size
    )
    return AlignResult(
        sorted_token_ids=sorted_ids,
        expert_ids=expert_ids,
        num_tokens_post_padded=torch.tensor([total], dtype=torch.int32, device=dev),
        expert_counts=counts.to(torch.int32),
        expert_offsets=offsets.to(torch.int32),
        inv=pos.to(torch.int32),
        num_dropped=torch.zeros((), dtype=torch.int64, device=dev),
    )


def moe_align_block_size_ref(topk_ids: torch.Tensor, block_size: int, num_experts: int):
    """vLLM's contract: (sorted_token_ids, expert_ids, num_tokens_post_padded)."""
    r = dynamic_gating_ref(topk_ids, block_size, num_experts)
    return r.sorted_token_ids, r.expert_ids, r.num_tokens_post_padded


def static_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * T * K / E), at least 1."""
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def static_capacity_gating_ref(
    topk_ids: torch.Tensor, num_experts: int, capacity_factor: float, block_size: int
) -> AlignResult:
    """Static capacity gating: every expert gets a fixed segment; overflow assignments are dropped.

    Priority: every token's first choice, in token order, then every token's second choice, ...
    Each segment has ``round_up(capacity, block_size)`` rows; only ``capacity`` of them are filled.
    """
    T, K = topk_ids.shape
    n = T * K
    dev = topk_ids.device
    cap = static_capacity(T, K, num_experts, capacity_factor)
    seg = _round_up(cap, block_size)
    # priority position p -> flat slot (p % T) * K + p // T
    p = torch.arange(n, device=dev)
    priority = (p % T) * K + p // T
    flat, order, counts, rank = _group_by_expert(topk_ids, num_experts, priority)
    keep = rank < cap  # (T*K,)
    pos = flat * seg + rank
    sorted_ids = torch.full((num_experts * seg,), n, dtype=torch.int32, device=dev)
    slots = torch.arange(n, dtype=torch.int32, device=dev)
    sorted_ids[pos[keep]] = slots[keep]
    inv = torch.where(keep, pos, torch.full_like(pos, -1))
    expert_ids = torch.repeat_interleave(
        torch.arange(num_experts, dtype=torch.int32, device=dev), seg // block_size
    )
    offsets = torch.arange(num_experts + 1, device=dev) * seg
    return AlignResult(
        sorted_token_ids=sorted_ids,
        expert_ids=expert_ids,
        num_tokens_post_padded=torch.tensor([num_experts * seg], dtype=torch.int32, device=dev),
        expert_counts=counts.to(torch.int32),
        expert_offsets=offsets.to(torch.int32),
        inv=inv.to(torch.int32),
        num_dropped=(~keep).sum(),
    )


def _swiglu_rows(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU of rows x (M, H) through one expert: w13 (2N, H) = [gate; up], w2 (H, N) -> (M, H).

    Accumulates in fp32 and rounds the intermediate to x's dtype, as the kernel does.
    """
    n = w2.shape[1]
    gu = x.float() @ w13.float().t()  # (M, 2N)
    h = (torch.nn.functional.silu(gu[:, :n]) * gu[:, n:]).to(x.dtype)  # (M, N)
    return (h.float() @ w2.float().t()).to(x.dtype)  # (M, H)


def grouped_swiglu_ref(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    expert_slot: torch.Tensor,
    align: AlignResult,
    top_k: int,
) -> torch.Tensor:
    """Expert outputs in sorted order: (P_max, H); rows of padding / non-resident experts are 0.

    x (T, H); w13 (S, 2N, H); w2 (S, H, N); expert_slot (E,) int: slot of each expert or -1.
    Rows past the padded total are also 0 here (the kernel leaves them unwritten: never read).
    """
    T, H = x.shape
    n = T * top_k
    sorted_ids = align.sorted_token_ids.long()
    out = torch.zeros(sorted_ids.numel(), H, dtype=x.dtype, device=x.device)
    offsets = align.expert_offsets.long()
    for e in range(expert_slot.numel()):
        slot = int(expert_slot[e])
        lo, hi = int(offsets[e]), int(offsets[e + 1])
        rows = torch.arange(lo, hi, device=x.device)
        rows = rows[sorted_ids[rows] < n]
        if slot < 0 or rows.numel() == 0:
            continue
        out[rows] = _swiglu_rows(x[sorted_ids[rows] // top_k], w13[slot], w2[slot])
    return out


def combine_ref(y_sorted: torch.Tensor, inv: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_k w[t, k] * y_sorted[inv[t*K + k]] (dropped slots: inv = -1 add nothing).

    y_sorted (P, H); inv (T*K,); topk_weights (T, K) -> (T, H) in y_sorted's dtype, fp32 sums
    taken in k order.
    """
    T, K = topk_weights.shape
    inv2 = inv.view(T, K).long()
    acc = torch.zeros(T, y_sorted.shape[1], dtype=torch.float32, device=y_sorted.device)
    for k in range(K):
        rows = y_sorted[inv2[:, k].clamp_min(0)].float()  # (T, H)
        w = torch.where(inv2[:, k] >= 0, topk_weights[:, k].float(), torch.zeros_like(topk_weights[:, k]))
        acc = acc + w[:, None] * rows
    return acc.to(y_sorted.dtype)


def moe_layer_ref(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    top_k: int,
    expert_slot: torch.Tensor | None = None,
    **gating_kwargs,
) -> torch.Tensor:
    """A whole MoE layer straight from its definition, without any alignment layout.

    out[t] = sum over the top-k experts e of t of w[t, e] * SwiGLU_e(x[t]); experts without a slot
    contribute nothing. x (T, H), router_logits (T, E) -> (T, H) in x's dtype.
    """
    T, H = x.shape
    E = router_logits.shape[1]
    if expert_slot is None:
        expert_slot = torch.arange(E, device=x.device)
    ids, w = topk_gating_ref(router_logits, top_k, **gating_kwargs)  # (T, K)
    acc = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    for e in range(E):
        slot = int(expert_slot[e])
        tok, kk = torch.nonzero(ids == e, as_tuple=True)
        if slot < 0 or tok.numel() == 0:
            continue
        y = _swiglu_rows(x[tok], w13[slot], w2[slot]).float()  # (M, H)
        acc.index_add_(0, tok, w[tok, kk][:, None] * y)
    return acc.to(x.dtype)
