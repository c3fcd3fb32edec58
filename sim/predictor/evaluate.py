"""``moesim predictor eval``: the predictor and its baselines on held-out prompts.

Shape legend: T tokens, R prompts, L MoE layers, E experts, K top-k, M prompt set size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.common.files import atomic_write_bytes
from sim.predictor.data import Vocab, multi_hot, prompt_frequencies, request_rows, top_m
from sim.predictor.metrics import (
    predict_popular,
    predict_previous_prompt,
    predict_transition,
    set_metrics,
)
from traces.format import RoutingTrace


def _select(trace: RoutingTrace, ck: dict[str, Any], split: str, where: str) -> np.ndarray:
    rid = trace.request_ids()
    if split == "all":
        return np.arange(len(rid), dtype=np.int64)
    if split not in ck["split"]:
        raise ConfigError(f"split={split!r}; expected one of train, val, test, all")
    index = {r: i for i, r in enumerate(rid)}
    want = ck["split"][split]
    missing = [r for r in want if r not in index]
    if missing:
        raise ConfigError(f"{where}: {len(missing)} of the checkpoint's {split} prompts (e.g. "
                          f"{missing[:3]}) are not in this trace; use split=all for a trace the "
                          f"predictor never saw")
    return np.array(sorted(index[r] for r in want), dtype=np.int64)


def evaluate(trace: RoutingTrace, c: dict[str, Any], out: Path,
             hidden: np.ndarray | None = None) -> dict[str, Any]:
    """The checkpoint ``c['checkpoint']`` on ``trace``'s ``c['split']`` prompts; ``hidden``
    (T, L, H): the trace's router input hidden states, required by a model trained on them."""
    import torch

    from sim.predictor import checkpoint
    from sim.predictor.model import num_parameters
    from sim.predictor.prompt import predict_stream, stale_stream
    from sim.predictor.sensitivity import task_sensitivity
    from sim.predictor.token import encode, predict_token

    tok_model, pr_model, base, ck = checkpoint.load(c["checkpoint"])
    L, E, K = trace.num_layers, trace.num_experts, trace.top_k
    tm = ck["trace"]
    if (L, E, K) != (tm["num_layers"], tm["num_experts"], tm["top_k"]):
        raise ConfigError(f"{c['trace']['path']}: trace has L={L}, E={E}, top-{K}; the checkpoint "
                          f"was trained on L={tm['num_layers']}, E={tm['num_experts']}, "
                          f"top-{tm['top_k']}")
    split = str(c["split"])
    req = _select(trace, ck, split, str(c["trace"]["path"]))
    if len(req) == 0:
        raise ConfigError(f"split={split!r} holds no prompts")
    b = trace.request_bounds()
    rows = request_rows(b, req)
    true = trace.experts[rows].astype(np.int64)  # (T, L, K)
    vocab = Vocab.from_json_obj(ck["vocab"])
    need_h = int(ck["token_model"].get("hidden_size", 0) or 0)
    if need_h and hidden is None:
        from traces.capture import hidden_path

        raise ConfigError(f"{c['trace']['path']}: the checkpoint's predictor takes the router's "
                          f"hidden states (H={need_h}) and {hidden_path(Path(str(c['trace']['path'])))}"
                          f" is missing; evaluate on a trace captured with --hidden-states")
    if need_h and hidden.shape[-1] != need_h:
        raise ConfigError(f"{c['trace']['path']}: hidden states have H={hidden.shape[-1]}; the "
                          f"checkpoint was trained on H={need_h}")
    enc = encode(trace, vocab, int(ck["token_model"]["num_pos_buckets"]),
                 hidden if need_h else None)
    run_cfg = {"window": ck["window"], "batch_tokens": ck["batch_tokens"]}

    # ---- per token -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    try:
        pred_tok, _ = predict_token(tok_model, enc, req, K, run_cfg)
    except ValueError as exc:  # a phased checkpoint without the head a token's phase needs
        raise ConfigError(f"{c['checkpoint']}: {exc}; {c['trace']['path']} holds such tokens") from None
    tok_s = time.perf_counter() - t0
    pop = base["popularity"]  # (L, E)
    freq = prompt_frequencies(trace, req)  # (R, L, E)
    lens = np.diff(b)[req]
    prev_prompt = predict_previous_prompt(freq, pop, K)  # (R, L, K)
    tok_baselines = {
        "popular": predict_popular(pop, len(rows), K),
        "previous_prompt": np.repeat(prev_prompt, lens, axis=0),
        "transition": predict_transition(base["transition"], pop,
                                         multi_hot(true, E).astype(np.float64), K),
    }
    token = {"inputs": _inputs(ck["token_model"]),
             "predictor": set_metrics(pred_tok, true, E),
             "baselines": {k: set_metrics(v, true, E) for k, v in tok_baselines.items()},
             "baseline_inputs": {
                 "popular": "training activation counts per layer",
                 "previous_prompt": "the previous prompt of the stream: its K most used experts "
                                    "per layer (popularity for the first)",
                 "transition": "first-order cross-layer counts applied to the token's true "
                               "experts at layer l-1 (eMoE-L information; layer 0: popularity)"}}
    lookup_pred = None
    if getattr(tok_model, "lookup", False):
        table = tok_model.prior_table.float().numpy()  # (V, L, E)
        lookup_pred = top_m(table[enc.tok[rows]], K)
        token["references"] = {"piece_lookup": set_metrics(lookup_pred, true, E)}
        token["reference_inputs"] = {"piece_lookup": "the token piece alone: its experts in the "
                                                     "training prompts (smoothed), no context"}
    token["beats_all_baselines"] = bool(all(token["predictor"]["f1"] > v["f1"]
                                            for v in token["baselines"].values()))
    phase_base = dict(tok_baselines)
    if lookup_pred is not None:
        phase_base["piece_lookup"] = lookup_pred
    token["phases"] = _phases(pred_tok, true, E, phase_base,
                              trace.tokens["phase"].to_numpy().astype(str)[rows])
    if ck["token_model"].get("mode") == "phased":
        token["heads_trained_on"] = ck["token_model"]["trained_on"]

    # ---- per prompt (eMoE-A) -------------------------------------------------------------------
    M = int(c.get("prompt_set_size") or ck["prompt_set_size"])
    true_sets = top_m(freq, M)  # (R, L, M)
    H = int(ck["prompt_model"]["history"])
    t0 = time.perf_counter()
    sc1 = predict_stream(pr_model, freq, H, period=1)
    pr_s = (time.perf_counter() - t0) / max(len(req), 1)
    prev_freq = np.concatenate([pop[None] / pop.sum(-1, keepdims=True), freq[:-1]])  # (R, L, E)
    prompt_base_scores = {
        "popular": np.broadcast_to(pop[None], freq.shape),
        "previous_prompt": prev_freq + 1e-6 * pop[None] / pop.sum(),
    }
    prompt = {
        "set_size": M,
        "inputs": "the per-layer expert frequencies of the previous prompts of the stream "
                  f"(last {H}); nothing of the predicted prompt",
        "predictor": set_metrics(top_m(sc1, M), true_sets, E, weights=freq),
        "baselines": {k: set_metrics(top_m(v, M), true_sets, E, weights=freq)
                      for k, v in prompt_base_scores.items()},
    }
    prompt["baselines"]["transition"] = set_metrics(
        predict_transition(base["transition"], pop, freq, M), true_sets, E, weights=freq)
    prompt["baseline_inputs"] = {
        "transition": "cross-layer counts applied to this prompt's observed layer l-1 "
                      "frequencies (eMoE-L information, not available before the prompt runs)"}
    prompt["beats_all_baselines"] = bool(all(prompt["predictor"]["f1"] > v["f1"]
                                             for v in prompt["baselines"].values()))

    # ---- staleness ---------------------------------------------------------------------------
    periods = [int(p) for p in c["staleness_periods"]]
    curve = []
    for p in periods:
        sp = predict_stream(pr_model, freq, H, period=p)
        pb = stale_stream(prompt_base_scores["previous_prompt"], p)
        m_p = set_metrics(top_m(sp, M), true_sets, E, weights=freq)
        m_b = set_metrics(top_m(pb, M), true_sets, E, weights=freq)
        curve.append({"period": p, "f1": m_p["f1"], "coverage": m_p["coverage"],
                      "previous_prompt_f1": m_b["f1"],
                      "popular_f1": prompt["baselines"]["popular"]["f1"]})
    _write_staleness(curve, out)

    # ---- sensitivity ----------------------------------------------------------------------------
    sens = task_sensitivity(trace, float(c["sensitivity_threshold"]))
    atomic_write_bytes(__import__("json").dumps(sens, indent=1).encode(), out / "sensitivity.json")

    # ---- size and time --------------------------------------------------------------------------
    n_tok, n_pr = num_parameters(tok_model), num_parameters(pr_model)
    mm = c["moe_model"]
    moe_bytes = float(mm["params"]) * float(mm["bytes_per_param"])
    one = req[int(np.argsort(lens)[len(lens) // 2])]  # a median-length prompt
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        predict_token(tok_model, enc, np.array([one]), K, run_cfg)
    per_prompt_call_s = (time.perf_counter() - t0) / reps
    return {
        "checkpoint": str(c["checkpoint"]), "trace": str(c["trace"]["path"]),
        "split": split, "prompts": int(len(req)), "tokens": int(len(rows)),
        "f1": token["predictor"]["f1"], "precision": token["predictor"]["precision"],
        "recall": token["predictor"]["recall"],
        "baselines_f1": {k: v["f1"] for k, v in token["baselines"].items()},
        "token": token, "prompt": prompt, "staleness": curve,
        "sensitivity_file": "sensitivity.json",
        "size": {"token_params": n_tok, "prompt_params": n_pr,
                 "bytes_fp32": 4 * (n_tok + n_pr), "moe_model": mm,
                 "share_of_moe_memory": 4 * (n_tok + n_pr) / moe_bytes},
        "time": {"token_s_per_token": tok_s / max(len(rows), 1),
                 "token_s_per_prompt_call": per_prompt_call_s,
                 "token_call_prompt_tokens": int(lens[list(req).index(one)]),
                 "prompt_s_per_call": pr_s, "threads": int(torch.get_num_threads())},
    }


def _phases(pred: np.ndarray, true: np.ndarray, E: int, baselines: dict[str, np.ndarray],
            phase: np.ndarray) -> dict[str, Any]:
    """Per phase present (and ``overall``): the predictor's and every baseline's ``f1``
    (overlap / k) and ``f1_macro`` (macro binary F1), ``n`` tokens, and whether the predictor beats
    every baseline. pred / baselines (T, L, k), true (T, L, K), phase (T,) str."""
    out: dict[str, Any] = {}
    for name, sel in [("overall", np.ones(len(phase), dtype=bool)),
                      ("prefill", phase == "prefill"), ("decode", phase == "decode")]:
        if not sel.any():
            continue
        def m(p: np.ndarray, s: np.ndarray = sel) -> dict[str, float]:
            r = set_metrics(p[s], true[s], E)
            return {"f1": r["f1"], "f1_macro": r["f1_macro_binary"]}
        base = {k: m(v) for k, v in baselines.items()}
        pr = m(pred)
        out[name] = {"n": int(sel.sum()), "predictor": pr, "baselines": base,
                     "beats_all_baselines": bool(all(pr["f1"] > v["f1"] for v in base.values()))}
    return out


def _inputs(model_cfg: dict[str, Any]) -> str:
    mode = str(model_cfg["mode"])
    if mode == "phased":
        return ("per phase (each token answered by the head of its phase): PREFILL tokens: "
                + (_inputs(model_cfg["prefill"]) if model_cfg.get("prefill") else "no head")
                + " || DECODE tokens: "
                + (_inputs(model_cfg["decode"]) if model_cfg.get("decode") else "no head"))
    ctx = ("token pieces of this and the earlier tokens of the same prompt (causal, up to the "
           "window) and their positions")
    prior = ("; the smoothed training-set expert frequencies of this token's piece"
             if model_cfg.get("lookup_prior") else "")
    if mode == "token":
        return ctx + prior + "; no experts of any token"
    if mode == "prefill_layers":
        prev = {"none": "", "lower": "; the previous token's true experts at layers 0..l-1"}[
            str(model_cfg.get("prev_token", "lower"))]
        return ("PREFILL ONLY (a decode token has no later tokens): token pieces of the whole "
                "prompt window, earlier AND later tokens of the same prompt (bidirectional, up to "
                "the window), and their positions" + prior + "; when predicting layer l: this "
                "token's true experts at layers 0..l-1" + prev + "; the next token's true experts "
                "at layer l-1 (layer-transformer input) and 0..l-2 (through its causal mask); the "
                "prompt's mean multi-hot of ALL its tokens' true experts at layers 0..l-1 (all "
                "prompt tokens pass layers < l before layer l routes at prefill); nothing of "
                "layers >= l of any token")
    if mode == "token_layers":
        pt = str(model_cfg.get("prev_token", "lower"))
        prev = {"none": "; no experts of any other token",
                "lower": "; the previous token's true experts at layers 0..l-1 (prefill-safe: "
                         "all prompt tokens have passed layers < l before layer l routes)",
                "same": "; the previous token's true experts at layers 0..l (decode only: the "
                        "previous token ran all layers before this one; NOT available at "
                        "prefill)"}[pt]
        return (ctx + prior + "; this token's true experts at all layers 0..l-1 when predicting "
                "layer l (known once those layers have routed)" + prev +
                "; nothing of layers >= l of this token, nothing of later tokens")
    return (ctx + prior + "; this token's true experts at layer l-1 when predicting layer l "
            "(eMoE-L: known once layer l-1 has routed)")


def _write_staleness(curve: list[dict[str, Any]], out: Path) -> None:
    """staleness.csv (the plot, staleness.png, is :func:`analysis.predictor_plots.plot_staleness`)."""
    lines = ["period,f1,coverage,previous_prompt_f1,popular_f1"]
    lines += [f"{r['period']},{r['f1']:.6f},{r['coverage']:.6f},{r['previous_prompt_f1']:.6f},"
              f"{r['popular_f1']:.6f}" for r in curve]
    atomic_write_bytes(("\n".join(lines) + "\n").encode(), out / "staleness.csv")
