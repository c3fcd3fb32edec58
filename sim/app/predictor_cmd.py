"""``moesim predictor train|eval``: Hydra apps (configs conf/predictor_train.yaml, _eval.yaml).

    moesim predictor train trace.path=FILE [predictor=tiny] [workload.max_requests=N] ['split=[0.8,0.1,0.1]']
        -> RUN_DIR/checkpoint/ (safetensors + config.json), RUN_DIR/metrics.json (training record)
    moesim predictor eval checkpoint=DIR trace.path=FILE [split=test|val|train|all]
        -> RUN_DIR/metrics.json, staleness.csv, staleness.png, sensitivity.json

The default (``predictor.token.mode=phased``) trains one checkpoint for both phases: a prefill
head (prefill_layers) and a decode head (token_layers, the previous token's layer l too), plus the
per-prompt eMoE-A model; each token is answered by its phase's head. A phase with no token in the
training trace: ``predictor.absent_phase=other`` (default) trains its head on the other phase's
tokens, ``refuse`` leaves it out. A capture's ``.hidden.safetensors`` beside the trace and the
trace's gate weights are inputs when present. ``eval`` reports overall and per phase.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.app.schemas.predictor import PredictorEvalConfig, PredictorTrainConfig
from sim.common.errors import ConfigError, TraceFormatError
from sim.common.jsonout import strict_json

USAGE = ("usage: moesim predictor {train,eval} [key=value ...]\n"
         "  train trace.path=FILE                      train; checkpoint into the run directory\n"
         "  eval  checkpoint=DIR trace.path=FILE       metrics.json, staleness curve and plot")


def main(argv: list[str]) -> int:
    from sim.app.hydra_app import run_subcommand

    return run_subcommand(argv, "predictor", {"train": ("predictor_train", train_task),
                                              "eval": ("predictor_eval", eval_task)}, USAGE)


# ------------------------------------------------------------------------------------------------
def _plain(cfg: Any, schema: type) -> dict[str, Any]:
    """The config checked against its schema (sim/app/schemas.py), as plain dicts and lists."""
    import dataclasses

    from sim.app.schemas.common import app_config

    return dataclasses.asdict(app_config(cfg, schema))


def _load_trace(path: Any, max_requests: int = 0):
    from sim.app.schemas.common import limit_requests
    from sim.common.files import require_file
    from traces.format import read_trace

    if max_requests < 0:
        raise ConfigError(f"workload.max_requests={max_requests}; expected N >= 1 (or 0: all)")
    tr = read_trace(require_file(path, "trace.path"))
    if tr.tokens["text"].isna().all():
        raise TraceFormatError(f"{path}: the trace keeps no token text; the per-token predictor "
                               f"needs it (import a trace that records token pieces)")
    return limit_requests(tr, int(max_requests))


def load_hidden(path: Any, trace: Any) -> np.ndarray | None:
    """The router input hidden states (T, L, H) float16 a capture wrote beside ``path``
    (traces/capture.py ``hidden_path``), cut to ``trace``'s rows (a prefix of the file's when
    workload.max_requests cut it); None when there is no such file."""
    from traces.capture import hidden_path

    hp = hidden_path(Path(str(path)))
    if not hp.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(hp), framework="numpy") as f:
            h = f.get_slice("hidden_states")
            shape = h.get_shape()
            if len(shape) != 3 or shape[1] != trace.num_layers or shape[0] < trace.num_tokens:
                raise TraceFormatError(f"{hp}: hidden_states has shape {list(shape)}; expected "
                                       f"(>= {trace.num_tokens}, {trace.num_layers}, H) for "
                                       f"{path}")
            return np.asarray(h[:trace.num_tokens], dtype=np.float16)
    except (OSError, ValueError, KeyError) as exc:
        raise TraceFormatError(f"{hp}: not a hidden-states file ({exc})") from None


def _setup_torch(threads: int, seed: int) -> None:
    import torch

    torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _write_json(obj: Any, path: Path) -> None:
    from sim.common.files import atomic_write_bytes

    atomic_write_bytes(strict_json(obj, indent=1).encode(), path)


# ------------------------------------------------------------------------------------------------
def train_task(cfg: Any) -> None:
    from sim.app.hydra_app import run_dir
    from sim.predictor import checkpoint
    from sim.predictor.data import Vocab, prompt_frequencies, request_rows, split_prompts
    from sim.predictor.metrics import popularity, transition_counts
    from sim.predictor.prompt import train_prompt
    from sim.predictor.token import encode, train_token

    c = _plain(cfg, PredictorTrainConfig)
    p = c["predictor"]
    seed = int(c["seed"])
    for part in ("token", "prompt"):
        for key in ("epochs", "d_model", "layers", "heads"):
            if int(p[part][key]) < 1:
                raise ConfigError(f"predictor.{part}.{key}={p[part][key]}; expected an integer >= 1")
        if not float(p[part]["lr"]) > 0:
            raise ConfigError(f"predictor.{part}.lr={p[part]['lr']}; expected > 0")
    if int(c["threads"]) < 1:
        raise ConfigError(f"threads={c['threads']}; expected an integer >= 1")
    if p["absent_phase"] not in ("other", "refuse"):
        raise ConfigError(f"predictor.absent_phase={p['absent_phase']}; expected other or refuse")
    modes = ("phased", "token", "token_prev", "token_layers", "prefill_layers")
    if p["token"]["mode"] not in modes:
        raise ConfigError(f"predictor.token.mode={p['token']['mode']}; expected one of "
                          f"{', '.join(modes)}")
    for key in ("prev_token", "decode_prev_token"):
        if p["token"][key] not in ("lower", "same", "none"):
            raise ConfigError(f"predictor.token.{key}={p['token'][key]}; expected lower, same or "
                              f"none")
    _setup_torch(c["threads"], seed)
    out = Path(run_dir())
    trace = _load_trace(c["trace"]["path"], c["workload"]["max_requests"])
    parts = split_prompts(trace, tuple(c["split"]), seed, require=("train", "val"))
    b = trace.request_bounds()
    text = trace.tokens["text"].to_numpy()
    tp = p["token"]
    vocab = Vocab.build(text[request_rows(b, parts["train"])], int(tp["min_count"]), int(tp["num_hash"]))
    L, E, K = trace.num_layers, trace.num_experts, trace.top_k
    mode = str(tp["mode"])
    hidden = load_hidden(c["trace"]["path"], trace) if tp["hidden_states"] else None
    token_model_cfg = {
        "mode": mode, "d_model": tp["d_model"], "layers": tp["layers"], "heads": tp["heads"],
        "d_ff": tp["d_ff"], "dropout": tp["dropout"], "prev_rank": tp["prev_rank"],
        "num_layers": L, "num_experts": E, "vocab_size": len(vocab), "num_hash": vocab.num_hash,
        "num_pos_buckets": tp["num_pos_buckets"], "lookup_prior": bool(tp["lookup_prior"]),
        "prior_alpha": float(tp["prior_alpha"]),
        # token_layers: the transformer over the layer axis
        "layer_d_model": tp.get("layer_d_model", tp["d_model"]),
        "layer_layers": tp.get("layer_layers", 2), "layer_heads": tp.get("layer_heads", 4),
        "layer_d_ff": tp.get("layer_d_ff", 4 * int(tp["d_model"])),
        "prev_token": tp.get("prev_token", "lower"),
        # layer modes: the router's input hidden states / gate weights when the trace has them
        "hidden_size": int(hidden.shape[-1]) if hidden is not None else 0,
        "gate_weights": bool(tp["gate_weights"] and trace.weights is not None)}
    if mode == "phased" and tp["prev_token"] == "same":
        raise ConfigError("predictor.token.prev_token=same is decode-only; with mode phased it sets "
                          "the prefill head (use lower or none; the decode head takes "
                          "predictor.token.decode_prev_token)")
    train_cfg = {"window": p["window"], "batch_tokens": p["batch_tokens"], "epochs": tp["epochs"],
                 "lr": tp["lr"], "weight_decay": tp["weight_decay"]}
    t0 = time.perf_counter()
    enc = encode(trace, vocab, int(tp["num_pos_buckets"]), hidden)
    if mode == "phased":
        tok_model, tok_info, token_model_cfg = _train_phased(
            trace, vocab, enc, parts, token_model_cfg, train_cfg, str(tp["decode_prev_token"]),
            str(p["absent_phase"]), seed)
    else:
        tok_model, tok_info = train_token(trace, vocab, parts["train"], parts["val"],
                                          {"model": token_model_cfg, **train_cfg}, seed, enc=enc)
    pp = p["prompt"]
    prompt_model_cfg = {"d_model": pp["d_model"], "layers": pp["layers"], "heads": pp["heads"],
                        "d_ff": pp["d_ff"], "dropout": pp["dropout"], "history": pp["history"],
                        "num_layers": L, "num_experts": E}
    freq = prompt_frequencies(trace)  # (R, L, E)
    pr_model, pr_info = train_prompt(
        freq[parts["train"]], freq[parts["val"]],
        {"model": prompt_model_cfg, "epochs": pp["epochs"], "batch": pp["batch"], "lr": pp["lr"],
         "weight_decay": pp["weight_decay"]}, seed)
    train_s = time.perf_counter() - t0
    rows = request_rows(b, parts["train"])
    baselines = {"popularity": popularity(trace.experts[rows], E),
                 "transition": transition_counts(trace.experts[rows], E)}
    rid = np.asarray(trace.request_ids())
    config = {
        "format": "moesim-predictor/1",
        "token_model": token_model_cfg, "prompt_model": prompt_model_cfg,
        "window": p["window"], "batch_tokens": p["batch_tokens"],
        "prompt_set_size": pp["set_size"],
        "vocab": json.loads(vocab.to_json()),
        "trace": {"path": str(c["trace"]["path"]), "model": trace.meta.model, "num_layers": L,
                  "num_experts": E, "top_k": K, "layer_ids": list(trace.meta.layer_ids)},
        "split": {k: rid[v].tolist() for k, v in parts.items()},
        "seed": seed, "train_s": train_s,
        "token_train": tok_info, "prompt_train": pr_info,
    }
    ck = checkpoint.save(out / "checkpoint", tok_model, pr_model, baselines, config)
    _write_json({"train_s": train_s, "token_best_val_f1": tok_info["best_val_f1"],
                 "prompts": {k: len(v) for k, v in parts.items()}, "checkpoint": str(ck)},
                out / "metrics.json")
    print(f"checkpoint: {ck}  (trained in {train_s:.1f} s; best val F1 {tok_info['best_val_f1']})")


def _train_phased(trace: Any, vocab: Any, enc: Any, parts: dict[str, np.ndarray],
                  base_cfg: dict[str, Any], train_cfg: dict[str, Any], decode_prev_token: str,
                  absent: str, seed: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The phased default: a prefill head (prefill_layers) trained on the training prompts'
    prefill tokens, and a decode head (token_layers, ``decode_prev_token``) trained on all their
    tokens (the layer-causal model is valid for any token). A phase absent from the training
    prompts: with ``absent == "other"`` the prefill head learns from the decode tokens (each
    request's generated tokens seen as one prompt), the decode head from the prefill tokens; with
    ``"refuse"`` that head is not trained and asking the checkpoint about a token of that phase is
    an error. The checkpoint records which. Each head's training is the same (seed, data, config)
    whether or not the other head is trained."""
    from sim.predictor.data import request_rows
    from sim.predictor.model import PhasedPredictor
    from sim.predictor.token import restrict, train_token

    rows = request_rows(enc.bounds, parts["train"])
    n_pre = int(enc.prefill[rows].sum())
    n_dec = len(rows) - n_pre
    pre_cfg = dict(base_cfg, mode="prefill_layers")
    dec_cfg = dict(base_cfg, mode="token_layers", prev_token=decode_prev_token)
    pre_enc = restrict(enc, enc.prefill if n_pre else ~enc.prefill)[0]
    trained_on = {
        "prefill": (f"{n_pre} prefill tokens" if n_pre else
                    f"{n_dec} decode tokens (the training trace has no prefill tokens; each "
                    f"request's generated tokens stand for its prompt)"),
        "decode": (f"{n_dec} decode and {n_pre} prefill tokens" if n_dec else
                   f"{n_pre} prefill tokens (the training trace has no decode tokens; the "
                   f"layer-causal model reads each token's earlier context only, as at decode)")}
    if absent == "refuse":
        for ph, n in (("prefill", n_pre), ("decode", n_dec)):
            if not n:
                trained_on[ph] = (f"not trained: the training trace had no {ph} tokens "
                                  f"(predictor.absent_phase=refuse)")
    pre_model = dec_model = None
    pre_info = dec_info = {"train_s": 0.0, "best_val_f1": None}
    if n_pre or absent == "other":
        print(f"prefill head (prefill_layers) on {trained_on['prefill']}")
        pre_model, pre_info = train_token(trace, vocab, parts["train"], parts["val"],
                                          {"model": pre_cfg, **train_cfg}, seed, enc=pre_enc)
    if n_dec or absent == "other":
        print(f"decode head (token_layers, prev_token={decode_prev_token}) on "
              f"{trained_on['decode']}")
        dec_model, dec_info = train_token(trace, vocab, parts["train"], parts["val"],
                                          {"model": dec_cfg, **train_cfg}, seed, enc=enc)
    shared = {k: base_cfg[k] for k in ("num_layers", "num_experts", "vocab_size", "num_hash",
                                       "num_pos_buckets", "lookup_prior", "hidden_size",
                                       "gate_weights")}
    cfg = {"mode": "phased", **shared, "prefill": pre_cfg if pre_model else None,
           "decode": dec_cfg if dec_model else None, "trained_on": trained_on}
    model = PhasedPredictor(cfg)
    for head, trained in ((model.prefill, pre_model), (model.decode, dec_model)):
        if trained is not None:
            head.load_state_dict(trained.state_dict())
    model.eval()
    info = {"prefill": pre_info, "decode": dec_info, "train_s": pre_info["train_s"] + dec_info["train_s"],
            "best_val_f1": {"prefill": pre_info["best_val_f1"], "decode": dec_info["best_val_f1"]}}
    return model, info, cfg


