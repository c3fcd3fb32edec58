"""Synthetic routing traces: a generator fitted to a real trace, plus uniform and Zipf baselines.

The fitted model (per task; ``L`` layers, ``E`` experts, top-``K``) has three parts:

popularity     ``pop[l, e]``: how often layer l uses expert e (layer 0's sampling distribution)
transitions    ``P_l(e' | e)``: share of layer-(l+1) experts among tokens that used e at layer l
temporal reuse ``rho[l]``: weight of the previous token's experts at layer l

Token t's experts at layer l are K distinct experts drawn without replacement (Plackett-Luce,
i.e. successive draws proportional to the weight among experts not yet drawn) from::

    w = (1 - rho[l]) * q + rho[l] * u,    q = pop[0]                         (l = 0)
                                          q = mean_k P_{l-1}(. | e_k(t, l-1)) (l > 0)
                                          u = uniform over the K experts of token t-1 at layer l
                                              (u = q for the first token of a request)

so each cell (t, l) depends on (t, l-1) and (t-1, l). Cells on one anti-diagonal t + l = d are
independent given earlier diagonals, so :func:`sample_trace` runs one vectorised step per
diagonal (about ``max tokens per request + L`` steps), over all requests and layers at once.

``rho`` is not a raw statistic: :func:`fit_params` calibrates it per layer (two sampling runs and
a linear solve, then one correction) so that the sampled consecutive-token overlap matches the
real trace's. Popularity and transition counts are stored as integer counts (exact, from the named
source); add-``smoothing`` is applied when a parameter file is loaded.

A parameter file is JSON: ``schema`` = "moesim-synth-params", ``version``, model shape, ``source``
(what it was fitted from, when, with which command), ``tasks`` -> {``share``, ``popularity_counts``
(L x E), ``transition_counts`` ((L-1) x E x E), ``rho`` (L), ``tokens_per_request`` summary}.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import MoesimError
from traces.format import RoutingTrace, TraceMeta, make_tokens

SCHEMA = "moesim-synth-params"
VERSION = 1
SHIPPED = {"deepseek-v2-lite": "deepseek-v2-lite.json", "mixtral-8x7b": "mixtral-8x7b.json"}


@dataclass
class TaskModel:
    """Sampling arrays of one task (probabilities, smoothed)."""

    name: str
    share: float
    pop: np.ndarray  # (L, E) float64, rows sum to 1
    trans: np.ndarray  # (L-1, E, E) float64, rows sum to 1
    knobs: np.ndarray  # (L, 3) float64: beta (cross-layer sharpness), rho (previous token), eta (history)


@dataclass
class SynthParams:
    model: str
    num_layers: int
    num_experts: int
    top_k: int
    layer_ids: list[int]
    phase: str
    tasks: dict[str, TaskModel]
    source: dict[str, Any]
    raw: dict[str, Any]


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _err(where: str, msg: str) -> MoesimError:
    return MoesimError(f"{where}: {msg}")


def params_from_dict(d: dict[str, Any], where: str = "<params>", smoothing: float = 0.5) -> SynthParams:
    """Check a parameter dict and turn its counts into sampling probabilities."""
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise _err(where, f"not a synth parameter file (expected \"schema\": \"{SCHEMA}\")")
    if d.get("version") != VERSION:
        raise _err(where, f"version {d.get('version')!r}, this moesim reads version {VERSION}")
    try:
        L, E, K = int(d["num_layers"]), int(d["num_experts"]), int(d["top_k"])
        tasks_raw = d["tasks"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(where, f"missing or bad field {exc}") from None
    if not (L >= 1 and E >= 2 and 1 <= K <= E) or not tasks_raw:
        raise _err(where, f"num_layers={L}, num_experts={E}, top_k={K}, {len(tasks_raw or {})} tasks: "
                          f"expected L >= 1, E >= 2, 1 <= K <= E and at least one task")
    tasks: dict[str, TaskModel] = {}
    for name, t in tasks_raw.items():
        try:
            pc = np.asarray(t["popularity_counts"], dtype=np.float64)
            tc = np.asarray(t["transition_counts"], dtype=np.float64) if L > 1 else np.zeros((0, E, E))
            knobs = np.stack([np.asarray(t[k], dtype=np.float64) for k in ("beta", "rho", "eta")], axis=1)
            share = float(t.get("share", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise _err(where, f"task {name!r}: missing or bad field {exc}") from None
        if pc.shape != (L, E) or tc.shape != (max(L - 1, 0), E, E) or knobs.shape != (L, 3):
            raise _err(where, f"task {name!r}: shapes popularity {pc.shape}, transitions {tc.shape}, "
                              f"beta/rho/eta {knobs.shape[:1]}; expected ({L}, {E}), ({L - 1}, {E}, {E}), "
                              f"({L},)")
        mix = knobs[:, 1] + knobs[:, 2]
        if not (np.isfinite(pc).all() and np.isfinite(tc).all() and np.isfinite(knobs).all()) or \
                (pc < 0).any() or (tc < 0).any() or (knobs < 0).any() or (mix >= 1).any():
            raise _err(where, f"task {name!r}: counts must be finite and >= 0, beta/rho/eta >= 0 and "
                              f"rho + eta < 1")
        pop = pc + smoothing
        pop /= pop.sum(axis=1, keepdims=True)
        tr = tc + smoothing
        tr /= tr.sum(axis=2, keepdims=True)
        tasks[str(name)] = TaskModel(str(name), share, pop, tr, knobs)
    tot = sum(t.share for t in tasks.values())
    for t in tasks.values():
        t.share = t.share / tot if tot > 0 else 1.0 / len(tasks)
    return SynthParams(model=str(d.get("model", "unknown")), num_layers=L, num_experts=E, top_k=K,
                       layer_ids=list(d.get("layer_ids") or range(L)), phase=str(d.get("phase", "decode")),
                       tasks=tasks, source=dict(d.get("source", {})), raw=d)


def fitted_params(name: str) -> SynthParams:
    """The shipped parameters ``name`` ("deepseek-v2-lite" or "mixtral-8x7b")."""
    if name not in SHIPPED:
        raise MoesimError(f"no shipped synth parameters {name!r}; expected one of {list(SHIPPED)} or a "
                          f"JSON file from 'moesim trace fit'")
    ref = resources.files("traces.params").joinpath(SHIPPED[name])
    return params_from_dict(json.loads(ref.read_text()), where=f"traces/params/{SHIPPED[name]}")


def load_params(name_or_path: str | os.PathLike) -> SynthParams:
    """A shipped name or a parameter JSON file."""
    s = str(name_or_path)
    if s in SHIPPED:
        return fitted_params(s)
    p = Path(s)
    if not p.exists():
        raise MoesimError(f"{p}: no such parameter file (shipped names: {list(SHIPPED)})")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MoesimError(f"{p}: not valid JSON ({exc})") from None
    return params_from_dict(d, where=str(p))


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
def _pl_topk(w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, E) weights -> (n, k) distinct indices, Plackett-Luce order (exponential race)."""
    keys = rng.standard_exponential(w.shape) / w  # smallest k keys win
    idx = np.argpartition(keys, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def _sample_task(tm: TaskModel, lens: np.ndarray, K: int, rng: np.random.Generator,
                 knobs: np.ndarray | None = None) -> np.ndarray:
    """(sum(lens), L, K) int16 experts for requests of the given lengths (tokens contiguous).

    ``knobs`` (L, 3) = (beta, rho, eta) per layer overrides the task's fitted values.
    """
    L, E = tm.pop.shape
    kn = tm.knobs if knobs is None else knobs
    beta, rho, eta = kn[:, 0], kn[:, 1], kn[:, 2]
    log_trans = np.log(tm.trans)  # (L-1, E, E)
    lens = np.asarray(lens, dtype=np.int64)
    T = int(lens.sum())
    out = np.zeros((T, L, K), dtype=np.int16)  # (T, L, K)
    starts = np.cumsum(lens) - lens
    by_len = np.argsort(-lens, kind="stable")
    s_starts = starts[by_len]  # request starts, longest request first
    Tmax = int(lens.max())
    # active[t] = number of requests longer than t (a prefix of by_len)
    active = np.searchsorted(-lens[by_len], -np.arange(Tmax + 1), side="left")
    hist = np.zeros((len(lens), L, E))  # (R, L, E) experts used so far by each request (sorted order)
    ls = np.arange(L)
    for d in range(Tmax + L - 1):
        lo, hi = max(0, d - Tmax + 1), min(L - 1, d)
        lay = ls[lo:hi + 1]
        t = d - lay
        cnt = active[t]
        n = int(cnt.sum())
        if n == 0:
            continue
        l_cell = np.repeat(lay, cnt)  # (n,)
        t_cell = np.repeat(t, cnt)
        req = np.arange(n) - np.repeat(np.cumsum(cnt) - cnt, cnt)  # request (sorted order)
        g = s_starts[req] + t_cell  # global token index of each cell
        q = np.empty((n, E))
        first = l_cell == 0
        q[first] = tm.pop[0]
        rest = np.flatnonzero(~first)
        if len(rest):
            lr = l_cell[rest]
            prev_e = out[g[rest], lr - 1].astype(np.int64)  # (m, K)
            z = log_trans[(lr - 1)[:, None], prev_e].mean(axis=1) * beta[lr][:, None]  # (m, E)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            q[rest] = z / z.sum(axis=1, keepdims=True)
        r, h_w = rho[l_cell], eta[l_cell]
        has_prev = t_cell > 0
        r = np.where(has_prev, r, 0.0)
        h_w = np.where(has_prev, h_w, 0.0)
        w = q * (1.0 - r - h_w)[:, None]
        hp = np.flatnonzero(has_prev)
        if len(hp):
            pe = out[g[hp] - 1, l_cell[hp]].astype(np.int64)  # (h, K); distinct per row
            w[hp[:, None], pe] += (r[hp] / K)[:, None]
            hc = hist[req[hp], l_cell[hp]]  # (h, E)
            w[hp] += hc * (h_w[hp] / hc.sum(axis=1))[:, None]
        chosen = _pl_topk(w, K, rng)  # (n, K)
        out[g, l_cell] = chosen
        hist[req[:, None], l_cell[:, None], chosen] += 1.0
    return out


def sample_trace(params: SynthParams, num_requests: int, tokens_per_request: Any,
                 rng: np.random.Generator, task: str | None = None, phase: str | None = None) -> RoutingTrace:
    """Sample ``num_requests`` requests from the fitted model.

    ``tokens_per_request``: an int or (num_requests,) array of lengths. ``task``: one fitted task
    for every request, or None to draw each request's task by the fitted shares. Same rng state,
    same trace.
    """
    lens = np.broadcast_to(np.asarray(tokens_per_request, dtype=np.int64), (num_requests,)).copy()
    if num_requests < 1 or (lens < 1).any():
        raise MoesimError(f"need >= 1 request and >= 1 token per request, got {num_requests} requests, "
                          f"lengths min {int(lens.min()) if len(lens) else 0}")
    names = list(params.tasks)
    if task is not None:
        if task not in params.tasks:
            raise MoesimError(f"task {task!r} is not in the fitted parameters; expected one of {names}")
        req_task = np.full(num_requests, task, dtype=object)
    else:
        share = np.asarray([params.tasks[n].share for n in names])
        req_task = np.asarray(names, dtype=object)[rng.choice(len(names), size=num_requests, p=share)]
    K, L = params.top_k, params.num_layers
    experts = np.zeros((int(lens.sum()), L, K), dtype=np.int16)  # (T, L, K)
    starts = np.cumsum(lens) - lens
    for n in names:
        sel = np.flatnonzero(req_task == n)
        if len(sel) == 0:
            continue
        block = _sample_task(params.tasks[n], lens[sel], K, rng)
        rows = np.concatenate([np.arange(starts[i], starts[i] + lens[i]) for i in sel])
        experts[rows] = block
    return _make_trace(params, experts, lens, req_task, phase or params.phase, "fitted")


def _make_trace(params: SynthParams, experts: np.ndarray, lens: np.ndarray, req_task: np.ndarray,
                phase: str, kind: str, extra: dict | None = None) -> RoutingTrace:
    n = len(lens)
    width = len(str(n - 1))
    rid = np.repeat(np.asarray([f"synth-{i:0{width}d}" for i in range(n)], dtype=object), lens)
    pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    tokens = make_tokens(request_id=rid, position=pos, phase=phase, task=np.repeat(req_task, lens))
    src = params.source.get("trace", "") if isinstance(params.source, dict) else ""
    meta = TraceMeta(model=params.model, num_layers=params.num_layers, num_experts=params.num_experts,
                     top_k=params.top_k, source=f"synthetic ({kind}) from parameters fitted to: {src}",
                     layer_ids=list(params.layer_ids), extra={"synthetic": kind, **(extra or {})})
    return RoutingTrace(experts=experts, weights=None, tokens=tokens, meta=meta)


def sample_baseline(params: SynthParams, kind: str, num_requests: int, tokens_per_request: Any,
                    rng: np.random.Generator, zipf_a: float = 1.2, task: str = "synthetic",
                    phase: str | None = None) -> RoutingTrace:
    """Uniform or Zipf routing with the shape (L, E, K) of ``params``, no locality of any kind.

    Zipf: at each layer expert ranks are a random permutation; P(rank r) ∝ 1 / r**zipf_a; K distinct
    experts per token drawn without replacement (Plackett-Luce).
    """
    if kind not in ("uniform", "zipf"):
        raise MoesimError(f"baseline kind {kind!r}, expected 'uniform' or 'zipf'")
    if kind == "zipf" and not (np.isfinite(zipf_a) and zipf_a >= 0):
        raise MoesimError(f"--zipf-a {zipf_a}, expected a finite number >= 0")
    lens = np.broadcast_to(np.asarray(tokens_per_request, dtype=np.int64), (num_requests,)).copy()
    if num_requests < 1 or (lens < 1).any():
        raise MoesimError("need >= 1 request and >= 1 token per request")
    L, E, K = params.num_layers, params.num_experts, params.top_k
    T = int(lens.sum())
    if kind == "uniform":
        w = np.ones((L, E))
    else:
        base = 1.0 / np.arange(1, E + 1, dtype=np.float64) ** zipf_a
        w = np.stack([base[rng.permutation(E)] for _ in range(L)])  # (L, E)
    experts = np.zeros((T, L, K), dtype=np.int16)
    for l in range(L):
        experts[:, l] = _pl_topk(np.broadcast_to(w[l], (T, E)), K, rng)
    return _make_trace(params, experts, lens, np.full(num_requests, task, dtype=object),
                       phase or params.phase, kind, {"zipf_a": zipf_a} if kind == "zipf" else None)


# ------------------------------------------------------------------------------------------------
# fitting
# ------------------------------------------------------------------------------------------------
def _task_counts(trace: RoutingTrace) -> tuple[np.ndarray, np.ndarray]:
    from traces.stats import popularity_counts, transition_counts

    pc = popularity_counts(trace)  # (L, E)
    E = trace.num_experts
    tc = np.stack([transition_counts(trace.experts, E, l) for l in range(trace.num_layers - 1)]) \
        if trace.num_layers > 1 else np.zeros((0, E, E), dtype=np.int64)
    return pc, tc


def _synthetic_view(ex: np.ndarray, lens: np.ndarray, E: int) -> RoutingTrace:
    pos = np.arange(len(ex)) - np.repeat(np.cumsum(lens) - lens, lens)
    return RoutingTrace(ex, None, make_tokens(np.repeat(np.arange(len(lens)), lens), pos, "decode", "x"),
                        TraceMeta("calib", ex.shape[1], E, ex.shape[2]))


def calibration_targets(trace: RoutingTrace) -> np.ndarray:
    """(L, 3) per layer: cross-layer predict precision into layer l (nan at l = 0), consecutive
    overlap, mean reuse distance -- the three statistics beta, rho and eta are calibrated to."""
    from traces.stats import consecutive_overlap, cross_layer_stats, reuse_distances

    L = trace.num_layers
    out = np.full((L, 3), np.nan)
    if L > 1:
        out[1:, 0] = cross_layer_stats(trace)["predict_precision"]
    out[:, 1] = consecutive_overlap(trace)
    d, _, _ = reuse_distances(trace, per_layer=True)
    out[:, 2] = [x.mean() if len(x) else np.nan for x in d]
    return out


def _calibrate(tm: TaskModel, lens: np.ndarray, K: int, target: np.ndarray,
               rng: np.random.Generator, steps: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Knobs (L, 3) so that the sampled statistics match ``target`` (L, 3) (per-layer Newton steps
    with a finite-difference Jacobian). Returns (knobs, statistics reached)."""
    L, E = tm.pop.shape

    def f(kn: np.ndarray) -> np.ndarray:
        return calibration_targets(_synthetic_view(_sample_task(tm, lens, K, rng, knobs=kn), lens, E))

    def clip(kn: np.ndarray) -> np.ndarray:
        kn = kn.copy()
        kn[:, 0] = np.clip(kn[:, 0], 0.05, 20.0)
        kn[:, 1:] = np.clip(kn[:, 1:], 0.0, 0.9)
        tot = kn[:, 1] + kn[:, 2]
        scale = np.where(tot > 0.95, 0.95 / np.maximum(tot, 1e-9), 1.0)
        kn[:, 1:] *= scale[:, None]
        return kn

    x = np.tile([1.0, 0.1, 0.1], (L, 1))
    y = f(x)
    step = np.array([0.5, 0.1, 0.1])
    J = np.zeros((L, 3, 3))  # J[l, stat, knob]
    for i in range(3):
        xi = x.copy()
        xi[:, i] += step[i]
        J[:, :, i] = (f(xi) - y) / step[i]
    tgt = np.where(np.isfinite(target), target, y)  # layer 0 has no precision target
    for _ in range(steps):
        dx = np.zeros((L, 3))
        for l in range(L):
            use = [i for i in range(3) if np.isfinite(target[l, i]) and np.isfinite(y[l, i])]
            A = J[l][np.ix_(use, use)] if use else np.zeros((0, 0))
            if use and abs(np.linalg.det(A)) > 1e-9:
                dx[l, use] = np.linalg.solve(A, (tgt[l] - y[l])[use])
        x = clip(x + dx)
        y = f(x)
    return x, y


def fit_params(trace: RoutingTrace, seed: int = 0, command: str = "", max_calib_tokens: int = 30000,
               trace_path: str = "") -> dict[str, Any]:
    """Fit the generator to ``trace`` (per task); returns the JSON-ready parameter dict."""
    rng = np.random.default_rng(seed)
    m = trace.meta
    K = m.top_k
    tasks_col = trace.tokens["task"].to_numpy()
    req_tasks = np.asarray(trace.request_tasks(), dtype=object)
    out_tasks: dict[str, Any] = {}
    for name in sorted(set(req_tasks.tolist())):
        sub = trace.take(np.flatnonzero(tasks_col == name))
        pc, tc = _task_counts(sub)
        lens = np.diff(sub.request_bounds())
        target = calibration_targets(sub)  # (L, 3)
        zero = [0.0] * m.num_layers
        d = {"share": float((req_tasks == name).mean()), "popularity_counts": pc.tolist(),
             "transition_counts": tc.tolist(), "beta": [1.0] * m.num_layers, "rho": zero, "eta": zero}
        tm = params_from_dict(_wrap(m, {name: d}, {}), "<fit>").tasks[name]
        # calibrate on (up to) max_calib_tokens tokens of the real length mix
        cl = lens[np.cumsum(lens) <= max_calib_tokens] if lens.sum() > max_calib_tokens else lens
        cl = cl if len(cl) else lens[:1]
        knobs, got = _calibrate(tm, cl, K, target, rng)
        for i, k in enumerate(("beta", "rho", "eta")):
            d[k] = np.round(knobs[:, i], 5).tolist()
        d["calibration"] = {
            "statistics": ["predict_precision_into_layer", "consecutive_overlap", "mean_reuse_distance"],
            "target": np.round(target, 5).tolist(), "reached": np.round(got, 5).tolist(),
            "calibration_tokens": int(cl.sum())}
        d["tokens_per_request"] = {"num_requests": int(len(lens)), "num_tokens": int(lens.sum()),
                                   "median": float(np.median(lens)), "mean": float(lens.mean()),
                                   "max": int(lens.max())}
        out_tasks[name] = d
    source = {"trace": m.source, "trace_file": trace_path, "model": m.model,
              "fitted_on": _dt.date.today().isoformat(), "command": command, "seed": seed}
    return _wrap(m, out_tasks, source, phase=str(trace.tokens["phase"].iloc[0]))


def _wrap(m: TraceMeta, tasks: dict[str, Any], source: dict[str, Any], phase: str = "decode") -> dict:
    return {"schema": SCHEMA, "version": VERSION, "model": m.model, "num_layers": m.num_layers,
            "num_experts": m.num_experts, "top_k": m.top_k, "layer_ids": list(m.layer_ids),
            "phase": phase, "source": source, "tasks": tasks}
