"""``moesim predictor train|eval``: Hydra apps (configs conf/predictor_train.yaml, _eval.yaml).

    moesim predictor train trace.path=FILE [predictor=tiny] [workload.max_requests=N] ['split=[0.8,0.1,0.1]']
        -> RUN_DIR/checkpoint/ (safetensors + config.json), RUN_DIR/metrics.json (training record)
    moesim predictor eval checkpoint=DIR trace.path=FILE [split=test|val|train|all]
        -> RUN_DIR/metrics.json, staleness.csv, staleness.png, sensitivity.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import ConfigError, TraceFormatError
from sim.schemas import PredictorEvalConfig, PredictorTrainConfig

USAGE = ("usage: moesim predictor {train,eval} [key=value ...]\n"
         "  train trace.path=FILE                      train; checkpoint into the run directory\n"
         "  eval  checkpoint=DIR trace.path=FILE       metrics.json, staleness curve and plot")


def main(argv: list[str]) -> int:
    from sim.hydra_app import run_subcommand

    return run_subcommand(argv, "predictor", {"train": ("predictor_train", train_task),
                                              "eval": ("predictor_eval", eval_task)}, USAGE)


# ------------------------------------------------------------------------------------------------
def _plain(cfg: Any, schema: type) -> dict[str, Any]:
    """The config checked against its schema (sim/schemas.py), as plain dicts and lists."""
    import dataclasses

    from sim.schemas import app_config

    return dataclasses.asdict(app_config(cfg, schema))


def _load_trace(path: Any, max_requests: int = 0):
    from sim.files import require_file
    from sim.schemas import limit_requests
    from traces.format import read_trace

    if max_requests < 0:
        raise ConfigError(f"workload.max_requests={max_requests}; expected N >= 1 (or 0: all)")
    tr = read_trace(require_file(path, "trace.path"))
    if tr.tokens["text"].isna().all():
        raise TraceFormatError(f"{path}: the trace keeps no token text; the per-token predictor "
                               f"needs it (import a trace that records token pieces)")
    return limit_requests(tr, int(max_requests))


def _setup_torch(threads: int, seed: int) -> None:
    import torch

    torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _write_json(obj: Any, path: Path) -> None:
    from sim.files import atomic_write_bytes

    atomic_write_bytes(json.dumps(obj, indent=1).encode(), path)


# ------------------------------------------------------------------------------------------------
def train_task(cfg: Any) -> None:
    from sim.hydra_app import run_dir
    from sim.predictor import checkpoint
    from sim.predictor.data import Vocab, prompt_frequencies, request_rows, split_prompts
    from sim.predictor.metrics import popularity, transition_counts
    from sim.predictor.prompt import train_prompt
    from sim.predictor.token import train_token

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
    _setup_torch(c["threads"], seed)
    out = Path(run_dir())
    trace = _load_trace(c["trace"]["path"], c["workload"]["max_requests"])
    parts = split_prompts(trace, tuple(c["split"]), seed, require=("train", "val"))
    b = trace.request_bounds()
    text = trace.tokens["text"].to_numpy()
    tp = p["token"]
    vocab = Vocab.build(text[request_rows(b, parts["train"])], int(tp["min_count"]), int(tp["num_hash"]))
    L, E, K = trace.num_layers, trace.num_experts, trace.top_k
    token_model_cfg = {
        "mode": tp["mode"], "d_model": tp["d_model"], "layers": tp["layers"], "heads": tp["heads"],
        "d_ff": tp["d_ff"], "dropout": tp["dropout"], "prev_rank": tp["prev_rank"],
        "num_layers": L, "num_experts": E, "vocab_size": len(vocab), "num_hash": vocab.num_hash,
        "num_pos_buckets": tp["num_pos_buckets"], "lookup_prior": bool(tp["lookup_prior"]),
        "prior_alpha": float(tp["prior_alpha"]),
        # token_layers: the transformer over the layer axis
        "layer_d_model": tp.get("layer_d_model", tp["d_model"]),
        "layer_layers": tp.get("layer_layers", 2), "layer_heads": tp.get("layer_heads", 4),
        "layer_d_ff": tp.get("layer_d_ff", 4 * int(tp["d_model"])),
        "prev_token": tp.get("prev_token", "lower")}
    token_train_cfg = {"model": token_model_cfg, "window": p["window"],
                       "batch_tokens": p["batch_tokens"], "epochs": tp["epochs"], "lr": tp["lr"],
                       "weight_decay": tp["weight_decay"]}
    t0 = time.perf_counter()
    tok_model, tok_info = train_token(trace, vocab, parts["train"], parts["val"], token_train_cfg,
                                      seed)
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


# ------------------------------------------------------------------------------------------------
def eval_task(cfg: Any) -> None:
    from sim.hydra_app import run_dir
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
    metrics = evaluate(trace, c, out)
    _write_json(metrics, out / "metrics.json")
    t = metrics["token"]
    print(f"token F1 {t['predictor']['f1']:.4f} on {t['predictor']['n']} tokens of "
          f"{metrics['prompts']} {metrics['split']} prompts; baselines: "
          + ", ".join(f"{k} {v['f1']:.4f}" for k, v in t["baselines"].items()))
    print(f"metrics: {out / 'metrics.json'}")