# ------------------------------------------------------------------------------------------------
def eval_task(cfg: Any) -> None:
    from sim.app.hydra_app import run_dir
    from sim.predictor.evaluate import evaluate

    c = _plain(cfg, PredictorEvalConfig)
    if int(c["threads"]) < 1:
        raise ConfigError(f"threads={c['threads']}; expected an integer >= 1")
    _setup_torch(c["threads"], 0)
    if not c["checkpoint"]:
        raise ConfigError("checkpoint is empty; give checkpoint=DIR (a run directory's checkpoint/ "
                          "folder)")
    out = Path(run_dir())
    trace = _load_trace(c["trace"]["path"], c["workload"]["max_requests"])
    metrics = evaluate(trace, c, out, hidden=load_hidden(c["trace"]["path"], trace))
    from analysis.predictor_plots import plot_staleness

    plot_staleness(metrics["staleness"], out / "staleness.png")
    _write_json(metrics, out / "metrics.json")
    t = metrics["token"]
    print(f"token F1 {t['predictor']['f1']:.4f} on {t['predictor']['n']} tokens of "
          f"{metrics['prompts']} {metrics['split']} prompts; baselines: "
          + ", ".join(f"{k} {v['f1']:.4f}" for k, v in t["baselines"].items()))
    for name, ph in t["phases"].items():
        print(f"  {name} ({ph['n']} tokens): f1 {ph['predictor']['f1']:.4f} f1_macro "
              f"{ph['predictor']['f1_macro']:.4f}; " + ", ".join(
                  f"{k} {v['f1']:.4f}/{v['f1_macro']:.4f}" for k, v in ph["baselines"].items()))
    print(f"metrics: {out / 'metrics.json'}")
