"""Generator parameters DERIVED (not fitted) for a model with no real routing trace, from the
nearest model that has one (:data:`NEAREST`).

``moesim trace derive MODEL -o traces/params/MODEL.json`` (or :func:`derive_params`) maps the
source's fitted counts onto the target's shape, then re-calibrates two scalars so that the two
statistics the transformation must keep are kept:

* **layers** (``Ls`` -> ``Lt``, stretched linearly): target transition ``l -> l+1`` is the
  source's transition ``tr(l) -> tr(l)+1`` with ``tr(l) = min(floor(l (Ls-1) / (Lt-1)), Ls-2)``;
  target layer 0 takes source layer 0's popularity, layer ``l > 0`` that of ``tr(l-1)+1`` (the
  column side of the transition that feeds it).
* **experts** (``Es`` -> ``Et = m Es``, ``m`` a whole number; otherwise refused): each source
  expert ``a`` becomes ``m`` children ``(a, i)``, each with ``1/m`` of ``a``'s popularity (a
  replicated share vector has exactly the source's Gini). Transitions split *coherently*:
  ``P_t((b, j) | (a, i)) = P_s(b | a) ((1 - eps) [i = j] + eps / m)``, so a token that went
  through child ``i`` tends to stay on channel ``i`` and the next layer stays as predictable as
  in the source (``eps = 1`` would make the children indistinguishable and lose it). Child
  labels are shuffled per layer (seeded), so no placement sees the split as a pattern; the
  ``parent`` and ``channel`` of every target expert are stored in the file.
* **top-k**: the target's own ``top_k`` (the sampler draws ``Kt`` distinct experts a token).
* **kept from the source**: ``sigma`` (request topics) and ``rho`` (token-to-token noise
  sharing), the task names and shares.
* **re-calibrated**: ``beta`` (sharpening of the transition) by secant steps so that the sampled
  trace's cross-layer predict precision equals the source's real one (``calibration.target``
  of the source file), then the popularity power (as in :mod:`traces.synth_fit`) so that three fresh
  samples have on average the source's real mean Gini; the per-layer popularity correction is refitted by
  IPF for each evaluation. Tolerance: both within ``tol`` (default 5 %) of the source's real
  values, measured on ``calib_tokens`` sampled tokens (the precision is the in-sample statistic
  of :mod:`traces.stats`, which depends on the sample size for large expert counts).

The file holds the recipe, not the (Lt-1) x Et x Et transition counts (DeepSeek-V3: 3.8 M
numbers): ``derivation`` (source name, eps, seed, layer maps, ``parent`` and ``channel`` per
layer and expert) and per task ``beta``, ``sigma``, ``rho``, ``pop_correction``,
``calibration``. :func:`traces.synth_expand.expand` rebuilds the counts from the shipped source file when
the file is loaded. Its ``source`` says ``"derived": true`` and from what.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from sim.common.errors import MoesimError
from sim.world.facts import model_named
from traces.synth_expand import derived_counts

#: the nearest model with a real trace, for each shipped model without one
NEAREST = {"deepseek-v3": "deepseek-v2-lite", "qwen3-30b-a3b": "deepseek-v2-lite",
           "mixtral-8x22b": "mixtral-8x7b"}
#: the statistics the derivation keeps (targets from the source file's ``calibration.target``)
KEPT = ("predict_precision", "gini")


def layer_maps(Ls: int, Lt: int) -> tuple[list[int], list[int]]:
    """(pop_src (Lt,), trans_src (Lt-1,)): the source layer whose popularity each target layer
    takes, the source transition each target transition takes."""
    if Lt < 1 or Ls < 1:
        raise MoesimError(f"layers: source {Ls}, target {Lt}; expected >= 1")
    if Lt > 1 and Ls < 2:
        raise MoesimError(f"a {Lt}-layer target needs a source with >= 2 layers (it has {Ls})")
    trans = [min(int(np.floor(l * (Ls - 1) / (Lt - 1))), Ls - 2) for l in range(Lt - 1)]
    return [0] + [t + 1 for t in trans], trans


def expert_maps(Es: int, Et: int, Lt: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(parent (Lt, Et), channel (Lt, Et)): target expert -> its source expert and child index,
    labels shuffled per layer."""
    if Et % Es:
        raise MoesimError(f"experts: target {Et} is not a whole multiple of the source's {Es}; the "
                          f"derivation splits each source expert into Et / Es children")
    base = np.arange(Et)
    parent = np.empty((Lt, Et), dtype=np.int64)
    channel = np.empty((Lt, Et), dtype=np.int64)
    for l in range(Lt):
        perm = rng.permutation(Et)  # target label perm[k] plays the role of child k
        parent[l, perm] = base % Es
        channel[l, perm] = base // Es
    return parent, channel


