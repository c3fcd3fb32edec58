"""Training and inference of the per-prompt predictor (eMoE-A; torch).

A prompt's per-layer "expert set" is its ``m`` most used experts per layer (ties to the smaller
id); its target distribution is its share of token activations per expert, ``freq`` (L, E). The
model sees only prompts that finished before the one predicted (and in the staleness study only
those before the last rerun).

Shape legend: R prompts, H history, L MoE layers, E experts.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from sim.predictor.model import PromptPredictor


def _train_windows(R: int, history: int) -> np.ndarray:
    """Start indices of history windows over a stream of R prompts (each window predicts the
    prompt after each of its entries)."""
    if R < 2:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, max(R - 1, 1), max(1, history // 2), dtype=np.int64)


def train_prompt(freq_train: np.ndarray, freq_val: np.ndarray, cfg: dict[str, Any], seed: int,
                 log: Any = print) -> tuple[PromptPredictor, dict]:
    """Train on the training stream ``freq_train`` (R, L, E) in order; select the epoch by soft
    cross-entropy on the validation stream."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PromptPredictor(dict(cfg["model"]))
    H = int(cfg["model"]["history"])
    F = torch.from_numpy(freq_train.astype(np.float32))
    starts = _train_windows(len(F), H)
    epochs, bs = int(cfg["epochs"]), int(cfg["batch"])
    steps = max(1, epochs * math.ceil(len(starts) / bs))
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]),
                            weight_decay=float(cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    # the prior starts at the training population's log-frequency
    with torch.no_grad():
        model.prior.copy_(torch.log(F.mean(0) + 1e-4))
    best: tuple[float, dict | None] = (math.inf, None)
    hist: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(starts)
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            x, y, msk = _stack(F, idx, H)
            z = model(x)
            loss = _soft_ce(z, y, msk)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        rec = {"epoch": ep, "elapsed_s": time.perf_counter() - t0}
        if len(freq_val) > 1:
            sc = predict_stream(model, freq_val, H, period=1)
            rec["val_ce"] = float(-(freq_val * np.log(_softmax(sc) + 1e-9)).sum(-1).mean())
            if rec["val_ce"] < best[0]:
                best = (rec["val_ce"], {k: v.detach().clone() for k, v in model.state_dict().items()})
        hist.append(rec)
        log(f"prompt epoch {ep}: " + ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "epoch"))
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return model, {"history": hist, "train_s": time.perf_counter() - t0}


def _stack(F: torch.Tensor, starts: np.ndarray, H: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    R = len(F)
    idx = starts[:, None] + np.arange(H)[None]  # (B, H)
    tgt = idx + 1
    msk = tgt < R
    idx = np.minimum(idx, R - 1)
    tgt = np.minimum(tgt, R - 1)
    return F[torch.from_numpy(idx)], F[torch.from_numpy(tgt)], torch.from_numpy(msk)


def _soft_ce(z: torch.Tensor, y: torch.Tensor, msk: torch.Tensor) -> torch.Tensor:
    ce = -(y * torch.log_softmax(z, -1)).sum(-1).mean(-1)  # (B, H)
    m = msk.float()
    return (ce * m).sum() / m.sum().clamp(min=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@torch.no_grad()
def predict_next(model: PromptPredictor, history: np.ndarray) -> np.ndarray:
    """Scores (L, E) for the next prompt from the finished prompts ``history`` (h, L, E), the most
    recent last (only the last ``model`` history length are used; none: the learned prior)."""
    H = model.pos.num_embeddings
    if len(history) == 0:
        return model.prior.detach().numpy().astype(np.float64)
    x = torch.from_numpy(np.asarray(history[-H:], dtype=np.float32))[None]
    return model(x)[0, -1].numpy().astype(np.float64)


def predict_stream(model: PromptPredictor, freq: np.ndarray, history: int, period: int
                   ) -> np.ndarray:
    """Scores (R, L, E) for a stream of R prompts when the predictor reruns every ``period``
    prompts (at prompts 0, p, 2p, ...) from the prompts finished before the rerun; in between the
    last prediction stands."""
    R = len(freq)
    out = np.zeros(freq.shape, dtype=np.float64)
    for i0 in range(0, R, period):
        out[i0:i0 + period] = predict_next(model, freq[max(0, i0 - history):i0])
    return out


def stale_stream(scores_at: np.ndarray, period: int) -> np.ndarray:
    """Apply staleness to per-prompt scores of a baseline: prompt i gets the scores computed at
    its block start ``(i // period) * period``."""
    R = len(scores_at)
    src = (np.arange(R) // period) * period
    return scores_at[src]
