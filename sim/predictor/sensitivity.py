"""Task sensitivity: which layers of which tasks tolerate inexact routing (numpy only).

eMoE's definition (Tairin et al., arXiv 2503.06823): a task is *insensitive* at a layer when its
output similarity to the all-experts model stays above 85% under random routing at that layer;
that needs model runs, which a routing trace does not hold. The estimate here is computed from
traces only: the Jensen-Shannon divergence (base 2, in [0, 1]) between a task's per-layer expert
distribution and that of all other tasks. A layer whose distribution is barely task-specific
(divergence below ``threshold``) is estimated insensitive: the task uses the same experts as
everyone else there, so a prediction adds little and inexact routing changes little. With a single
task there is nothing to compare against: every layer is reported sensitive (the conservative
choice: keep predicting) and ``js_divergence`` is null.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from traces.format import RoutingTrace

EMOE_DEFINITION = ("insensitive at a layer: output similarity to the all-experts model stays "
                   "above 85% under random routing at that layer (needs model runs; not "
                   "measurable from a routing trace)")
ESTIMATE = ("js_divergence: Jensen-Shannon divergence (base 2) between the task's per-layer "
            "expert activation distribution and the other tasks' pooled distribution; "
            "sensitive = js_divergence >= threshold")


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise JS divergence (base 2) of distributions along the last axis."""
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    q = q / np.maximum(q.sum(-1, keepdims=True), 1e-12)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1)), 0.0)
        return t.sum(-1)

    return np.clip((kl(p, m) + kl(q, m)) / 2, 0.0, 1.0)


def task_sensitivity(trace: RoutingTrace, threshold: float) -> dict[str, Any]:
    T, L, K = trace.experts.shape
    E = trace.num_experts
    tasks = trace.tokens["task"].astype(str).to_numpy()
    names = sorted(set(tasks.tolist()))
    counts = np.zeros((len(names), L, E), dtype=np.float64)  # (tasks, L, E)
    code = np.searchsorted(np.array(names), tasks)
    lidx = np.broadcast_to(np.arange(L)[None, :, None], (T, L, K))
    np.add.at(counts, (np.broadcast_to(code[:, None, None], (T, L, K)), lidx,
                       trace.experts.astype(np.int64)), 1.0)
    out: dict[str, Any] = {"definition_emoe": EMOE_DEFINITION, "estimate": ESTIMATE,
                           "threshold": float(threshold), "layer_ids": list(trace.meta.layer_ids),
                           "tasks": {}}
    total = counts.sum(0)
    for i, name in enumerate(names):
        rest = total - counts[i]
        entry: dict[str, Any] = {"tokens": int((code == i).sum())}
        if rest.sum() == 0:
            entry["js_divergence"] = None
            entry["sensitive"] = [True] * L
            entry["note"] = "only task in the trace: nothing to compare; all layers sensitive"
        else:
            js = js_divergence(counts[i], rest)  # (L,)
            entry["js_divergence"] = js.round(6).tolist()
            entry["sensitive"] = (js >= threshold).tolist()
        out["tasks"][name] = entry
    return out
