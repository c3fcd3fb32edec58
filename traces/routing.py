"""Router functions of the MoE architectures ``moesim trace capture`` supports, written out in numpy.

Each function maps router logits (N, E) and the router's parameters to ``(ids, weights)``, both
(N, K): the experts a token is sent to and the gate weights its expert outputs are multiplied by.
They follow the modeling files of the installed transformers (read, not copied) and the papers:

``softmax_topk`` (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE)
    p = softmax(logits); ids = top-k of p; weights = p[ids], divided by their sum when ``renorm``
    (Mixtral always; the others when the config's ``norm_topk_prob`` is true).
``deepseek_v3`` (DeepSeek-V3, noaux_tc)
    s = sigmoid(logits); the choice uses s + bias (``e_score_correction_bias``), restricted to the
    ``topk_group`` best of ``n_group`` expert groups, a group scored by the sum of its two best
    biased scores; weights = the UNbiased s of the chosen experts, divided by their sum when
    ``norm_topk_prob``, times ``routed_scaling_factor``.
``deepseek_v2`` (DeepSeek-V2)
    p = softmax(logits); ``greedy``: top-k of p; ``group_limited_greedy``: top-k of p among the
    ``topk_group`` groups with the largest single p; weights = p[ids] * ``routed_scaling_factor``
    (transformers' DeepseekV2 router does not renormalise).
``topk_softmax`` (GPT-OSS)
    ids = top-k of the logits (the router has a bias, already in the logits); weights = softmax
    over the k chosen logits.
``sparsemixer`` (Phi-MoE, eval mode; Liu et al. 2024, "GRIN: GRadient-INformed MoE")
    Top-2 only. First expert = argmax; its weight = softmax over the logits that lie within a
    relative distance 2*eps of the max (|max - s| / max(|s|, max) <= 2*eps, eps = router jitter),
    taken at the argmax. Second expert = argmax with the first masked out; its weight = the same
    masked softmax around the second max, the first expert excluded.

Ties: numpy's stable sort breaks ties by the lower expert id; torch.topk may not. Callers compare
expert SETS per (token, layer), never the order, which DeepSeek's unsorted top-k does not fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, E) -> (N, k) ids of the k largest, largest first."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def softmax_topk(logits: np.ndarray, top_k: int, renorm: bool) -> tuple[np.ndarray, np.ndarray]:
    p = _softmax(logits.astype(np.float64))
    ids = _topk(p, top_k)
    w = np.take_along_axis(p, ids, axis=-1)
    if renorm:
        w = w / w.sum(axis=-1, keepdims=True)
    return ids, w


def deepseek_v3(logits: np.ndarray, top_k: int, bias: np.ndarray, n_group: int, topk_group: int,
                norm_topk_prob: bool, routed_scaling_factor: float) -> tuple[np.ndarray, np.ndarray]:
    N, E = logits.shape
    s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    choice = s + np.asarray(bias, dtype=np.float64)[None, :]
    grouped = choice.reshape(N, n_group, E // n_group)
    group_score = np.sort(grouped, axis=-1)[:, :, -2:].sum(axis=-1)  # (N, G) sum of the two best
    keep = np.zeros((N, n_group), dtype=bool)
    np.put_along_axis(keep, _topk(group_score, topk_group), True, axis=-1)
    masked = np.where(np.repeat(keep, E // n_group, axis=1), choice, -np.inf)
    ids = _topk(masked, top_k)
    w = np.take_along_axis(s, ids, axis=-1)
    if norm_topk_prob:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    return ids, w * routed_scaling_factor


def deepseek_v2(logits: np.ndarray, top_k: int, topk_method: str, n_group: int | None,
                topk_group: int | None, routed_scaling_factor: float) -> tuple[np.ndarray, np.ndarray]:
    N, E = logits.shape
    p = _softmax(logits.astype(np.float64))
    if topk_method == "group_limited_greedy":
        group_score = p.reshape(N, n_group, E // n_group).max(axis=-1)
        keep = np.zeros((N, n_group), dtype=bool)
        np.put_along_axis(keep, _topk(group_score, topk_group), True, axis=-1)
        p = np.where(np.repeat(keep, E // n_group, axis=1), p, 0.0)
    elif topk_method != "greedy":
        raise ValueError(f"unknown DeepSeek-V2 topk_method {topk_method!r}")
    ids = _topk(p, top_k)
    return ids, np.take_along_axis(p, ids, axis=-1) * routed_scaling_factor


def topk_softmax(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    x = logits.astype(np.float64)
    ids = _topk(x, top_k)
    return ids, _softmax(np.take_along_axis(x, ids, axis=-1))


def _masked_softmax_at(scores: np.ndarray, allowed: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Among ``allowed`` experts: the argmax and the softmax weight there over the experts within
    relative distance 2*eps of the max."""
    s = np.where(allowed, scores, -np.inf)
    top = np.argmax(s, axis=-1)[:, None]  # (N, 1)
    m = np.take_along_axis(s, top, axis=-1)
    factor = np.maximum(np.abs(scores), m)
    near = allowed & ((m - scores) / factor <= 2 * eps)
    g = _softmax(np.where(near, scores, -np.inf))
    return top, np.take_along_axis(g, top, axis=-1)


def sparsemixer(logits: np.ndarray, jitter_eps: float) -> tuple[np.ndarray, np.ndarray]:
    x = logits.astype(np.float64)
    everyone = np.ones_like(x, dtype=bool)
    first, w1 = _masked_softmax_at(x, everyone, jitter_eps)
    rest = everyone.copy()
    np.put_along_axis(rest, first, False, axis=-1)
    second, w2 = _masked_softmax_at(x, rest, jitter_eps)
    return np.concatenate([first, second], axis=1), np.concatenate([w1, w2], axis=1)


def route(kind: str, logits: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Apply the router function ``kind`` (see the module docstring) to logits (N, E)."""
    k = int(params["top_k"])
    if kind == "softmax_topk":
        return softmax_topk(logits, k, bool(params["renorm"]))
    if kind == "deepseek_v3":
        return deepseek_v3(logits, k, params["bias"], params["n_group"], params["topk_group"],
                           bool(params["norm_topk_prob"]), float(params["routed_scaling_factor"]))
    if kind == "deepseek_v2":
        return deepseek_v2(logits, k, params["topk_method"], params.get("n_group"),
                           params.get("topk_group"), float(params["routed_scaling_factor"]))
    if kind == "topk_softmax":
        return topk_softmax(logits, k)
    if kind == "sparsemixer":
        return sparsemixer(logits, float(params["jitter_eps"]))
    raise ValueError(f"unknown router function {kind!r}")


def same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., K) ids -> (...) bool: the same experts, in any order."""
    return (np.sort(a, axis=-1) == np.sort(b, axis=-1)).all(axis=-1)
