"""Training and inference of the per-token predictor (torch).

Shape legend: T tokens, L MoE layers, E experts, K top-k, B windows in a batch, W window length,
G n-gram slots.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sim.predictor.data import Vocab, position_bucket, request_rows, windows
from sim.predictor.model import LAYER_MODES, PhasedPredictor, TokenPredictor
from traces.format import RoutingTrace


@dataclass
class Encoded:
    """A trace's tokens as model inputs (numpy)."""

    tok: np.ndarray  # (T,) int64
    ngram: np.ndarray  # (T, G) int64
    pos: np.ndarray  # (T,) int64 position bucket
    experts: np.ndarray  # (T, L, K) int64
    bounds: np.ndarray  # (R+1,) int64
    req_start: np.ndarray  # (T,) int64 first row of each token's prompt
    req_end: np.ndarray  # (T,) int64 end row (exclusive) of each token's prompt
    req_of_row: np.ndarray  # (T,) int64 each token's request index
    prompt_mean: np.ndarray  # (R, L, E) float32 per prompt: mean multi-hot of its tokens' experts
    prefill: np.ndarray | None = None  # (T,) bool: the token is a prompt (prefill) token
    hidden: np.ndarray | None = None  # (T, L, H) float16 router input hidden states (a capture's)
    weights: np.ndarray | None = None  # (T, L, K) float32 gate weights of ``experts``


def restrict(enc: Encoded, keep: np.ndarray) -> tuple[Encoded, np.ndarray]:
    """The tokens ``keep`` (T,) bool of ``enc`` as an Encoded of their own (same request
    indices; a request may become empty), and the kept rows' indices in ``enc``. Prompt
    summaries (``prompt_mean``, first/last row) are rebuilt from the kept tokens only, so a
    prefill view never sees a decode token."""
    rows = np.flatnonzero(keep).astype(np.int64)
    counts = np.bincount(enc.req_of_row[rows], minlength=len(enc.bounds) - 1).astype(np.int64)
    b = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    R = len(b) - 1
    ex = enc.experts[rows]
    sub = Encoded(enc.tok[rows], enc.ngram[rows], enc.pos[rows], ex, b,
                  np.repeat(b[:-1], counts).astype(np.int64), np.repeat(b[1:], counts).astype(np.int64),
                  np.repeat(np.arange(R), counts).astype(np.int64),
                  prompt_mean_multi_hot(ex, b, enc.prompt_mean.shape[-1]),
                  None if enc.prefill is None else enc.prefill[rows],
                  None if enc.hidden is None else enc.hidden[rows],
                  None if enc.weights is None else enc.weights[rows])
    return sub, rows


def nonempty(enc: Encoded, requests: np.ndarray) -> np.ndarray:
    """The requests of ``requests`` that hold at least one token in ``enc``."""
    req = np.asarray(requests, dtype=np.int64)
    return req[enc.bounds[req + 1] > enc.bounds[req]]