# ------------------------------------------------------------------------------------------------
# the derivation
# ------------------------------------------------------------------------------------------------
def calibration_lengths(tpr: dict[str, Any], calib_tokens: int) -> np.ndarray:
    """Request lengths of the calibration samples: geometrically spaced between a quarter of the
    source's median and three times its mean (``tokens_per_request`` of the source task), as many
    requests as make about ``calib_tokens`` tokens. The statistics are measured on such samples
    (the Gini grows as requests get fewer and longer: each request's topic adds skew)."""
    from traces.synth_fit import _calib_lengths

    med = max(1, int(tpr["median"]))
    n_req = max(4, calib_tokens // max(1, int(round(tpr["mean"]))))
    return _calib_lengths(np.geomspace(max(1, med // 4), max(med, int(tpr["mean"]) * 3), n_req)
                          .astype(np.int64), calib_tokens)


def _secant(f: Any, x0: float, x1: float, target: float, tol: float, lo: float, hi: float,
            max_evals: int) -> tuple[float, float, list[tuple[float, float]]]:
    """Secant steps on a monotone-increasing scalar ``f`` towards ``target``; returns (best x,
    its value, the evaluations)."""
    ev = [(x0, f(x0))]
    x = x1
    while len(ev) < max_evals:
        ev.append((x, f(x)))
        (xa, ya), (xb, yb) = ev[-2], ev[-1]
        if abs(yb / target - 1.0) < tol:
            break
        slope = (yb - ya) / (xb - xa) if xb != xa else 0.0
        step = (target - yb) / slope if slope > 0 else (0.5 if yb < target else -0.5) * max(abs(xb), 0.1)
        x = float(np.clip(xb + np.clip(step, -0.5 * max(abs(xb), 0.5), 0.5 * max(abs(xb), 0.5)), lo, hi))
    best = min(ev, key=lambda e: abs(e[1] / target - 1.0))
    return best[0], best[1], ev


def _derive_task(name: str, st: dict[str, Any], der: dict[str, Any], Lt: int, Et: int, Kt: int,
                 seed: int, calib_tokens: int, tol: float, max_evals: int) -> dict[str, Any]:
    """One task of the derived file: counts mapped, beta and the popularity power calibrated."""
    from traces.stats import gini
    from traces.synth import make_trace
    from traces.synth_fit import calibration_stats
    from traces.synth_params import SynthParams, task_model
    from traces.synth_sample import sample_chunk, sample_task

    fake = SynthParams(model="derived", num_layers=Lt, num_experts=Et, top_k=Kt,
                       layer_ids=list(range(Lt)), phase="prefill", tasks={}, source={}, raw={})
    real = st["calibration"]["target"]
    pc, tc = derived_counts(np.asarray(st["popularity_counts"], dtype=np.float64),
                            np.asarray(st["transition_counts"], dtype=np.float64), der)
    tpr = st["tokens_per_request"]
    lens = calibration_lengths(tpr, calib_tokens)
    share = (pc + 0.5) / (pc + 0.5).sum(axis=1, keepdims=True)
    sigma, rho = float(st["sigma"]), float(st["rho"])
    state: dict[str, Any] = {"corr": np.zeros((Lt, Et)), "lam": float(st["calibration"]["pop_power"])}

    def tm_of(beta: float, corr: np.ndarray) -> Any:
        return task_model(name, {"popularity_counts": pc, "transition_counts": tc, "pop_correction": corr,
                                 "beta": beta, "sigma": sigma, "rho": rho}, Lt, Et)

    def ipf(beta: float, lam: float) -> tuple[np.ndarray, dict[str, Any]]:
        tm = tm_of(beta, state["corr"])
        base = tm.bias()
        bias = base.copy()
        goal = (share ** lam).astype(np.float32)
        goal /= goal.sum(axis=1, keepdims=True)
        ex = sample_chunk(tm, bias, lens, Kt, np.random.default_rng(seed), target_share=goal)
        corr = state["corr"] + (bias - base).astype(np.float64)
        s = calibration_stats(make_trace(fake, ex, lens, np.full(len(lens), name, dtype=object),
                                         "prefill", "derived"))
        return corr, s

    def precision(beta: float) -> float:
        corr, s = ipf(beta, state["lam"])
        state["corr"] = corr
        return float(s["predict_precision"])

    b0 = float(st["beta"])
    beta, prec, ev_b = _secant(precision, b0, b0 * 1.25 + 0.5, float(real["predict_precision"]), tol / 2,
                               0.0, 50.0, max_evals)

    def fresh_gini(lam: float) -> float:
        corr, _ = ipf(beta, lam)
        state[("corr", lam)] = corr
        from traces.format import expert_counts

        return float(np.mean([gini(expert_counts(sample_task(tm_of(beta, corr), lens, Kt,
                                                              np.random.default_rng(seed + i)),
                                                  Et).astype(np.float64)).mean() for i in (1, 2, 3)]))

    lam0 = state["lam"]
    lam, g, ev_g = _secant(fresh_gini, lam0, lam0 * 1.1, float(real["gini"]), tol / 2, 0.1, 3.0, max_evals)
    corr = state[("corr", lam)]
    return {
        "share": st["share"], "beta": round(beta, 5), "sigma": sigma, "rho": rho,
        "pop_correction": np.round(corr, 4).tolist(),
        "calibration": {
            "method": "derived: beta by secant steps on the cross-layer predict precision, then the "
                      "popularity power on fresh samples' mean Gini; IPF popularity correction per "
                      "evaluation (traces/synth_derive.py)",
            "calib_requests": int(len(lens)), "calib_tokens": int(lens.sum()), "seed": seed,
            "target": {k: real[k] for k in KEPT}, "tolerance": tol,
            "achieved": {"predict_precision": round(prec, 5), "gini": round(g, 5)},
            "evaluations": {"beta": [[round(x, 4), round(y, 5)] for x, y in ev_b],
                            "pop_power": [[round(x, 4), round(y, 5)] for x, y in ev_g]},
            "pop_power": round(lam, 5),
        },
        "tokens_per_request": tpr,
    }


def derive_params(model: Any, source: str | None = None, eps: float = 0.0, seed: int = 0,
                  calib_tokens: int = 12000, tol: float = 0.05, max_evals: int = 6,
                  command: str = "") -> dict[str, Any]:
    """JSON-ready derived parameters for ``model`` (a :class:`sim.world.config.ModelConfig` or a
    ``conf/model`` name) from ``source`` (default :data:`NEAREST`)."""
    from sim.world.config import ModelConfig
    from traces.synth_params import SCHEMA, VERSION, raw_shipped

    if not isinstance(model, ModelConfig):
        model = model_named(str(model))
    source = source or NEAREST.get(model.name)
    if source is None:
        raise MoesimError(f"no nearest traced model known for {model.name!r}; give --source NAME")
    src = raw_shipped(source) if source in NEAREST.values() else None
    if src is None or "derivation" in src:
        raise MoesimError(f"source {source!r}: expected a fitted shipped parameter set")
    if not 0.0 <= eps <= 1.0:
        raise MoesimError(f"coherence eps {eps}, expected 0..1")
    Ls, Es = int(src["num_layers"]), int(src["num_experts"])
    Lt, Et, Kt = model.num_layers, model.num_experts, model.top_k
    pop_src, trans_src = layer_maps(Ls, Lt)
    parent, channel = expert_maps(Es, Et, Lt, np.random.default_rng(seed))
    der = {"from": source, "coherence_eps": eps, "seed": seed, "layer_pop_src": pop_src,
           "layer_trans_src": trans_src, "parent": parent.tolist(), "channel": channel.tolist()}
    tasks = {name: _derive_task(name, st, der, Lt, Et, Kt, seed, calib_tokens, tol, max_evals)
             for name, st in src["tasks"].items()}
    note = (f"DERIVED, not fitted: no real routing trace of {model.name}; mapped from the parameters "
            f"fitted to {source} ({src['num_layers']} layers, {Es} experts, top-{src['top_k']} -> "
            f"{Lt}, {Et}, top-{Kt}) by traces/synth_derive.py, keeping its cross-layer predict precision "
            f"and popularity Gini")
    return {"schema": SCHEMA, "version": VERSION, "model": model.name, "num_layers": Lt, "num_experts": Et,
            "top_k": Kt, "layer_ids": list(range(Lt)), "phase": src.get("phase", "decode"),
            "source": {"derived": True, "note": note, "derived_from": source,
                       "source_trace": src["source"].get("trace", ""), "model": model.name,
                       "derived_on": _dt.date.today().isoformat(), "command": command, "seed": seed,
                       "calib_tokens": calib_tokens},
            "derivation": der, "tasks": tasks}
