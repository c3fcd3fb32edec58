"""Synthetic routing traces: a generator fitted to a real trace, plus uniform and Zipf baselines.

The fitted model (per task; ``L`` layers, ``E`` experts, top-``K``) samples a token's experts layer
by layer. At layer l the K experts are the top K of a random score (Gumbel-top-k, i.e. K draws
without replacement, Plackett-Luce) over the E experts::

    score(e') = bias[l, e']                                          popularity
              + beta * log(mean_{e in S(t, l-1)} P_{l-1}(e' | e))     cross-layer (l > 0)
              + sigma * R[r, l, e']                                   request topic
              + G[t, l, e']                                           Gumbel noise

``P_{l-1}`` is the real first-order transition matrix (rows of the transition counts, smoothed);
``beta`` sharpens it, which is what makes the in-sample cross-layer precision of the synthetic
trace reach the real one (a plain first-order chain, beta = 1, gives 0.16 on DeepSeek-V2-Lite
against 0.475 real). ``R ~ N(0, 1)`` is drawn once per request and layer (request-level locality:
experts a request favours are reused, which sets the reuse distance). Temporal locality between
neighbouring tokens: with probability ``rho`` a token reuses the previous token's Gumbel noise
vector at that layer (so it tends to pick the same experts). ``bias[l] = (1 - beta [l > 0]) *
log pop[l] + correction[l]``, where ``correction`` is fitted so that every expert's synthetic
popularity matches the real one (the sharpened chain would otherwise concentrate on popular
experts).

Sampling is numpy over all tokens of a chunk of requests, a Python loop over layers and blocks
of :data:`BLOCK_ROWS` tokens only (the previous-token noise links are resolved by pointer
jumping, not a loop over tokens).

Fitting (:func:`traces.synth_fit.fit_params`): popularity and transition counts are exact
integer counts of the real trace; ``beta``, ``sigma`` and ``rho`` are calibrated (Broyden
iterations, common random numbers, on a length-stratified subset of the real requests) so that
the sampled trace's
cross-layer predict precision, median reuse distance and consecutive-token overlap (definitions
in :mod:`traces.stats`) match the real trace's; every evaluation fits the popularity correction
layer by layer (iterative proportional fitting, request topics centred). Last, the IPF target
becomes the real shares to a power ``pop_power`` (secant steps) so that fresh samples with the
real request lengths, whose request topics add chance skew, have the real mean Gini. Targets and
achieved values are stored in the file. DeepSeek-V2-Lite (seed 0): 9 + 3 evaluations, ~1.5 min.

A parameter file is JSON: ``schema`` = "moesim-synth-params", ``version`` 2, model shape,
``source`` (what it was fitted from, when, with which command), ``tasks`` -> {``share``,
``popularity_counts`` (L x E), ``transition_counts`` ((L-1) x E x E), ``beta``, ``sigma``,
``rho``, ``pop_correction`` (L x E, rounded to 1e-4), ``calibration`` (targets, achieved,
``pop_power``), ``tokens_per_request`` summary}.
"""

from __future__ import annotations

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
VERSION = 2
#: fitted to a real trace: deepseek-v2-lite, mixtral-8x7b; derived from the nearest of those
#: (traces/synth_derive.py, "derived": true in their source): the other conf/model/ models
SHIPPED = {"deepseek-v2-lite": "deepseek-v2-lite.json", "mixtral-8x7b": "mixtral-8x7b.json",
           "deepseek-v3": "deepseek-v3.json", "qwen3-30b-a3b": "qwen3-30b-a3b.json",
           "mixtral-8x22b": "mixtral-8x22b.json"}
#: requests are sampled in chunks of about this many tokens (bounds memory to ~ chunk * E floats)
CHUNK_TOKENS = 1 << 16


@dataclass
class TaskModel:
    """Sampling arrays of one task."""

    name: str
    share: float
    logpop: np.ndarray  # (L, E) float32, log of smoothed popularity shares
    trans: np.ndarray  # (L-1, E, E) float32, rows P_l(e' | e) sum to 1
    correction: np.ndarray  # (L, E) float32
    beta: float
    sigma: float
    rho: float

    def bias(self) -> np.ndarray:
        """(L, E) float32 popularity term of the score."""
        scale = np.full((self.logpop.shape[0], 1), 1.0 - self.beta, dtype=np.float32)
        scale[0] = 1.0
        return (scale * self.logpop + self.correction).astype(np.float32)


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


