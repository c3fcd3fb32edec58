"""Top-k gating: router logits (T, E) -> top-k expert ids (T, K) int32 and weights (T, K) float32.

One program per token; the E logits of a token are held as a (G, E/G) tile so that DeepSeek's
group-limited routing is a reduction along the tile's second axis. Top-k is K rounds of
"take the maximum, lowest expert id on ties, then mask it".

Example (Mixtral: softmax, top-2, renormalised)::

    logits = [[1.0, 3.0, 2.0, 0.0]]
    softmax = [0.0871, 0.6439, 0.2369, 0.0321]
    topk_ids = [[1, 2]]; weights = [0.6439, 0.2369] / 0.8808 = [[0.7311, 0.2689]]

Example (DeepSeek-V3: sigmoid, bias for selection only, 2 groups, best group kept, top-2)::

    logits = [[0, 0, 0, 0]] -> scores = [0.5, 0.5, 0.5, 0.5]
    bias   = [0.0, 0.1, 0.3, 0.0] -> selection scores [0.5, 0.6, 0.8, 0.5]
    groups {0, 1}: top2_sum 1.1; {2, 3}: 1.3 -> keep group 1 -> topk_ids = [[2, 3]]
    weights = unbiased scores [0.5, 0.5] renormalised = [[0.5, 0.5]]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sim.common.errors import ConfigError

__all__ = ["topk_gating", "topk_gating_kernel"]

_SCORING = {"softmax": 0, "sigmoid": 1}
_GROUP_SCORE = {"max": 0, "top2_sum": 1}


@triton.jit
def topk_gating_kernel(
    logits_ptr,  # (T, E)
    bias_ptr,  # (E,) or dummy
    ids_ptr,  # (T, K) int32 out
    weights_ptr,  # (T, K) float32 out
    stride_t,
    num_groups,
    group_size,
    scaling_factor,
    K: tl.constexpr,
    TOPK_GROUP: tl.constexpr,  # 0: no group limit
    SCORING: tl.constexpr,  # 0 softmax, 1 sigmoid
    GROUP_SCORE: tl.constexpr,  # 0 max, 1 sum of the two best
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_EG: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    t = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)  # (G,)
    j = tl.arange(0, BLOCK_EG)  # (E/G,)
    valid = (g[:, None] < num_groups) & (j[None, :] < group_size)  # (G, E/G)
    eid = g[:, None] * group_size + j[None, :]  # (G, E/G) expert id
    big = num_groups * group_size + 1
    x = tl.load(logits_ptr + t * stride_t + eid, mask=valid, other=float("-inf")).to(tl.float32)
    neg_inf = tl.full((BLOCK_G, BLOCK_EG), float("-inf"), tl.float32)

    if SCORING == 0:
        m = tl.max(tl.max(x, axis=1), axis=0)
        p = tl.where(valid, tl.exp(x - m), 0.0)
        scores = p / tl.sum(tl.sum(p, axis=1), axis=0)
        sel = x
    else:
        scores = tl.where(valid, tl.sigmoid(x), 0.0)
        sel = tl.where(valid, scores, neg_inf)
    if HAS_BIAS:
        b = tl.load(bias_ptr + eid, mask=valid, other=0.0).to(tl.float32)
        sel = tl.where(valid, sel + b, neg_inf)

    if TOPK_GROUP > 0:
        m1 = tl.max(sel, axis=1)  # (G,)
        if GROUP_SCORE == 0:
            gs = m1
        else:
            j1 = tl.min(tl.where(sel == m1[:, None], j[None, :], BLOCK_EG), axis=1)  # (G,)
            m2 = tl.max(tl.where(j[None, :] == j1[:, None], neg_inf, sel), axis=1)
            gs = m1 + m2
        gs = tl.where(g < num_groups, gs, float("-inf"))
        keep = g < 0  # all False, (G,)
        for _i in tl.static_range(TOPK_GROUP):
            gm = tl.max(gs, axis=0)
            gi = tl.min(tl.where(gs == gm, g, BLOCK_G), axis=0)
            keep = keep | (g == gi)
            gs = tl.where(g == gi, float("-inf"), gs)
        sel = tl.where(keep[:, None], sel, neg_inf)

    kk = tl.arange(0, BLOCK_K)
    out_ids = tl.zeros((BLOCK_K,), tl.int32)
    out_w = tl.zeros((BLOCK_K,), tl.float32)
    for i in tl.static_range(K):
        mx = tl.max(tl.max(sel, axis=1), axis=0)
        idx = tl.min(tl.min(tl.where(sel == mx, eid, big), axis=1), axis=0)
        w = tl.sum(tl.sum(tl.where(eid == idx, scores, 0.0), axis=1), axis=0)
        out_ids = tl.where(kk == i, idx, out_ids)
        out_w = tl.where(kk == i, w, out_w)
        sel = tl.where(eid == idx, neg_inf, sel)
    if RENORMALIZE:
        out_w = out_w / tl.sum(out_w, axis=0)
    out_w = out_w * scaling_factor
    tl.store(ids_ptr + t * K + kk, out_ids, mask=kk < K)
    tl.store(weights_ptr + t * K + kk, out_w, mask=kk < K)


def topk_gating(
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

    Same arguments and semantics as :func:`kernels.reference.topk_gating_ref` (Mixtral:
    ``scoring="softmax", renormalize=True``; DeepSeek-V2-Lite: ``renormalize=False``;
    DeepSeek-V3: ``scoring="sigmoid", bias=..., num_groups=8, topk_group=4,
    group_score="top2_sum", scaling_factor=2.5``).
    """
    if logits.dim() != 2:
        raise ConfigError(f"topk_gating: logits must be (T, E), got shape {tuple(logits.shape)}")
    T, E = logits.shape
    if scoring not in _SCORING:
        raise ConfigError(f"topk_gating: scoring must be one of {sorted(_SCORING)}, got {scoring!r}")
    if group_score not in _GROUP_SCORE:
        raise ConfigError(
            f"topk_gating: group_score must be one of {sorted(_GROUP_SCORE)}, got {group_score!r}")
    if num_groups < 1 or E % num_groups:
        raise ConfigError(f"topk_gating: num_groups={num_groups} must divide E={E}")
    group_size = E // num_groups
    tg = 0 if topk_group is None or topk_group >= num_groups else int(topk_group)
    if topk_group is not None and topk_group < 1:
        raise ConfigError(f"topk_gating: topk_group must be >= 1, got {topk_group}")
    candidates = (tg or num_groups) * group_size
    if not 1 <= top_k <= candidates:
        raise ConfigError(f"topk_gating: top_k={top_k} must be in [1, {candidates}] (experts in kept groups)")
    if group_score == "top2_sum" and tg and group_size < 2:
        raise ConfigError("topk_gating: group_score='top2_sum' needs at least 2 experts per group")
    if bias is not None and (bias.shape != (E,) or bias.device != logits.device):
        raise ConfigError(f"topk_gating: bias must be ({E},) on {logits.device}, got {tuple(bias.shape)}")
    logits = logits.contiguous()
    ids = torch.empty((T, top_k), dtype=torch.int32, device=logits.device)
    weights = torch.empty((T, top_k), dtype=torch.float32, device=logits.device)
    if T == 0:
        return ids, weights
    topk_gating_kernel[(T,)](
        logits,
        bias if bias is not None else logits,
        ids,
        weights,
        logits.stride(0),
        num_groups,
        group_size,
        float(scaling_factor),
        K=top_k,
        TOPK_GROUP=tg,
        SCORING=_SCORING[scoring],
        GROUP_SCORE=_GROUP_SCORE[group_score],
        HAS_BIAS=bias is not None,
        RENORMALIZE=bool(renormalize),
        BLOCK_G=triton.next_power_of_2(num_groups),
        BLOCK_EG=triton.next_power_of_2(group_size),
        BLOCK_K=triton.next_power_of_2(top_k),
    )
    return ids, weights
