"""Synthetic routing traces: a generator fitted to a real trace, plus uniform and Zipf baselines.

The fitted model (per task; ``L`` layers, ``E`` experts, top-``K``) is a mixture of C token
"routing types" (latent clusters), which is what makes cross-layer structure come out right: the
K experts of a real token at layer l predict its experts at layer l+1 far better than any
first-order chain P(e' | e) reproduces (DeepSeek-V2-Lite: 0.48 precision in-sample vs 0.16 from a
first-order sampler, 0.14 from popularity alone), because the experts of one token agree.

per type c       ``profile[c, l, e]``: how often tokens of type c use expert e at layer l
                 (so per-layer popularity and cross-layer transitions are both mixtures of these)
type shares      ``weights[c]``
temporal reuse   a token keeps the previous token's type with probability ``persist``; otherwise,
                 with probability ``history``, it takes the type of a uniformly chosen earlier token
                 of the same request (request-level locality); otherwise a fresh type ~ weights.

Sampling: types are resolved for all tokens at once (pointer jumping along "copied from" links),
then each layer draws K distinct experts per token without replacement in proportion to
``profile[type, l]`` (Plackett-Luce, exponential race): numpy over tokens, a loop over layers.

Fitting (:func:`fit_params`): hard EM (classification EM) of the mixture on up to
``max_fit_tokens`` tokens, every token then assigned its most likely type; profiles are the
integer counts of the assigned tokens (exact, from the named source; add-``smoothing`` when
loaded); ``persist`` and ``history`` are the rates at which the assigned types repeat the previous
token's / an earlier token's type in the real requests.

A parameter file is JSON: ``schema`` = "moesim-synth-params", ``version``, model shape, ``source``
(what it was fitted from, when, with which command), ``tasks`` -> {``share``,
``popularity_counts`` (L x E, for reference and baselines), ``type_counts`` (C x L x E),
``type_weights`` (C), ``persist``, ``history``, ``tokens_per_request`` summary}.
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
    profile: np.ndarray  # (C, L, E) float64, rows sum to 1
    type_w: np.ndarray  # (C,) float64, sums to 1
    persist: float
    history: float


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
            tc = np.asarray(t["type_counts"], dtype=np.float64)
            tw = np.asarray(t["type_weights"], dtype=np.float64)
            persist, history = float(t["persist"]), float(t["history"])
            share = float(t.get("share", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise _err(where, f"task {name!r}: missing or bad field {exc}") from None
        if pc.shape != (L, E) or tc.ndim != 3 or tc.shape[1:] != (L, E) or tw.shape != tc.shape[:1] \
                or len(tw) == 0:
            raise _err(where, f"task {name!r}: shapes popularity {pc.shape}, type_counts {tc.shape}, "
                              f"type_weights {tw.shape}; expected ({L}, {E}), (C, {L}, {E}), (C,)")
        if not (np.isfinite(pc).all() and np.isfinite(tc).all() and np.isfinite(tw).all()) or \
                (pc < 0).any() or (tc < 0).any() or (tw < 0).any() or tw.sum() <= 0 or \
                not (0 <= persist < 1 and 0 <= history <= 1):
            raise _err(where, f"task {name!r}: counts and weights must be finite and >= 0, persist in "
                              f"[0, 1), history in [0, 1]")
        pop = pc + smoothing
        pop /= pop.sum(axis=1, keepdims=True)
        prof = tc + smoothing
        prof /= prof.sum(axis=2, keepdims=True)
        tasks[str(name)] = TaskModel(str(name), share, pop, prof, tw / tw.sum(), persist, history)
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


def _sample_task(tm: TaskModel, lens: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """(sum(lens), L, K) int16 experts for requests of the given lengths (tokens contiguous)."""
    C, L, E = tm.profile.shape
    lens = np.asarray(lens, dtype=np.int64)
    T = int(lens.sum())
    starts = np.repeat(np.cumsum(lens) - lens, lens)  # (T,) first token of each token's request
    pos = np.arange(T) - starts  # (T,)
    u = rng.random(T)
    keep = (pos > 0) & (u < tm.persist)
    hist = (pos > 1) & ~keep & (u < tm.persist + (1.0 - tm.persist) * tm.history)
    ptr = np.arange(T)
    ptr[keep] = ptr[keep] - 1
    h = np.flatnonzero(hist)
    ptr[h] = starts[h] + np.floor(rng.random(len(h)) * pos[h]).astype(np.int64)  # earlier token
    z = rng.choice(C, size=T, p=tm.type_w)  # fresh types; copies overwrite below
    while True:  # pointer jumping: every link points to an earlier token, so this ends
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    z = z[ptr]  # (T,)
    out = np.empty((T, L, K), dtype=np.int16)  # (T, L, K)
    for l in range(L):
        out[:, l] = _pl_topk(tm.profile[z, l], K, rng)
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
def _onehot(ex: np.ndarray, E: int) -> np.ndarray:
    """(n, L, K) -> (n, L*E) float32 indicator."""
    n, L, K = ex.shape
    x = np.zeros((n, L * E), dtype=np.float32)
    idx = (np.arange(L)[None, :, None] * E + ex.astype(np.int64)).reshape(n, -1)
    x[np.arange(n)[:, None], idx] = 1.0
    return x


def _assign(ex: np.ndarray, logp: np.ndarray, logw: np.ndarray, E: int, chunk: int = 4096) -> np.ndarray:
    """Most likely type of each token: argmax_c log w_c + sum_l sum_k log p[c, l, e]."""
    C = logp.shape[0]
    flat = logp.reshape(C, -1).T.astype(np.float32)  # (L*E, C)
    out = np.empty(len(ex), dtype=np.int64)
    for i in range(0, len(ex), chunk):
        out[i:i + chunk] = np.argmax(_onehot(ex[i:i + chunk], E) @ flat + logw, axis=1)
    return out


def _type_counts(ex: np.ndarray, z: np.ndarray, C: int, E: int) -> np.ndarray:
    n, L, K = ex.shape
    key = (z[:, None, None] * L + np.arange(L)[None, :, None]) * E + ex.astype(np.int64)  # (n, L, K)
    return np.bincount(key.reshape(-1), minlength=C * L * E).reshape(C, L, E)


def fit_types(ex: np.ndarray, E: int, num_types: int, rng: np.random.Generator, iters: int = 15,
              max_fit_tokens: int = 30000, smoothing: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Hard-EM fit of the type mixture; returns (type of every token (T,), type counts (C, L, E))."""
    T = len(ex)
    C = max(1, min(num_types, T))
    fit_rows = np.sort(rng.choice(T, size=min(T, max_fit_tokens), replace=False))
    sub = ex[fit_rows]
    z = rng.integers(0, C, size=len(sub))
    for _ in range(iters):
        cnt = _type_counts(sub, z, C, E) + smoothing
        logp = np.log(cnt / cnt.sum(axis=2, keepdims=True))
        logw = np.log((np.bincount(z, minlength=C) + 1.0) / (len(z) + C))
        z_new = _assign(sub, logp, logw, E)
        if np.array_equal(z_new, z):
            break
        z = z_new
    cnt = _type_counts(sub, z, C, E) + smoothing
    logp = np.log(cnt / cnt.sum(axis=2, keepdims=True))
    logw = np.log((np.bincount(z, minlength=C) + 1.0) / (len(z) + C))
    z_all = _assign(ex, logp, logw, E)
    return z_all, _type_counts(ex, z_all, C, E)