def prompt_mean_multi_hot(experts: np.ndarray, bounds: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, L, K) experts, (R+1,) request bounds -> (R, L, E) float32: per prompt and layer, the
    share of its tokens that routed to each expert (prefill_layers' prompt summary)."""
    T, L, K = experts.shape
    R, E = len(bounds) - 1, num_experts
    owner = np.repeat(np.arange(R), np.diff(bounds))  # (T,)
    flat = (owner[:, None, None] * L + np.arange(L)[None, :, None]) * E + experts  # (T, L, K)
    counts = np.bincount(flat.ravel(), minlength=R * L * E).reshape(R, L, E)
    return (counts / np.maximum(np.diff(bounds), 1)[:, None, None]).astype(np.float32)


def encode(trace: RoutingTrace, vocab: Vocab, num_pos_buckets: int,
           hidden: np.ndarray | None = None) -> Encoded:
    """The trace's tokens as model inputs; ``hidden`` (T, L, H): the router input hidden states
    of a capture (traces/capture.py ``hidden_path``), kept as given."""
    tok, ngram = vocab.encode(trace.tokens["text"].to_numpy())
    pos = position_bucket(trace.tokens["position"].to_numpy(), num_pos_buckets)
    b = trace.request_bounds()
    req_start = np.repeat(b[:-1], np.diff(b)).astype(np.int64)  # (T,)
    req_end = np.repeat(b[1:], np.diff(b)).astype(np.int64)  # (T,)
    req_of_row = np.repeat(np.arange(len(b) - 1), np.diff(b)).astype(np.int64)  # (T,)
    ex = trace.experts.astype(np.int64)
    if hidden is not None and hidden.shape[:2] != ex.shape[:2]:
        raise ValueError(f"hidden states {hidden.shape} do not match the trace's (T, L) = "
                         f"{ex.shape[:2]}")
    return Encoded(tok, ngram, pos, ex, b, req_start, req_end, req_of_row,
                   prompt_mean_multi_hot(ex, b, trace.num_experts),
                   trace.tokens["phase"].to_numpy().astype(str) == "prefill", hidden,
                   None if trace.weights is None else trace.weights.astype(np.float32))


def lookup_log_prior(enc: Encoded, rows: np.ndarray, vocab_size: int, num_experts: int,
                     alpha: float) -> np.ndarray:
    """(V, L, E) float32: log of each piece's smoothed expert frequency per layer from ``rows``:
    ``(count + alpha * K * p_l) / (K * (n_piece + alpha))`` with ``p_l`` the layer's popularity
    over ``rows``; unseen pieces get ``log p_l``."""
    L, K = enc.experts.shape[1:]
    E = num_experts
    v = enc.tok[rows]  # (n,)
    ex = enc.experts[rows]  # (n, L, K)
    flat = (v[:, None, None] * L + np.arange(L)[None, :, None]) * E + ex
    counts = np.bincount(flat.ravel(), minlength=vocab_size * L * E).reshape(vocab_size, L, E)
    pop = counts.sum(0).astype(np.float64) + 1.0  # (L, E)
    pop /= pop.sum(-1, keepdims=True)
    n_v = np.bincount(v, minlength=vocab_size).astype(np.float64)  # (V,)
    q = (counts + alpha * K * pop[None]) / (K * (n_v[:, None, None] + alpha))
    return np.log(q).astype(np.float32)


def make_batches(win: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group windows (N, 3) of similar length into batches of at most ``batch_tokens`` padded
    tokens; returns index arrays into ``win``. Deterministic."""
    length = win[:, 1] - win[:, 0]
    order = np.argsort(length, kind="stable")
    batches: list[np.ndarray] = []
    cur: list[int] = []
    for i in order:
        n = int(length[i])
        if cur and (len(cur) + 1) * max(n, int(length[cur[-1]])) > batch_tokens:
            batches.append(np.array(cur, dtype=np.int64))
            cur = []
        cur.append(int(i))
    if cur:
        batches.append(np.array(cur, dtype=np.int64))
    return batches


def _batch_tensors(enc: Encoded, win: np.ndarray, num_experts: int, with_prev: bool,
                   fold_prior: tuple[np.ndarray, np.ndarray] | None = None,
                   with_layers: bool = False, prefill: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded tensors for windows ``win`` (B, 3)."""
    B = len(win)
    W = int((win[:, 1] - win[:, 0]).max())
    rows = win[:, :1] + np.arange(W)[None, :]  # (B, W)
    valid = rows < win[:, 1:2]
    scored = valid & (rows >= win[:, 2:3])
    rows = np.where(valid, rows, win[:, :1])
    out = {
        "tok": torch.from_numpy(np.where(valid, enc.tok[rows], 0)),
        "ngram": torch.from_numpy(np.where(valid[..., None], enc.ngram[rows], 0)),
        "pos": torch.from_numpy(enc.pos[rows]),
        "experts": torch.from_numpy(enc.experts[rows]),  # (B, W, L, K)
        "scored": torch.from_numpy(scored),
        "rows": torch.from_numpy(rows),
    }
    if enc.hidden is not None:
        out["hidden"] = torch.from_numpy(np.ascontiguousarray(enc.hidden[rows]))  # (B, W, L, H)
    if enc.weights is not None:
        out["weights"] = torch.from_numpy(enc.weights[rows])  # (B, W, L, K)
    if fold_prior is not None:
        tables, fold_of_row = fold_prior  # (F, V, L, E) float16, (T,) int64
        out["prior"] = torch.from_numpy(tables[fold_of_row[rows], out["tok"].numpy()]).float()
    if with_prev:
        L = enc.experts.shape[1]
        prev = torch.zeros(B, W, L, num_experts)
        prev[:, :, 1:].scatter_(3, out["experts"][:, :, :-1], 1.0)
        out["prev"] = prev
    if with_layers:
        has_prev = valid & (rows > enc.req_start[rows])  # (B, W)
        out["has_prev"] = torch.from_numpy(has_prev)
        out["prev_experts"] = torch.from_numpy(enc.experts[np.where(has_prev, rows - 1, rows)])
    if prefill:  # prefill_layers: the next token of the prompt and the whole prompt's summary
        has_next = valid & (rows + 1 < enc.req_end[rows])  # (B, W)
        out["has_next"] = torch.from_numpy(has_next)
        out["next_experts"] = torch.from_numpy(enc.experts[np.where(has_next, rows + 1, rows)])
        out["prompt_mean"] = torch.from_numpy(enc.prompt_mean[enc.req_of_row[win[:, 0]]])  # (B, L, E)
    return out


def _forward(model: TokenPredictor, bt: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model on a batch from :func:`_batch_tensors` (layer inputs only for ``token_layers``;
    its layer transformer runs on the scored tokens only)."""
    if model.mode not in LAYER_MODES:
        return model(bt["tok"], bt["ngram"], bt["pos"], bt.get("prev"), bt.get("prior"))
    return model(bt["tok"], bt["ngram"], bt["pos"], None, bt.get("prior"), experts=bt["experts"],
                 prev_experts=bt["prev_experts"], has_prev=bt["has_prev"], sel=bt["scored"],
                 next_experts=bt.get("next_experts"), has_next=bt.get("has_next"),
                 prompt_mean=bt.get("prompt_mean"), hidden=bt.get("hidden"),
                 weights=bt.get("weights"))


def set_loss(logits: torch.Tensor, experts: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Mean over scored tokens and layers of the cross-entropy of a softmax over experts against
    the uniform distribution on the true top-k set. logits (B, W, L, E), experts (B, W, L, K)."""
    lse = torch.logsumexp(logits, dim=-1)  # (B, W, L)
    hit = logits.gather(-1, experts).mean(-1)  # (B, W, L)
    per = (lse - hit).mean(-1)  # (B, W)
    m = scored.float()
    return (per * m).sum() / m.sum().clamp(min=1)


def train_token(trace: RoutingTrace, vocab: Vocab, train_req: np.ndarray, val_req: np.ndarray,
                cfg: dict[str, Any], seed: int, log: Any = print, enc: Encoded | None = None
                ) -> tuple[TokenPredictor, dict]:
    """Train on ``train_req``; pick the epoch with the best F1 on ``val_req``. ``enc``: the
    trace's tokens already encoded (e.g. one phase's view from :func:`restrict`; default: all
    tokens of ``trace``); requests without a token in it are skipped."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model_cfg = dict(cfg["model"])
    model = TokenPredictor(model_cfg)
    if enc is None:
        enc = encode(trace, vocab, int(model_cfg["num_pos_buckets"]))
    train_req, val_req = nonempty(enc, train_req), nonempty(enc, val_req)
    win = windows(enc.bounds, train_req, int(cfg["window"]))
    batches = make_batches(win, int(cfg["batch_tokens"]))
    epochs = int(cfg["epochs"])
    steps = max(1, epochs * len(batches))
    warm = max(1, int(0.05 * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]),
                            weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    with_prev = model.mode == "token_prev"
    with_layers = model.mode in LAYER_MODES
    prefill = model.mode == "prefill_layers"
    E = trace.num_experts
    fold_prior = None
    if model.lookup:
        # inference uses the table of all training prompts; training tokens see an out-of-fold
        # table (built without their own prompt's fold) so that the network learns how far to
        # trust the table on pieces and prompts it did not come from
        V, alpha = int(model_cfg["vocab_size"]), float(model_cfg["prior_alpha"])
        folds = int(cfg.get("prior_folds", 4))
        fold_of_req = rng.permutation(len(train_req)) % folds
        fold_of_row = np.zeros(int(enc.bounds[-1]), dtype=np.int64)
        tables = np.zeros((folds, V, trace.num_layers, E), dtype=np.float16)
        for f in range(folds):
            fold_of_row[request_rows(enc.bounds, train_req[fold_of_req == f])] = f
            tables[f] = lookup_log_prior(enc, request_rows(enc.bounds, train_req[fold_of_req != f]),
                                         V, E, alpha)
        fold_prior = (tables, fold_of_row)
        with torch.no_grad():
            model.prior_table.copy_(torch.from_numpy(
                lookup_log_prior(enc, request_rows(enc.bounds, train_req), V, E, alpha)))
    best: tuple[float, dict[str, torch.Tensor] | None] = (-1.0, None)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        total, count = 0.0, 0
        for bi in rng.permutation(len(batches)):
            bt = _batch_tensors(enc, win[batches[bi]], E, with_prev, fold_prior, with_layers,
                                prefill)
            logits = _forward(model, bt)
            loss = set_loss(logits, bt["experts"], bt["scored"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * int(bt["scored"].sum())
            count += int(bt["scored"].sum())
        rec = {"epoch": ep, "train_loss": total / max(count, 1),
               "elapsed_s": time.perf_counter() - t0}
        if len(val_req):
            top, _ = predict_token(model, enc, val_req, trace.top_k, cfg)
            rows = np.concatenate([np.arange(enc.bounds[r], enc.bounds[r + 1]) for r in val_req])
            hit = (top[..., :, None] == enc.experts[rows][..., None, :]).any(-1).sum(-1)
            rec["val_f1"] = float(hit.mean() / trace.top_k)
            if rec["val_f1"] > best[0]:
                best = (rec["val_f1"], {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(rec)
        log(f"epoch {ep}: " + ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "epoch"))
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return model, {"history": history, "train_s": time.perf_counter() - t0,
                   "best_val_f1": best[0] if best[1] is not None else None}


@torch.no_grad()
def predict_token(model: TokenPredictor | PhasedPredictor, enc: Encoded, requests: np.ndarray,
                  k: int, cfg: dict[str, Any], prob_sums: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-k predicted experts (T_sel, L, k) int64, best first, for the tokens of ``requests``
    in request order; optionally (R_sel, L, E) sums of predicted probabilities per request.
    A :class:`PhasedPredictor` answers each token with the head of its phase: prefill tokens from
    the prefill head over the prompt's prefill tokens only, decode tokens from the decode head
    over the whole request (causal)."""
    if isinstance(model, PhasedPredictor):
        return _predict_phased(model, enc, np.asarray(requests, dtype=np.int64), k, cfg, prob_sums)
    return _predict_one(model, enc, requests, k, cfg, prob_sums)


def _per_request(sums: np.ndarray, enc: Encoded, requests: np.ndarray) -> np.ndarray:
    lens = np.array([enc.bounds[r + 1] - enc.bounds[r] for r in requests])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    return np.add.reduceat(sums, starts, axis=0) if len(sums) else sums


def _predict_phased(model: PhasedPredictor, enc: Encoded, requests: np.ndarray, k: int,
                    cfg: dict[str, Any], prob_sums: bool) -> tuple[np.ndarray, np.ndarray | None]:
    rows = request_rows(enc.bounds, requests)  # output order
    where = np.full(int(enc.bounds[-1]), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    pre = enc.prefill if enc.prefill is not None else np.ones(int(enc.bounds[-1]), dtype=bool)
    top = np.zeros((len(rows), model.L, k), dtype=np.int64)
    probs = np.zeros((len(rows), model.L, model.E), dtype=np.float32) if prob_sums else None
    if (~pre[rows]).any():  # decode tokens: the decode head over the whole request
        t, p = _predict_one(model.head("decode"), enc, requests, k, cfg, prob_sums, per_token=True)
        dec = ~pre[rows]
        top[dec] = t[dec]
        if probs is not None:
            probs[dec] = p[dec]
    if pre[rows].any():  # prefill tokens: the prefill head over the prefill tokens only
        sub, old = restrict(enc, pre)
        req = nonempty(sub, requests)
        t, p = _predict_one(model.head("prefill"), sub, req, k, cfg, prob_sums, per_token=True)
        dst = where[old[request_rows(sub.bounds, req)]]
        top[dst] = t
        if probs is not None:
            probs[dst] = p
    return top, None if probs is None else _per_request(probs, enc, requests)


@torch.no_grad()
def _predict_one(model: TokenPredictor, enc: Encoded, requests: np.ndarray, k: int,
                 cfg: dict[str, Any], prob_sums: bool = False, per_token: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    model.eval()
    E = model.E
    win = windows(enc.bounds, requests, int(cfg["window"]))
    T = int(sum(enc.bounds[r + 1] - enc.bounds[r] for r in requests))
    row_base = np.concatenate([np.arange(enc.bounds[r], enc.bounds[r + 1]) for r in requests]) \
        if len(requests) else np.zeros(0, dtype=np.int64)
    where = np.full(int(enc.bounds[-1]), -1, dtype=np.int64)
    where[row_base] = np.arange(T)
    top = np.zeros((T, model.L, k), dtype=np.int64)
    sums = np.zeros((T, model.L, E), dtype=np.float32) if prob_sums else None
    for bidx in make_batches(win, int(cfg["batch_tokens"])):
        bt = _batch_tensors(enc, win[bidx], E, model.mode == "token_prev",
                            with_layers=model.mode in LAYER_MODES,
                            prefill=model.mode == "prefill_layers")
        logits = _forward(model, bt)
        sc = bt["scored"].numpy()
        dst = where[bt["rows"].numpy()[sc]]
        z = logits[bt["scored"]]  # (n, L, E)
        top[dst] = torch.topk(z, k, dim=-1).indices.numpy()
        if sums is not None:
            sums[dst] = torch.softmax(z, -1).numpy()
    if sums is None or per_token:
        return top, sums
    return top, _per_request(sums, enc, requests)
