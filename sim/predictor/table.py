"""The per-token predictor's next-layer predictions over a whole routing trace, computed once.

:func:`next_layer_table` loads a checkpoint (:func:`sim.predictor.checkpoint.load`) and scores
every token of a trace with its per-token model (:func:`sim.predictor.token.encode` +
:func:`sim.predictor.token.predict_token`, batched): ``top[t, l]`` = the model's top-k experts
for token t at layer l. With a layer-causal checkpoint (mode ``token_layers``) the prediction
for layer l reads only what is known before layer l runs: the token's context and its true
experts (and its predecessor's) at layers < l. The ``learned_next`` prefetch policy reads
``top[:, l + 1]`` at layer l.

The table is cached beside the checkpoint, ``CHECKPOINT/next_layer_tables/<key>.npz``, keyed by
a hash of the checkpoint's weights and config and of the trace's routing and token text; a
second call loads it (no torch). ``s_per_token`` is the measured wall time of the batched
scoring divided by the tokens scored (this machine, the run that built the table), one forward
predicting all L layers of a token.

Shape legend: T tokens, L MoE layers, K top-k.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from traces.format import RoutingTrace

TABLE_DIR = "next_layer_tables"


@dataclass
class NextLayerTable:
    top: np.ndarray  # (T, L, K) int16 predicted experts per token and layer, best first
    s_per_token: float  # wall seconds of batched scoring per token (all L layers)
    mode: str  # the checkpoint's per-token mode
    key: str  # cache key
    path: Path  # the cache file


def _digest(checkpoint_dir: Path, trace: RoutingTrace) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "token.safetensors"):
        h.update((checkpoint_dir / name).read_bytes())
    h.update(np.ascontiguousarray(trace.experts, dtype=np.int16).tobytes())
    h.update(json.dumps(trace.tokens["text"].astype(str).tolist()).encode())
    h.update(trace.tokens["request_id"].astype(str).str.cat(sep="\x00").encode())
    return h.hexdigest()[:24]


def next_layer_table(checkpoint_dir: str | Path, trace: RoutingTrace, cache: bool = True,
                     threads: int = 2) -> NextLayerTable:
    """The checkpoint's predicted top-k per (token, layer) of ``trace`` (see the module doc)."""
    from sim.predictor import checkpoint

    d = Path(checkpoint_dir)
    ck = checkpoint.load_config(d)  # one-line error for a folder that is not a checkpoint
    if not (d / "token.safetensors").exists():
        raise ConfigError(f"{d}: checkpoint lacks token.safetensors")
    tm = ck.get("trace", {})
    L, E, K = trace.num_layers, trace.num_experts, trace.top_k
    if (tm.get("num_layers"), tm.get("num_experts")) != (L, E):
        raise ConfigError(f"{d}: predictor trained for {tm.get('num_layers')} layers x "
                          f"{tm.get('num_experts')} experts; the trace has {L} x {E}")
    mode = str(ck["token_model"].get("mode", "token"))
    key = _digest(d, trace)
    path = d / TABLE_DIR / f"{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as z:
                top = z["top"]
                s_tok = float(z["s_per_token"])
            if top.shape == (trace.num_tokens, L, K):
                return NextLayerTable(top, s_tok, mode, key, path)
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache file is rebuilt
    top, s_tok = _score(d, trace, ck, threads)
    if cache:
        from sim.common.files import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, top=top, s_per_token=np.float64(s_tok))
        atomic_write_bytes(buf.getvalue(), path)
    return NextLayerTable(top, s_tok, mode, key, path)


