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

This module assembles traces: the fitted model's (:func:`sample_trace`) and the uniform and Zipf
baselines (:func:`sample_baseline`). The sampler (numpy over a chunk of requests, and the fitting
path) is :mod:`traces.synth_sample`; the parameters and their file are :mod:`traces.synth_params`.

Fitting (:func:`traces.synth_fit.fit_params`): popularity and transition counts are exact integer
counts of the real trace; ``beta``, ``sigma`` and ``rho`` are calibrated (Broyden iterations,
common random numbers, on a length-stratified subset of the real requests) so that the sampled
trace's cross-layer predict precision, median reuse distance and consecutive-token overlap
(definitions in :mod:`traces.stats`) match the real trace's; every evaluation fits the popularity
correction layer by layer (iterative proportional fitting, request topics centred). Last, the IPF
target becomes the real shares to a power ``pop_power`` (secant steps) so that fresh samples with
the real request lengths, whose request topics add chance skew, have the real mean Gini. Targets
and achieved values are stored in the file. DeepSeek-V2-Lite (seed 0): 9 + 3 evaluations,
~1.5 min.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.common.errors import MoesimError
from traces.format import RoutingTrace, TraceMeta, make_tokens
from traces.synth_params import SynthParams
from traces.synth_sample import _pl_topk, sample_task


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
