"""Fitting the synthetic routing generator (:mod:`traces.synth`) to a real trace: exact popularity
and transition counts, then ``beta``, ``sigma``, ``rho`` calibrated so that sampled traces match the
real one's cross-layer precision, median reuse distance and consecutive-token overlap, and a
popularity power that matches the mean Gini (the method is in :mod:`traces.synth`'s docstring).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import numpy as np

from traces.format import RoutingTrace, TraceMeta, expert_counts
from traces.synth import make_trace
from traces.synth_params import SCHEMA, VERSION, SynthParams, TaskModel, smoothed_probs, task_model
from traces.synth_sample import sample_chunk, sample_task

# ------------------------------------------------------------------------------------------------
# fitting
# ------------------------------------------------------------------------------------------------
#: calibrated parameters (beta, sigma, rho): start, finite-difference step, largest step, bounds
_X0 = np.array([3.0, 0.5, 0.15])
_FD = np.array([0.5, 0.2, 0.05])
_MAX_STEP = np.array([2.0, 0.5, 0.15])
_LO, _HI = np.array([0.0, 0.0, 0.0]), np.array([20.0, 4.0, 0.9])
_TARGETS = ("predict_precision", "reuse_median", "overlap")


def _smooth_median(d: np.ndarray) -> float:
    """Median of non-negative integers, interpolated inside the median's histogram bin (so that
    it moves continuously with the distribution; rounds to the plain median)."""
    if len(d) == 0:
        return float("nan")
    F = np.cumsum(np.bincount(d)) / len(d)
    k = int(np.searchsorted(F, 0.5))
    lo = float(F[k - 1]) if k > 0 else 0.0
    return k - 0.5 + (0.5 - lo) / max(float(F[k]) - lo, 1e-12)


def calibration_stats(trace: RoutingTrace) -> dict[str, Any]:
    """The statistics the calibration matches (definitions in :mod:`traces.stats`)."""
    from traces.stats import consecutive_overlap, cross_layer_stats, gini, popularity_counts, reuse_distances

    d = reuse_distances(trace)[0]
    ov = consecutive_overlap(trace)
    pc = popularity_counts(trace)
    return {
        "predict_precision": cross_layer_stats(trace)["predict_precision_mean"] if trace.num_layers > 1
        else float("nan"),
        "reuse_median": _smooth_median(d),
        "reuse_median_plain": float(np.median(d)) if len(d) else float("nan"),
        "overlap": float(np.nanmean(ov)) if np.isfinite(ov).any() else float("nan"),
        "gini": float(gini(pc.astype(np.float64)).mean()),
        "popularity_counts": pc,
    }


def _calib_lengths(lens: np.ndarray, calib_tokens: int) -> np.ndarray:
    """Request lengths for calibration runs: every k-th request by length when the real trace is
    larger than ``calib_tokens`` (keeps the length distribution), the lengths repeated when it
    is smaller."""
    s = np.sort(lens)
    tot = int(s.sum())
    if tot > calib_tokens:
        return s[:: int(np.ceil(tot / calib_tokens))]
    return np.tile(s, max(1, calib_tokens // max(tot, 1)))


def _calibrate(pc: np.ndarray, tc: np.ndarray, real: dict[str, Any], lens: np.ndarray, K: int,
               seed: int, meta: TraceMeta, max_evals: int, tol: float,
               full_lens: np.ndarray, bar: Any = None) -> dict[str, Any]:
    """Broyden iterations on (beta, sigma, rho), each evaluation with an IPF popularity
    correction, then the popularity skew: the IPF target is the real shares to a power ``lam``
    found by secant steps so that fresh samples with the real request lengths (``full_lens``; the
    request topics add chance skew of their own) have the real Gini. Returns the task's fields."""
    from traces.stats import gini

    L, E = pc.shape
    target = np.array([real[k] for k in _TARGETS], dtype=np.float64)
    active = np.isfinite(target) & (target > 0)
    real_share = smoothed_probs(pc, 0.5).astype(np.float32)
    corr = np.zeros((L, E))
    t = {"popularity_counts": pc, "transition_counts": tc, "pop_correction": corr}
    fake = SynthParams(model=meta.model, num_layers=L, num_experts=E, top_k=K,
                       layer_ids=list(meta.layer_ids), phase="prefill", tasks={}, source={}, raw={})
    log: list[dict[str, Any]] = []

    def model(x: np.ndarray, c: np.ndarray) -> TaskModel:
        return task_model("calib", {**t, "pop_correction": c, "beta": x[0], "sigma": x[1],
                                    "rho": x[2]}, L, E)

    def run(x: np.ndarray, update: bool, lam: float = 1.0) -> np.ndarray:
        nonlocal corr
        if bar is not None:
            bar.update(1)
        tm = model(x, corr)
        base = tm.bias()
        bias = base.copy()
        goal = real_share ** np.float32(lam)
        goal /= goal.sum(axis=1, keepdims=True)
        ex = sample_chunk(tm, bias, lens, K, np.random.default_rng(seed), target_share=goal)
        s = calibration_stats(make_trace(fake, ex, lens, np.full(len(lens), "calib", dtype=object),
                                          "prefill", "fitted"))
        y = np.array([s[k] for k in _TARGETS], dtype=np.float64)
        err = np.where(active, y / np.where(active, target, 1.0) - 1.0, 0.0)
        gini_err = s["gini"] / real["gini"] - 1.0 if real["gini"] > 0 else 0.0
        new_corr = corr + (bias - base).astype(np.float64)
        log.append({"x": x.copy(), "y": y, "corr": new_corr, "gini": s["gini"],
                    "reuse_median_plain": s["reuse_median_plain"],
                    "score": float(max(np.abs(err).max(), abs(gini_err)))})
        if update:  # warm start of the next evaluation's popularity fit
            corr = new_corr
        return y

    x = np.where(active, _X0, 0.0)
    if not active[0]:
        x[0] = 0.0
    y = run(x, True)
    J = np.eye(3)
    for i in np.flatnonzero(active):  # finite-difference Jacobian
        xi = x.copy()
        xi[i] += _FD[i]
        J[:, i] = (run(xi, False) - y) / _FD[i]
    while len(log) < max_evals and log[-1]["score"] > tol:
        a = np.flatnonzero(active)
        r = (target - y)[a]
        try:
            dx_a = np.linalg.solve(J[np.ix_(a, a)], r)
        except np.linalg.LinAlgError:
            dx_a = np.linalg.lstsq(J[np.ix_(a, a)], r, rcond=None)[0]
        dx = np.zeros(3)
        dx[a] = dx_a
        dx *= min(1.0, float(np.min(_MAX_STEP[a] / np.maximum(np.abs(dx_a), 1e-12))))
        x_new = np.clip(x + dx, _LO, _HI)
        y_new = run(x_new, True)
        dx, dy = x_new - x, y_new - y
        if float(dx @ dx) > 0:  # Broyden rank-one update
            J += np.outer(dy - J @ dx, dx) / float(dx @ dx)
        x, y = x_new, y_new
    best = min(log, key=lambda e: e["score"])
    x, corr = best["x"], best["corr"]

    def fresh_gini(lam: float) -> tuple[float, np.ndarray]:
        """Mean Gini of two fresh samples with the real lengths, after an IPF run to shares**lam."""
        run(x, True, lam)
        c = log.pop()["corr"]
        tm = model(x, c)
        g = [float(gini(expert_counts(sample_task(tm, full_lens, K, np.random.default_rng(seed + i)),
                                             E).astype(np.float64)).mean()) for i in (1, 2)]
        return float(np.mean(g)), c

    lams, ginis, corrs = [1.0], [], []
    g, c = fresh_gini(1.0)
    ginis.append(g)
    corrs.append(c)
    lams.append(0.8 if g > real["gini"] else 1.1)
    for _ in range(4):
        g, c = fresh_gini(lams[-1])
        ginis.append(g)
        corrs.append(c)
        if abs(g / real["gini"] - 1.0) < tol or real["gini"] <= 0:
            break
        slope = (ginis[-1] - ginis[-2]) / (lams[-1] - lams[-2]) if lams[-1] != lams[-2] else 0.0
        step = (real["gini"] - g) / slope if slope > 0 else -0.2
        lams.append(float(np.clip(lams[-1] + np.clip(step, -0.3, 0.3), 0.2, 1.5)))
    i = int(np.argmin(np.abs(np.asarray(ginis) / real["gini"] - 1.0)))
    best = {**best, "corr": corrs[i], "gini": ginis[i]}
    return {
        "beta": round(float(best["x"][0]), 5), "sigma": round(float(best["x"][1]), 5),
        "rho": round(float(best["x"][2]), 5),
        "pop_correction": np.round(best["corr"], 4).tolist(),
        "calibration": {
            "method": "Broyden on (beta, sigma, rho), each run with per-layer IPF of the popularity "
                      "correction; common random numbers (seed below); reuse_median interpolated "
                      "within its histogram bin",
            "calib_requests": int(len(lens)), "calib_tokens": int(lens.sum()), "seed": seed,
            "evaluations": len(log),
            "target": {**{k: round(float(real[k]), 5) for k in _TARGETS}, "gini": round(real["gini"], 5),
                       "reuse_median_plain": real["reuse_median_plain"]},
            "achieved": {**{k: round(float(v), 5) for k, v in zip(_TARGETS, best["y"])},
                         "gini": round(best["gini"], 5), "reuse_median_plain": best["reuse_median_plain"]},
            "gini_note": "achieved gini: mean of 2 fresh samples with the real request lengths",
            "pop_power": round(lams[i], 5),
        },
    }