def _score(d: Path, trace: RoutingTrace, ck: dict[str, Any], threads: int) -> tuple[np.ndarray, float]:
    import torch

    from sim.predictor import checkpoint
    from sim.predictor.data import Vocab
    from sim.predictor.token import encode, predict_token

    torch.set_num_threads(max(1, int(threads)))
    tok_model, _, _, ck = checkpoint.load(d)
    vocab = Vocab.from_json_obj(ck["vocab"])
    enc = encode(trace, vocab, int(ck["token_model"]["num_pos_buckets"]))
    req = np.arange(len(trace.request_bounds()) - 1, dtype=np.int64)
    run_cfg = {"window": ck["window"], "batch_tokens": ck["batch_tokens"]}
    t0 = time.perf_counter()
    top, _ = predict_token(tok_model, enc, req, trace.top_k, run_cfg)  # (T, L, K) request order
    s_tok = (time.perf_counter() - t0) / max(trace.num_tokens, 1)
    return top.astype(np.int16), s_tok


def measured_accuracy(top: np.ndarray, experts: np.ndarray, num_experts: int,
                      layers: slice = slice(1, None)) -> dict[str, float]:
    """Micro recall and precision of predicted sets ``top`` (T, L, k) against the true experts
    (T, L, K), over the layers a next-layer prefetcher predicts (1..L-1 by default), ratio of
    sums: recall = hits / true, precision = hits / predicted."""
    p = np.asarray(top)[:, layers].astype(np.int64)
    t = np.asarray(experts)[:, layers].astype(np.int64)
    T, L2 = p.shape[:2]
    hot = np.zeros((T, L2, num_experts), dtype=bool)
    np.put_along_axis(hot, t, True, axis=-1)
    hits = int(np.take_along_axis(hot, p, axis=-1).sum())
    return {"recall": hits / max(t.size, 1), "precision": hits / max(p.size, 1)}


@dataclass
class NextLayerProbs:
    prob: np.ndarray  # (T, L, E) float16 P(expert e serves token t at layer l), layer-causal
    s_per_token: float  # wall seconds of batched scoring per token (all L layers)
    key: str
    path: Path


def next_layer_probs(checkpoint_dir: str | Path, trace: RoutingTrace, cache: bool = True,
                     threads: int = 2, lead: int = 1) -> NextLayerProbs:
    """P(expert e is in token t's top-k at layer l) for every token of ``trace``, from what is
    known ``lead`` layers before, when the tokens are served one after another (the simulator's
    one token per iteration): the token's context, its true experts at layers <= l - lead and
    its predecessor's (all layers). A ``phased`` checkpoint answers with its decode head
    (``token_layers``: the predecessor has finished); its prefill head reads the next token's and
    the whole prompt's routing, not known then, so a ``prefill_layers`` checkpoint is refused.
    The model is trained against the uniform distribution on the true top-k set
    (:func:`sim.predictor.token.set_loss`), so K x softmax estimates the probability (clipped at
    1). For ``lead`` d > 1 the layers l-d+1 .. l-1 the model reads are its own top-k predictions
    at their leads (one forward per layer l; every token's layers are replaced, its
    predecessor's included, which only hides information). Cached beside the checkpoint."""
    from sim.predictor import checkpoint

    d = Path(checkpoint_dir)
    ck = checkpoint.load_config(d)
    if not (d / "token.safetensors").exists():
        raise ConfigError(f"{d}: checkpoint lacks token.safetensors")
    mode = str(ck["token_model"].get("mode", "token"))
    if mode == "prefill_layers":
        raise ConfigError(f"{d}: a prefill_layers predictor reads later tokens' routing; one "
                          f"token per iteration needs a layer-causal one (the default, or "
                          f"predictor=layers)")
    if mode not in ("phased", "token_layers") and lead > 1:
        raise ConfigError(f"{d}: lead {lead} needs a layer-causal predictor (mode {mode})")
    L, E = trace.num_layers, trace.num_experts
    tm = ck.get("trace", {})
    if (tm.get("num_layers"), tm.get("num_experts")) != (L, E):
        raise ConfigError(f"{d}: predictor trained for {tm.get('num_layers')} layers x "
                          f"{tm.get('num_experts')} experts; the trace has {L} x {E}")
    key = "p" + _digest(d, trace) + ("" if lead == 1 else f"_d{lead}")
    path = d / TABLE_DIR / f"{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as z:
                prob, s_tok = z["prob"], float(z["s_per_token"])
            if prob.shape == (trace.num_tokens, L, E):
                return NextLayerProbs(prob, s_tok, key, path)
        except (OSError, ValueError, KeyError):
            pass
    lower = [next_layer_probs(d, trace, cache, threads, k).prob for k in range(1, lead)]
    prob, s_tok = _score_probs(d, trace, threads, lower)
    if cache:
        from sim.common.files import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, prob=prob, s_per_token=np.float64(s_tok))
        atomic_write_bytes(buf.getvalue(), path)
    return NextLayerProbs(prob, s_tok, key, path)