def smoothed_probs(counts: np.ndarray, smoothing: float) -> np.ndarray:
    p = np.asarray(counts, dtype=np.float64) + smoothing
    return p / p.sum(axis=-1, keepdims=True)


def task_model(name: str, t: dict[str, Any], L: int, E: int, where: str = "<params>",
               smoothing: float = 0.5) -> TaskModel:
    """Check one task's fields and build its sampling arrays."""
    try:
        pc = np.asarray(t["popularity_counts"], dtype=np.float64)
        tc = np.asarray(t["transition_counts"], dtype=np.float64)
        corr = np.asarray(t["pop_correction"], dtype=np.float64)
        beta, sigma, rho = float(t["beta"]), float(t["sigma"]), float(t["rho"])
        share = float(t.get("share", 1.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(where, f"task {name!r}: missing or bad field {exc}") from None
    if pc.shape != (L, E) or tc.shape != (L - 1, E, E) or corr.shape != (L, E):
        raise _err(where, f"task {name!r}: shapes popularity_counts {pc.shape}, transition_counts "
                          f"{tc.shape}, pop_correction {corr.shape}; expected ({L}, {E}), "
                          f"({L - 1}, {E}, {E}), ({L}, {E})")
    if not (np.isfinite(pc).all() and np.isfinite(tc).all() and np.isfinite(corr).all()) or \
            (pc < 0).any() or (tc < 0).any():
        raise _err(where, f"task {name!r}: counts must be finite and >= 0, pop_correction finite")
    if not (0 <= beta <= 50 and 0 <= sigma <= 20 and 0 <= rho < 1 and share >= 0):
        raise _err(where, f"task {name!r}: beta={beta}, sigma={sigma}, rho={rho}, share={share}; "
                          f"expected 0 <= beta <= 50, 0 <= sigma <= 20, 0 <= rho < 1, share >= 0")
    return TaskModel(name=str(name), share=share,
                     logpop=np.log(smoothed_probs(pc, smoothing)).astype(np.float32),
                     trans=smoothed_probs(tc, smoothing).astype(np.float32),
                     correction=corr.astype(np.float32), beta=beta, sigma=sigma, rho=rho)


def params_from_dict(d: dict[str, Any], where: str = "<params>", smoothing: float = 0.5) -> SynthParams:
    """Check a parameter dict and turn its counts into sampling arrays."""
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise _err(where, f"not a synth parameter file (expected \"schema\": \"{SCHEMA}\")")
    if d.get("version") != VERSION:
        raise _err(where, f"version {d.get('version')!r}, this moesim reads version {VERSION} "
                          f"(refit with 'moesim trace fit')")
    if "derivation" in d:  # derived parameters: counts rebuilt from the source's (synth_derive.py)
        from traces.synth_derive import expand

        d = expand(d, where)
    try:
        L, E, K = int(d["num_layers"]), int(d["num_experts"]), int(d["top_k"])
        tasks_raw = d["tasks"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _err(where, f"missing or bad field {exc}") from None
    if not (L >= 1 and E >= 2 and 1 <= K <= E) or not isinstance(tasks_raw, dict) or not tasks_raw:
        raise _err(where, f"num_layers={L}, num_experts={E}, top_k={K}, tasks {type(tasks_raw).__name__}: "
                          f"expected L >= 1, E >= 2, 1 <= K <= E and at least one task")
    tasks = {str(n): task_model(n, t, L, E, where, smoothing) for n, t in tasks_raw.items()}
    tot = sum(t.share for t in tasks.values())
    for t in tasks.values():
        t.share = t.share / tot if tot > 0 else 1.0 / len(tasks)
    return SynthParams(model=str(d.get("model", "unknown")), num_layers=L, num_experts=E, top_k=K,
                       layer_ids=list(d.get("layer_ids") or range(L)), phase=str(d.get("phase", "decode")),
                       tasks=tasks, source=dict(d.get("source", {})), raw=d)


def fitted_params(name: str) -> SynthParams:
    """The shipped parameters ``name`` (a key of :data:`SHIPPED`: fitted or derived)."""
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


def _prev_links(pos: np.ndarray, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise sharing at one layer: (root (T,) bool, src (T,) index of the root a token copies).

    A token at position > 0 copies the previous token's noise with probability rho; chains are
    resolved by pointer jumping.
    """
    T = len(pos)
    copy = (pos > 0) & (rng.random(T) < rho)  # (T,)
    ptr = np.arange(T)
    ptr[copy] -= 1
    while True:  # every link points to an earlier token: ends after log2(longest run) rounds
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    root = ~copy
    return root, (np.cumsum(root) - 1)[ptr]


def _topk_desc(s: np.ndarray, k: int) -> np.ndarray:
    """(n, E) scores -> (n, k) indices of the k highest, highest first: exactly
    ``np.argsort(s, axis=1)[:, : -k - 1 : -1]``. The values are sorted (a vectorised sort, much
    cheaper than an argsort or argpartition); a row whose k + 1 highest values are strictly
    increasing has one answer, its top k above the (k + 1)-th; a row with a tie there (or a NaN)
    is argsorted whole, so that ties resolve as argsort resolves them."""
    n, E = s.shape
    if k >= E:
        return np.argsort(s, axis=1)[:, : -k - 1: -1]
    hi = np.sort(s, axis=1)[:, E - k - 1:]  # (n, k + 1): the boundary, then the top k ascending
    good = (hi[:, 1:] > hi[:, :-1]).all(axis=1)
    mask = s > hi[:, :1]
    mask[~good] = False
    idx = (np.flatnonzero(mask) % E).reshape(-1, k)  # good rows' top k, by expert id
    top = np.empty((n, k), dtype=np.intp)
    rows = np.flatnonzero(good)
    v = s[rows[:, None], idx]
    top[rows] = np.take_along_axis(idx, np.argsort(v, axis=1)[:, ::-1], axis=1)
    if len(rows) < n:
        bad = np.flatnonzero(~good)
        top[bad] = np.argsort(s[bad], axis=1)[:, : -k - 1: -1]
    return top


#: rows of a chunk scored at a time when sampling (bounds the temporaries to ~ BLOCK_ROWS * E)
BLOCK_ROWS = 1024


def _gumbel(g: np.ndarray) -> None:
    """Uniforms (float32, in place) -> Gumbel noise ``-log(-log(max(u, 1e-30)))``."""
    for a in range(0, len(g), BLOCK_ROWS):
        b = g[a:a + BLOCK_ROWS]
        np.maximum(b, np.float32(1e-30), out=b)
        np.log(b, out=b)
        np.negative(b, out=b)
        np.log(b, out=b)
        np.negative(b, out=b)


def sample_chunk(tm: TaskModel, bias: np.ndarray, lens: np.ndarray, K: int,
                  rng: np.random.Generator, target_share: np.ndarray | None = None,
                  ipf_iters: int = 6) -> np.ndarray:
    """(sum(lens), L, K) int16 experts for requests of the given lengths (tokens contiguous).

    ``target_share`` (L, E) (fitting only): after drawing layer l's noise, ``bias[l]`` is
    corrected in place by ``ipf_iters`` rounds of iterative proportional fitting (same noise,
    experts redrawn) so that the layer's expert shares match ``target_share[l]``; the request
    topics are then centred (token-weighted) so that the correction fits the expected shares,
    not the chance popularity shift of the requests drawn.

    Without ``target_share`` the scores are computed :data:`BLOCK_ROWS` tokens at a time into
    reused buffers (the same float operations in the same order, so the same experts).
    """
    if target_share is not None:
        return _sample_chunk_fit(tm, bias, lens, K, rng, target_share, ipf_iters)
    L, E = bias.shape
    n = len(lens)
    T = int(lens.sum())
    ridx = np.repeat(np.arange(n), lens)  # (T,)
    pos = np.arange(T) - (np.cumsum(lens) - lens)[ridx]  # (T,)
    out = np.empty((T, L, K), dtype=np.int16)  # (T, L, K)
    prev = np.empty((T, K), dtype=np.intp)  # the previous layer's experts
    cur = np.empty((T, K), dtype=np.intp)
    beta, sigma = np.float32(tm.beta), np.float32(tm.sigma)
    inv_k = np.float32(1.0 / K)
    gbuf = np.empty(T * E, dtype=np.float32)  # the layer's noise, reused across layers
    B = min(BLOCK_ROWS, T)
    sbuf = np.empty((B, E), dtype=np.float32)
    abuf = np.empty((B, E), dtype=np.float32)
    tbuf = np.empty((B, E), dtype=np.float32)
    for l in range(L):
        root, src = _prev_links(pos, tm.rho, rng)
        g = gbuf[: int(root.sum()) * E].reshape(-1, E)  # (roots, E) -> Gumbel
        rng.random(dtype=np.float32, out=g)
        _gumbel(g)
        rs = None
        if sigma > 0:
            r = rng.standard_normal((n, E), dtype=np.float32)  # (n, E) request topic
            rs = sigma * r
        P = tm.trans[l - 1] if l > 0 and beta > 0 else None  # (E, E)
        for a in range(0, T, B):
            b = min(a + B, T)
            s, m = sbuf[: b - a], b - a
            np.take(g, src[a:b], axis=0, out=s, mode="clip")  # (m, E); in range: no check
            s += bias[l]
            if rs is not None:
                s += np.take(rs, ridx[a:b], axis=0, out=tbuf[:m], mode="clip")
            if P is not None:
                acc, tmp = abuf[:m], tbuf[:m]  # sum of the rows of the previous layer's experts
                np.take(P, prev[a:b, 0], axis=0, out=acc, mode="clip")
                for k in range(1, K):
                    np.take(P, prev[a:b, k], axis=0, out=tmp, mode="clip")
                    acc += tmp
                acc *= inv_k
                np.log(acc, out=acc)
                acc *= beta
                s += acc
            cur[a:b] = _topk_desc(s, K)  # (m, K) highest scores first
        out[:, l] = cur
        prev, cur = cur, prev
    return out


def _sample_chunk_fit(tm: TaskModel, bias: np.ndarray, lens: np.ndarray, K: int,
                      rng: np.random.Generator, target_share: np.ndarray,
                      ipf_iters: int) -> np.ndarray:
    """:func:`sample_chunk` with ``target_share`` (fitting): the whole chunk at once."""
    L, E = bias.shape
    n = len(lens)
    T = int(lens.sum())
    ridx = np.repeat(np.arange(n), lens)  # (T,)
    pos = np.arange(T) - (np.cumsum(lens) - lens)[ridx]  # (T,)
    out = np.empty((T, L, K), dtype=np.int16)  # (T, L, K)
    prev = None
    beta, sigma = np.float32(tm.beta), np.float32(tm.sigma)
    inv_k = np.float32(1.0 / K)
    for l in range(L):
        root, src = _prev_links(pos, tm.rho, rng)
        g = rng.random((int(root.sum()), E), dtype=np.float32)  # (roots, E) -> Gumbel
        _gumbel(g)
        s = g[src]  # (T, E)
        s += bias[l]
        if sigma > 0:
            r = rng.standard_normal((n, E), dtype=np.float32)  # (n, E) request topic
            r -= (lens[:, None] * r).sum(axis=0) / np.float32(T)  # no net popularity shift
            s += sigma * r[ridx]
        if l > 0 and beta > 0:
            P = tm.trans[l - 1]  # (E, E)
            acc = P[prev[:, 0]]  # (T, E) sum of the rows of the previous layer's experts
            for k in range(1, K):
                acc += P[prev[:, k]]
            acc *= inv_k
            np.log(acc, out=acc)
            acc *= beta
            s += acc
        s -= bias[l]
        for _ in range(ipf_iters):
            top = np.argpartition(s + bias[l], E - K, axis=1)[:, E - K:]  # (T, K) the top-K set
            share = (np.bincount(top.reshape(-1), minlength=E) + 0.5) / (T * K + 0.5 * E)
            bias[l] += np.log(target_share[l] / share).astype(np.float32)
        s += bias[l]
        top = _topk_desc(s, K)  # (T, K) highest scores first
        out[:, l] = top
        prev = top
    return out


def sample_task(tm: TaskModel, lens: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """(sum(lens), L, K) int16, requests in chunks of about CHUNK_TOKENS tokens."""
    lens = np.asarray(lens, dtype=np.int64)
    bias = tm.bias()
    ends = np.cumsum(lens)
    parts, lo = [], 0
    while lo < len(lens):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + CHUNK_TOKENS, side="right")))
        parts.append(sample_chunk(tm, bias, lens[lo:hi], K, rng))
        lo = hi
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


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
        block = sample_task(params.tasks[n], lens[sel], K, rng)
        rows = np.repeat(starts[sel] - (np.cumsum(lens[sel]) - lens[sel]), lens[sel]) + np.arange(len(block))
        experts[rows] = block
    return make_trace(params, experts, lens, req_task, phase or params.phase, "fitted")


def make_trace(params: SynthParams, experts: np.ndarray, lens: np.ndarray, req_task: np.ndarray,
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
    return make_trace(params, experts, lens, np.full(num_requests, task, dtype=object),
                       phase or params.phase, kind, {"zipf_a": zipf_a} if kind == "zipf" else None)
