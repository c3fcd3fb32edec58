"""The parameters of the fitted routing generator (:mod:`traces.synth`): the file, its checks, the
sampling arrays built from it, and the shipped parameter sets.

A parameter file is JSON: ``schema`` = "moesim-synth-params", ``version`` 2, model shape,
``source`` (what it was fitted from, when, with which command), ``tasks`` -> {``share``,
``popularity_counts`` (L x E), ``transition_counts`` ((L-1) x E x E), ``beta``, ``sigma``,
``rho``, ``pop_correction`` (L x E, rounded to 1e-4), ``calibration`` (targets, achieved,
``pop_power``), ``tokens_per_request`` summary}. Written by :func:`traces.synth_fit.fit_params`
(``moesim trace fit``) or derived from a fitted file (:mod:`traces.synth_derive`; such a file holds
the recipe, and :mod:`traces.synth_expand` rebuilds its counts when it is loaded here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import MoesimError
from traces.synth_expand import expand

SCHEMA = "moesim-synth-params"
VERSION = 2
#: fitted to a real trace: deepseek-v2-lite, mixtral-8x7b; derived from the nearest of those
#: (traces/synth_derive.py, "derived": true in their source): the other conf/model/ models
SHIPPED = {"deepseek-v2-lite": "deepseek-v2-lite.json", "mixtral-8x7b": "mixtral-8x7b.json",
           "deepseek-v3": "deepseek-v3.json", "qwen3-30b-a3b": "qwen3-30b-a3b.json",
           "mixtral-8x22b": "mixtral-8x22b.json"}


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
    if "derivation" in d:  # derived parameters: counts rebuilt from the source's (synth_expand.py)
        d = expand(d, lambda name: raw_shipped(name) if name in SHIPPED else None, where)
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


def raw_shipped(name: str) -> dict[str, Any]:
    """The JSON dict of the shipped parameter set ``name`` (a key of :data:`SHIPPED`), unchecked."""
    return json.loads(resources.files("traces.params").joinpath(SHIPPED[name]).read_text())


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