def _score_probs(d: Path, trace: RoutingTrace, threads: int,
                 lower: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Probabilities at lead ``len(lower) + 1``; ``lower[k-1]`` (T, L, E) those at lead k."""
    import dataclasses

    import torch

    from sim.predictor import checkpoint
    from sim.predictor.data import Vocab
    from sim.predictor.model import PhasedPredictor
    from sim.predictor.token import _predict_one, encode

    torch.set_num_threads(max(1, int(threads)))
    tok_model, _, _, ck = checkpoint.load(d)
    if isinstance(tok_model, PhasedPredictor):
        tok_model = tok_model.head("decode")
    vocab = Vocab.from_json_obj(ck["vocab"])
    enc = encode(trace, vocab, int(ck["token_model"]["num_pos_buckets"]))
    req = np.arange(len(trace.request_bounds()) - 1, dtype=np.int64)
    run_cfg = {"window": ck["window"], "batch_tokens": ck["batch_tokens"]}
    K = trace.top_k
    t0 = time.perf_counter()
    if not lower:
        _, sm = _predict_one(tok_model, enc, req, K, run_cfg, prob_sums=True, per_token=True)
    else:
        lead = len(lower) + 1
        tops = [np.argsort(-p.astype(np.float32), axis=-1, kind="stable")[..., :K] for p in lower]
        sm = np.zeros((trace.num_tokens, trace.num_layers, trace.num_experts), dtype=np.float32)
        for m in range(lead - 1, trace.num_layers):  # layers < lead - 1: nothing known before
            ex = enc.experts.copy()
            for j in range(m - lead + 1, m):  # predicted at lead j - (m - lead)
                ex[:, j] = tops[j - (m - lead) - 1][:, j]
            _, sub = _predict_one(tok_model, dataclasses.replace(enc, experts=ex), req, K,
                                  run_cfg, prob_sums=True, per_token=True)
            sm[:, m] = sub[:, m]
    s_tok = (time.perf_counter() - t0) / max(trace.num_tokens, 1)
    prob = np.minimum(trace.top_k * np.asarray(sm, dtype=np.float32), 1.0)
    return prob.astype(np.float16), s_tok


def calibration(prob: np.ndarray, experts: np.ndarray, bins: int = 10,
                layers: slice = slice(1, None)) -> list[dict[str, float]]:
    """Reliability of probabilities ``prob`` (T, L, E) against the true experts (T, L, K): per
    bin of predicted probability [i/bins, (i+1)/bins), the mean prediction, the share that were
    true and the count (bins with none are left out)."""
    p = np.asarray(prob, dtype=np.float32)[:, layers]
    t = np.asarray(experts)[:, layers].astype(np.int64)
    hot = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(hot, t, True, axis=-1)
    b = np.minimum((p * bins).astype(np.int64), bins - 1).ravel()
    n = np.bincount(b, minlength=bins)
    sp = np.bincount(b, weights=p.ravel(), minlength=bins)
    st = np.bincount(b, weights=hot.ravel(), minlength=bins)
    return [{"lo": i / bins, "mean_p": float(sp[i] / n[i]), "true": float(st[i] / n[i]),
             "n": int(n[i])} for i in range(bins) if n[i]]