def _reuse_rates(z: np.ndarray, bounds: np.ndarray) -> tuple[float, float]:
    """(persist, history) from a type sequence: share of tokens repeating the previous token's type,
    and, of the others with >= 2 earlier tokens, the share whose type occurred earlier in the request."""
    T = len(z)
    ridx = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    pos = np.arange(T) - bounds[:-1][ridx]
    same = np.zeros(T, dtype=bool)
    same[1:] = (z[1:] == z[:-1]) & (pos[1:] > 0)
    n_prev = int((pos > 0).sum())
    persist = float(same.sum() / n_prev) if n_prev else 0.0
    # seen-before: first occurrence of (request, type) vs later ones
    key = ridx * (int(z.max()) + 1) + z
    first = np.zeros(T, dtype=bool)
    first[np.unique(key, return_index=True)[1]] = True
    cand = (pos > 1) & ~same
    history = float((~first[cand]).mean()) if cand.any() else 0.0
    return min(persist, 0.99), history


def fit_params(trace: RoutingTrace, seed: int = 0, command: str = "", num_types: int = 64,
               max_fit_tokens: int = 30000, trace_path: str = "") -> dict[str, Any]:
    """Fit the generator to ``trace`` (per task); returns the JSON-ready parameter dict."""
    from traces.stats import popularity_counts

    rng = np.random.default_rng(seed)
    m = trace.meta
    tasks_col = trace.tokens["task"].to_numpy()
    req_tasks = np.asarray(trace.request_tasks(), dtype=object)
    out_tasks: dict[str, Any] = {}
    for name in sorted(set(req_tasks.tolist())):
        sub = trace.take(np.flatnonzero(tasks_col == name))
        z, tc = fit_types(sub.experts, m.num_experts, num_types, rng, max_fit_tokens=max_fit_tokens)
        bounds = sub.request_bounds()
        persist, history = _reuse_rates(z, bounds)
        lens = np.diff(bounds)
        out_tasks[name] = {
            "share": float((req_tasks == name).mean()),
            "popularity_counts": popularity_counts(sub).tolist(),
            "type_counts": tc.tolist(),
            "type_weights": np.bincount(z, minlength=tc.shape[0]).tolist(),
            "persist": round(persist, 6), "history": round(history, 6),
            "tokens_per_request": {"num_requests": int(len(lens)), "num_tokens": int(lens.sum()),
                                   "median": float(np.median(lens)), "mean": float(lens.mean()),
                                   "max": int(lens.max())},
        }
    source = {"trace": m.source, "trace_file": trace_path, "model": m.model,
              "fitted_on": _dt.date.today().isoformat(), "command": command, "seed": seed,
              "num_types": num_types, "max_fit_tokens": max_fit_tokens}
    return _wrap(m, out_tasks, source, phase=str(trace.tokens["phase"].iloc[0]))


def _wrap(m: TraceMeta, tasks: dict[str, Any], source: dict[str, Any], phase: str = "decode") -> dict:
    return {"schema": SCHEMA, "version": VERSION, "model": m.model, "num_layers": m.num_layers,
            "num_experts": m.num_experts, "top_k": m.top_k, "layer_ids": list(m.layer_ids),
            "phase": phase, "source": source, "tasks": tasks}
