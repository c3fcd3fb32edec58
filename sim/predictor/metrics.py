"""Set-prediction metrics and the baselines the predictor is compared against (numpy only).

Shape legend: N predicted items (tokens or prompts), L MoE layers, E experts, K true set size,
M predicted set size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.predictor.data import multi_hot, top_m


def set_metrics(pred: np.ndarray, true: np.ndarray, num_experts: int,
                weights: np.ndarray | None = None) -> dict[str, Any]:
    """Multi-label metrics of predicted sets ``pred`` (N, L, M) against true sets ``true``
    (N, L, K), each row distinct expert ids (``pred`` best first).

    - ``precision``/``recall``/``f1``: positive-class, micro over (item, layer): overlap / M,
      overlap / K, and their harmonic mean (with M = K all three equal overlap / K).
    - ``f1_macro_binary``: scikit-learn's ``f1_score(average='macro')`` on the flattened 0/1 labels
      over all experts (mean of the positive- and negative-class F1) -- the figure MoE-Beyond
      reports (0.816), which counts the easy negatives too.
    - ``top1_accuracy``: share of (item, layer) whose best-scored expert is in the true set.
    - ``exact_set_accuracy``: share of (item, layer) predicted exactly.
    - ``coverage`` (only with ``weights`` (N, L, E), e.g. a prompt's activation shares): mean
      share of the weight that falls in the predicted set.
    - per-layer lists of precision, recall, f1.
    """
    N, L, M = pred.shape
    K = true.shape[2]
    tp_mat = multi_hot(true, num_experts)  # (N, L, E)
    overlap = np.take_along_axis(tp_mat, pred.astype(np.int64), axis=2).sum(-1)  # (N, L)
    tp = overlap.sum(0).astype(np.float64)  # (L,)
    fp = N * M - tp
    fn = N * K - tp
    tn = N * num_experts - tp - fp - fn
    prec_l = tp / np.maximum(tp + fp, 1)
    rec_l = tp / np.maximum(tp + fn, 1)
    f1_l = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    TP, FP, FN, TN = tp.sum(), fp.sum(), fn.sum(), tn.sum()
    f1_pos = 2 * TP / max(2 * TP + FP + FN, 1)
    f1_neg = 2 * TN / max(2 * TN + FN + FP, 1)
    top1 = np.take_along_axis(tp_mat, pred[:, :, :1].astype(np.int64), axis=2)[..., 0]
    out: dict[str, Any] = {
        "n": int(N),
        "precision": float(TP / max(TP + FP, 1)),
        "recall": float(TP / max(TP + FN, 1)),
        "f1": float(f1_pos),
        "f1_macro_binary": float((f1_pos + f1_neg) / 2),
        "top1_accuracy": float(top1.mean()) if N else 0.0,
        "exact_set_accuracy": float((overlap == K).mean()) if N and M == K else 0.0,
        "per_layer": {"precision": prec_l.round(5).tolist(), "recall": rec_l.round(5).tolist(),
                      "f1": f1_l.round(5).tolist()},
    }
    if weights is not None:
        cov = np.take_along_axis(weights, pred.astype(np.int64), axis=2).sum(-1)  # (N, L)
        out["coverage"] = float(cov.mean()) if N else 0.0
    return out


# ------------------------------------------------------------------------------------------------
# baselines
# ------------------------------------------------------------------------------------------------
def popularity(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L, E) activation counts per layer from training tokens (T, L, K)."""
    return multi_hot(experts, num_experts).sum(0).astype(np.float64)


def transition_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L, E, E) first-order cross-layer counts: [l, a, b] = tokens with a at l-1 and b at l
    (row 0 unused)."""
    mh = multi_hot(experts, num_experts).astype(np.float32)  # (T, L, E)
    L = experts.shape[1]
    out = np.zeros((L, num_experts, num_experts), dtype=np.float64)
    for l in range(1, L):
        out[l] = mh[:, l - 1].T @ mh[:, l]
    return out


def predict_popular(pop: np.ndarray, n: int, m: int) -> np.ndarray:
    """Most popular experts per layer, the same for every item: (n, L, m)."""
    return np.broadcast_to(top_m(pop, m)[None], (n, *pop.shape[:1], m)).copy()


def predict_transition(trans: np.ndarray, pop: np.ndarray, prev_scores: np.ndarray, m: int
                       ) -> np.ndarray:
    """First-order cross-layer model: layer l scored by the item's *observed* layer l-1
    (``prev_scores`` (N, L, E): multi-hot or frequencies of the same item), ties and layer 0 by
    popularity. (N, L, m)."""
    N, L, E = prev_scores.shape
    sc = np.zeros((N, L, E), dtype=np.float64)
    for l in range(1, L):
        sc[:, l] = prev_scores[:, l - 1] @ trans[l]
    p = pop / np.maximum(pop.sum(-1, keepdims=True), 1)
    sc += 1e-6 * p[None]
    return top_m(sc, m)


def predict_previous_prompt(prompt_freq: np.ndarray, pop: np.ndarray, m: int) -> np.ndarray:
    """Copy the previous prompt's per-layer set (its m most used experts): (R, L, m) for the R
    prompts of a stream in order, ``prompt_freq`` (R, L, E); the first prompt gets popularity."""
    R, L, E = prompt_freq.shape
    sc = np.empty_like(prompt_freq, dtype=np.float64)
    p = pop / np.maximum(pop.sum(-1, keepdims=True), 1)
    if R:
        sc[0] = p
        sc[1:] = prompt_freq[:-1] + 1e-6 * p[None]
    return top_m(sc, m)


def predict_token_lookup(train_codes: np.ndarray, train_experts: np.ndarray, codes: np.ndarray,
                         pop: np.ndarray, num_codes: int, m: int) -> np.ndarray:
    """Per-piece lookup table (not required, a context-free reference): each token gets the
    experts its piece used most often in training; unseen pieces get popularity. (N, L, m)."""
    L = train_experts.shape[1]
    E = pop.shape[1]
    table = np.zeros((num_codes, L, E), dtype=np.float32)
    np.add.at(table, train_codes, multi_hot(train_experts, E))
    p = (pop / np.maximum(pop.sum(-1, keepdims=True), 1)).astype(np.float32)
    return top_m(table[codes] + 1e-3 * p[None], m)