def fit_params(trace: RoutingTrace, seed: int = 0, command: str = "", trace_path: str = "",
               calib_tokens: int = 24000, max_evals: int = 18, tol: float = 0.015,
               progress: bool = False) -> dict[str, Any]:
    """Fit the generator to ``trace`` (per task); returns the JSON-ready parameter dict.
    ``progress``: a tqdm bar on stderr counting the calibration's sampling runs (at most
    ``max_evals`` + 6 per task)."""
    import sys

    from traces.stats import transition_counts

    m = trace.meta
    tasks_col = trace.tokens["task"].to_numpy()
    req_tasks = np.asarray(trace.request_tasks(), dtype=object)
    out_tasks: dict[str, Any] = {}
    names = sorted(set(req_tasks.tolist()))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(max_evals + 6) * len(names), desc="trace fit", unit="run",
                   file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 5.0)
    for name in names:
        sub = trace.take(np.flatnonzero(tasks_col == name))
        real = calibration_stats(sub)
        pc = real["popularity_counts"]
        tc = np.stack([transition_counts(sub.experts, m.num_experts, l) for l in range(m.num_layers - 1)]) \
            if m.num_layers > 1 else np.zeros((0, m.num_experts, m.num_experts), dtype=np.int64)
        lens = np.diff(sub.request_bounds())
        cal = _calibrate(pc, tc, real, _calib_lengths(lens, calib_tokens), m.top_k, seed, m, max_evals, tol,
                         full_lens=lens, bar=bar)
        if bar is not None:  # this task's unused evaluations: the bar ends at the task's end
            bar.n = (names.index(name) + 1) * (max_evals + 6)
            bar.refresh()
        out_tasks[name] = {
            "share": float((req_tasks == name).mean()),
            "popularity_counts": pc.tolist(),
            "transition_counts": tc.tolist(),
            **cal,
            "tokens_per_request": {"num_requests": int(len(lens)), "num_tokens": int(lens.sum()),
                                   "median": float(np.median(lens)), "mean": float(lens.mean()),
                                   "max": int(lens.max())},
        }
    if bar is not None:
        bar.close()
    source = {"trace": m.source, "trace_file": _no_machine_path(trace_path), "model": m.model,
              "fitted_on": _dt.date.today().isoformat(),
              "command": " ".join(_no_machine_path(w) for w in command.split()), "seed": seed,
              "calib_tokens": calib_tokens, "max_evals": max_evals}
    return _wrap(m, out_tasks, source, phase=str(trace.tokens["phase"].iloc[0]))


def _no_machine_path(word: str) -> str:
    """An absolute path becomes its file name (parameter files must not name machine paths)."""
    return os.path.basename(word) if os.path.isabs(word) else word


def _wrap(m: TraceMeta, tasks: dict[str, Any], source: dict[str, Any], phase: str = "decode") -> dict:
    return {"schema": SCHEMA, "version": VERSION, "model": m.model, "num_layers": m.num_layers,
            "num_experts": m.num_experts, "top_k": m.top_k, "layer_ids": list(m.layer_ids),
            "phase": phase, "source": source, "tasks": tasks}
