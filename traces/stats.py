"""Statistics of a routing trace: popularity skew, reuse distance, cross-layer and temporal locality.

Definitions (T tokens, L layers, E experts, top-k K; S(t, l) = the K experts token t uses at layer l):

popularity
    ``count[l, e]`` = number of tokens whose S(t, l) holds e; ``share = count / (T*K)``. Per layer:
    Gini coefficient of the E shares (0 = uniform, 1 - 1/E = one expert takes all), entropy of the
    shares divided by log E (1 = uniform), and the share of the top 10% of experts (ceil(E/10)).
reuse distance (per layer, inside one request)
    For an access of expert e by token t at layer l whose previous access at layer l in the same
    request was by token t' < t: the number of DISTINCT experts used at layer l by tokens t'+1..t-1
    (0 when t' = t-1). This is the LRU stack distance at token granularity: a per-layer LRU cache of
    C experts (filled in whole tokens) hits the access iff distance <= C - K. The first access of e
    in a request is "cold" (no distance). Computed with one uint64 bit-set per (token, layer) and a
    sparse table of range ORs, so the cost is O(T L K) popcounts, not a loop over tokens.
    ``token_gap`` = t - t' is reported beside it.
cross-layer predictability (pairs l -> l+1; eMoE Fig. 3)
    ``P_l(e' | e)`` = share of layer-(l+1) experts of the tokens that used e at layer l.
    ``topk_mass``: weighted by how often e is used, the mass of the K most likely successors of e
    (1 = layer l+1 fully determined by one expert of layer l); ``marginal_topk_mass``: the same for
    the unconditional layer-(l+1) popularity (the no-information baseline).
    ``predict_precision``: predict S(t, l+1) as the K experts with the highest sum of P_l(. | e)
    over e in S(t, l); the share of predicted experts that are right (in-sample).
    ``marginal_precision``: the same predicting the K most popular experts of layer l+1.
    ``cond_entropy_ratio`` = H(E_{l+1} | one E_l) / H(E_{l+1}) (1 = no information).
temporal locality
    ``overlap[l]`` = mean of |S(t, l) & S(t-1, l)| / K over consecutive tokens of a request;
    ``random_baseline`` = K / E (what independent uniform routing gives).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from traces.format import RoutingTrace, expert_counts


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _request_index(trace: RoutingTrace) -> np.ndarray:
    """(T,) int64: index of each token's request."""
    b = trace.request_bounds()
    return np.repeat(np.arange(len(b) - 1), np.diff(b))


def expert_bitsets(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, L, K) expert ids -> (T, L, W) uint64 bit-sets, W = ceil(E / 64)."""
    T, L, K = experts.shape
    W = (num_experts + 63) // 64
    e = experts.astype(np.int64)
    out = np.zeros((T, L, W), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (e % 64).astype(np.uint64))  # (T, L, K)
    word = e // 64
    for w in range(W):  # experts of one token are distinct, so a sum of distinct bits is their OR
        out[:, :, w] = np.where(word == w, bits, np.uint64(0)).sum(axis=2, dtype=np.uint64)
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    """Population count summed over the last axis (the bit-set words)."""
    return np.bitwise_count(x).sum(axis=-1).astype(np.int64)


def popularity_counts(trace: RoutingTrace) -> np.ndarray:
    """(L, E) int64: number of tokens using expert e at layer l."""
    return expert_counts(trace.experts, trace.num_experts)


def gini(shares: np.ndarray) -> np.ndarray:
    """Gini coefficient along the last axis."""
    s = np.sort(np.asarray(shares, dtype=np.float64), axis=-1)
    n = s.shape[-1]
    tot = s.sum(axis=-1)
    i = np.arange(1, n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = (2.0 * (s * i).sum(axis=-1) / (n * tot)) - (n + 1.0) / n
    return np.where(tot > 0, g, 0.0)


def norm_entropy(shares: np.ndarray) -> np.ndarray:
    p = np.asarray(shares, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / math.log(p.shape[-1])


def top_share(shares: np.ndarray, frac: float = 0.1) -> np.ndarray:
    p = np.asarray(shares, dtype=np.float64)
    n = max(1, math.ceil(frac * p.shape[-1]))
    s = -np.sort(-p, axis=-1)
    return s[..., :n].sum(axis=-1) / np.maximum(p.sum(axis=-1), 1e-300)


def popularity_stats(trace: RoutingTrace) -> dict[str, Any]:
    c = popularity_counts(trace).astype(np.float64)  # (L, E)
    g, h, t10 = gini(c), norm_entropy(c), top_share(c, 0.1)
    return {"gini": g.round(5).tolist(), "entropy_norm": h.round(5).tolist(),
            "top10_share": t10.round(5).tolist(), "gini_mean": float(g.mean()),
            "entropy_norm_mean": float(h.mean()), "top10_share_mean": float(t10.mean())}


# ------------------------------------------------------------------------------------------------
# reuse distance
# ------------------------------------------------------------------------------------------------
def reuse_distances(trace: RoutingTrace, per_layer: bool = False) -> tuple[Any, Any, int]:
    """(distances, token_gaps, cold): int64 arrays over all non-cold accesses; cold = first accesses.

    See the module docstring for the definition. ``per_layer``: lists of L arrays instead.
    """
    ex = trace.experts
    T, L, K = ex.shape
    E = trace.num_experts
    ridx = _request_index(trace)  # (T,)
    masks = expert_bitsets(ex, E)  # (T, L, W)
    dists, gaps = [], []
    cold = 0
    t_of = np.repeat(np.arange(T, dtype=np.int64), K)  # (T*K,) token of each flattened access
    for l in range(L):
        e = ex[:, l, :].astype(np.int64).reshape(-1)  # (T*K,)
        order = np.argsort(e * T + t_of, kind="stable")
        es, ts = e[order], t_of[order]
        has_prev = np.zeros(len(es), dtype=bool)
        has_prev[1:] = (es[1:] == es[:-1]) & (ridx[ts[1:]] == ridx[ts[:-1]])
        cold += int((~has_prev).sum())
        t_now = ts[has_prev]
        t_prev = ts[np.flatnonzero(has_prev) - 1]
        gap = t_now - t_prev
        d = np.zeros(len(gap), dtype=np.int64)
        far = gap > 1
        if far.any():
            a, b = t_prev[far] + 1, t_now[far] - 1  # inclusive token range strictly between
            span = b - a + 1
            lev = np.floor(np.log2(span)).astype(np.int64)
            # sparse table: tab[j][i] = OR of masks[i : i + 2**j] at this layer
            m = masks[:, l, :]  # (T, W)
            tab = [m]
            for j in range(1, int(lev.max()) + 1):
                prev = tab[-1]
                h = 1 << (j - 1)
                nxt = prev.copy()
                nxt[: T - h] |= prev[h:]
                tab.append(nxt)
            tab_arr = np.stack(tab)  # (J, T, W)
            orv = tab_arr[lev, a] | tab_arr[lev, b - (1 << lev) + 1]  # (n, W)
            d[far] = _popcount(orv)
        dists.append(d)
        gaps.append(gap)
    if per_layer:
        return dists, gaps, cold
    return np.concatenate(dists), np.concatenate(gaps), cold


def reuse_stats(trace: RoutingTrace) -> dict[str, Any]:
    d, gap, cold = reuse_distances(trace)
    E = trace.num_experts
    hist = np.bincount(d, minlength=E)[:E] if len(d) else np.zeros(E, dtype=np.int64)
    def q(x, p):
        return (float(np.percentile(x, p)) if len(x) else float("nan"))
    return {
        "definition": "distinct experts used at the same layer between two uses of an expert in one "
                      "request (0 = used again by the next token); cold = first use in a request",
        "num_accesses": int(len(d) + cold), "cold": int(cold),
        "histogram": hist.tolist(),
        "median": q(d, 50), "mean": float(d.mean()) if len(d) else float("nan"),
        "p90": q(d, 90), "token_gap_median": q(gap, 50), "token_gap_p90": q(gap, 90),
    }


# ------------------------------------------------------------------------------------------------
# cross-layer predictability
# ------------------------------------------------------------------------------------------------
def transition_counts(experts: np.ndarray, num_experts: int, l: int) -> np.ndarray:
    """(E, E) int64: C[e, e'] = tokens using e at layer l and e' at layer l+1."""
    E = num_experts
    a = experts[:, l, :].astype(np.int64)  # (T, K)
    b = experts[:, l + 1, :].astype(np.int64)  # (T, K)
    pair = (a[:, :, None] * E + b[:, None, :]).reshape(-1)
    return np.bincount(pair, minlength=E * E).reshape(E, E)


def _row_normalise(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return c / np.maximum(c.sum(axis=-1, keepdims=True), 1e-300)


def _topk_overlap(scores: np.ndarray, actual: np.ndarray, k: int) -> np.ndarray:
    """(T,) share of the top-k of ``scores`` (T, E) found in ``actual`` (T, K)."""
    pred = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (T, k)
    hit = (pred[:, :, None] == actual[:, None, :]).any(axis=2)
    return hit.mean(axis=1)


def cross_layer_stats(trace: RoutingTrace) -> dict[str, Any]:
    ex = trace.experts
    T, L, K = ex.shape
    E = trace.num_experts
    counts = popularity_counts(trace).astype(np.float64)  # (L, E)
    prec, mprec, mass, mmass, hratio = [], [], [], [], []
    for l in range(L - 1):
        C = transition_counts(ex, E, l)
        P = _row_normalise(C)  # (E, E)
        w = counts[l] / counts[l].sum()
        mass.append(float((w * -np.sort(-P, axis=1)[:, :K].sum(axis=1)).sum()))
        marg = counts[l + 1] / counts[l + 1].sum()
        mmass.append(float(-np.sort(-marg)[:K].sum()))
        with np.errstate(divide="ignore", invalid="ignore"):
            hc = -(w[:, None] * np.where(P > 0, P * np.log(P), 0.0)).sum()
            hm = -np.where(marg > 0, marg * np.log(marg), 0.0).sum()
        hratio.append(float(hc / hm) if hm > 0 else 1.0)
        scores = P.astype(np.float32)[ex[:, l, :].astype(np.int64)].sum(axis=1)  # (T, E)
        actual = ex[:, l + 1, :].astype(np.int64)
        prec.append(float(_topk_overlap(scores, actual, K).mean()))
        top_marg = np.argsort(-marg, kind="stable")[:K]
        mprec.append(float(np.isin(actual, top_marg).sum(axis=1).mean() / K))
    def f(v):
        return (float(np.mean(v)) if v else float("nan"))
    return {"predict_precision": np.round(prec, 5).tolist(), "predict_precision_mean": f(prec),
            "marginal_precision": np.round(mprec, 5).tolist(), "marginal_precision_mean": f(mprec),
            "topk_mass_mean": f(mass), "marginal_topk_mass_mean": f(mmass),
            "cond_entropy_ratio_mean": f(hratio)}


# ------------------------------------------------------------------------------------------------
# temporal locality
# ------------------------------------------------------------------------------------------------
def consecutive_overlap(trace: RoutingTrace) -> np.ndarray:
    """(L,) mean |S(t) & S(t-1)| / K over consecutive tokens of each request (nan if none)."""
    T, L, K = trace.experts.shape
    ridx = _request_index(trace)
    same = ridx[1:] == ridx[:-1]  # (T-1,)
    if not same.any():
        return np.full(L, np.nan)
    m = expert_bitsets(trace.experts, trace.num_experts)  # (T, L, W)
    inter = np.bitwise_count(m[1:][same] & m[:-1][same]).sum(axis=-1)  # (P, L)
    return inter.mean(axis=0) / K


def temporal_stats(trace: RoutingTrace) -> dict[str, Any]:
    ov = consecutive_overlap(trace)
    return {"overlap": np.round(ov, 5).tolist(), "overlap_mean": float(np.nanmean(ov)) if
            np.isfinite(ov).any() else float("nan"), "random_baseline": trace.top_k / trace.num_experts}


# ------------------------------------------------------------------------------------------------
# whole trace
# ------------------------------------------------------------------------------------------------
def _js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = _row_normalise(p)
    q = _row_normalise(q)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda x: np.where(x > 0, x * np.log(x / m), 0.0).sum(axis=-1)  # noqa: E731
        return 0.5 * kl(p) + 0.5 * kl(q)


#: the parts of the statistics of one trace, in order (``on_step`` is called after each)
CORE_PARTS = ("popularity", "reuse_distance", "cross_layer", "temporal")


def _core(trace: RoutingTrace, on_step: Any = None) -> dict[str, Any]:
    b = trace.request_bounds()
    lens = np.diff(b)
    out: dict[str, Any] = {
        "num_requests": int(len(lens)), "num_tokens": trace.num_tokens,
        "tokens_per_request": {"min": int(lens.min()), "median": float(np.median(lens)),
                               "mean": float(lens.mean()), "max": int(lens.max())},
    }
    for name, part in zip(CORE_PARTS, (popularity_stats, reuse_stats, cross_layer_stats,
                                       temporal_stats)):
        out[name] = part(trace)
        if on_step is not None:
            on_step(name)
    return out


def trace_stats(trace: RoutingTrace, per_task: bool = True, on_step: Any = None) -> dict[str, Any]:
    """All statistics of ``trace`` as one JSON-ready dict (see the module docstring);
    ``on_step(label)`` after each of the whole trace's :data:`CORE_PARTS` and after each task's
    statistics when there are several tasks (progress)."""
    m = trace.meta
    out: dict[str, Any] = {
        "model": m.model, "num_layers": m.num_layers, "num_experts": m.num_experts, "top_k": m.top_k,
        "layer_ids": list(m.layer_ids), "source": m.source,
        "phases": {str(k): int(v) for k, v in trace.tokens["phase"].value_counts().items()},
        "has_weights": trace.weights is not None,
    }
    out.update(_core(trace, on_step))
    tasks = pd.Series(trace.request_tasks())
    out["tasks"] = {str(k): int(v) for k, v in tasks.value_counts().sort_index().items()}
    if per_task:
        overall = popularity_counts(trace)
        per: dict[str, Any] = {}
        task_col = trace.tokens["task"].to_numpy()
        for t in sorted(out["tasks"]):
            one = len(out["tasks"]) == 1
            sub = trace if one else trace.take(np.flatnonzero(task_col == t))
            c = out if one else _core(sub)
            per[t] = {
                "num_requests": c["num_requests"], "num_tokens": c["num_tokens"],
                "gini_mean": c["popularity"]["gini_mean"],
                "top10_share_mean": c["popularity"]["top10_share_mean"],
                "reuse_distance_median": c["reuse_distance"]["median"],
                "predict_precision_mean": c["cross_layer"]["predict_precision_mean"],
                "overlap_mean": c["temporal"]["overlap_mean"],
                "popularity_js_vs_all_mean": float(_js_divergence(popularity_counts(sub), overall).mean()),
            }
            if on_step is not None and not one:
                on_step(f"task {t}")
        out["per_task"] = per
    return out


def workload_stats(df: pd.DataFrame) -> dict[str, Any]:
    a = df["arrival_s"].to_numpy()
    dur = float(a[-1] - a[0]) if len(a) > 1 else 0.0
    def pct(col):
        return ({f"p{p}": float(np.percentile(df[col], p)) for p in (10, 50, 90, 99)}
               | {"mean": float(df[col].mean()), "max": int(df[col].max())})
    return {"kind": "workload", "num_requests": int(len(df)), "duration_s": dur,
            "rate_per_s": float(len(df) / dur) if dur > 0 else float("nan"),
            "prompt_tokens": pct("prompt_tokens"), "output_tokens": pct("output_tokens"),
            "tasks": {str(k): int(v) for k, v in df["task"].value_counts().sort_index().items()}}


def format_stats(s: dict[str, Any]) -> str:
    """A short human-readable summary."""
    if s.get("kind") == "workload":
        return "\n".join([
            f"workload: {s['num_requests']} requests over {s['duration_s']:.1f} s "
            f"({s['rate_per_s']:.2f}/s), tasks {s['tasks']}",
            f"prompt tokens p50 {s['prompt_tokens']['p50']:.0f}, p90 {s['prompt_tokens']['p90']:.0f}; "
            f"output tokens p50 {s['output_tokens']['p50']:.0f}, p90 {s['output_tokens']['p90']:.0f}",
        ])
    pop, rd, cl, tm = s["popularity"], s["reuse_distance"], s["cross_layer"], s["temporal"]
    lines = [
        f"{s['model']}: {s['num_requests']} requests, {s['num_tokens']} tokens, {s['num_layers']} layers, "
        f"{s['num_experts']} experts, top-{s['top_k']}; tasks {s['tasks']}; phases {s['phases']}",
        f"popularity: gini {pop['gini_mean']:.3f}, entropy/log E {pop['entropy_norm_mean']:.3f}, "
        f"top-10% share {pop['top10_share_mean']:.3f} (means over layers)",
        f"reuse distance: median {rd['median']:.1f}, mean {rd['mean']:.2f}, p90 {rd['p90']:.1f} "
        f"distinct experts; {rd['cold']} cold of {rd['num_accesses']} accesses",
        f"cross-layer: predict precision {cl['predict_precision_mean']:.3f} (marginal "
        f"{cl['marginal_precision_mean']:.3f}), top-k mass {cl['topk_mass_mean']:.3f} (marginal "
        f"{cl['marginal_topk_mass_mean']:.3f})",
        f"temporal: consecutive-token overlap {tm['overlap_mean']:.3f} (uniform {tm['random_baseline']:.3f})",
    ]
    for t, v in s.get("per_task", {}).items():
        lines.append(f"  task {t}: {v['num_requests']} requests, {v['num_tokens']} tokens, gini "
                     f"{v['gini_mean']:.3f}, reuse median {v['reuse_distance_median']:.1f}, precision "
                     f"{v['predict_precision_mean']:.3f}, overlap {v['overlap_mean']:.3f}")
    return "\n".join(lines)
