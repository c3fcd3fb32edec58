"""The torch models of the eMoE expert predictor (torch is imported only in sim.predictor).

Two forms:

- :class:`TokenPredictor` (per token): a small causal transformer over the token pieces of a
  prompt. Token t's output sees only tokens <= t of the same prompt (causal mask), never the
  experts of any token. Output: (L, E) logits, one row per MoE layer. Mode ``token_prev`` (eMoE-L
  style) also feeds layer l-1's *true* experts of the same token into layer l's logits: at serving
  time layer l-1 has routed before layer l runs, so this is information a server has.
- :class:`PromptPredictor` (per prompt, eMoE-A): a causal transformer over the previous prompts'
  per-layer expert frequency matrices; output j predicts prompt j+1's (L, E) distribution.

Shape legend: B batch, W window (tokens), H history (prompts), L MoE layers, E experts,
G n-gram slots, D model width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sim.predictor.data import MAX_NGRAMS


def _encoder(d: int, heads: int, ff: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=dropout, batch_first=True,
                                       norm_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _causal_mask(n: int) -> torch.Tensor:
    return torch.triu(torch.full((n, n), float("-inf")), diagonal=1)


class TokenPredictor(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = int(cfg["d_model"])
        self.L, self.E = int(cfg["num_layers"]), int(cfg["num_experts"])
        self.mode = str(cfg["mode"])
        self.tok = nn.Embedding(int(cfg["vocab_size"]), d, padding_idx=0)
        self.ngram = nn.Embedding(int(cfg["num_hash"]), d, padding_idx=0)
        self.pos = nn.Embedding(int(cfg["num_pos_buckets"]), d)
        self.drop = nn.Dropout(float(cfg["dropout"]))
        self.encoder = _encoder(d, int(cfg["heads"]), int(cfg["d_ff"]), int(cfg["layers"]),
                                float(cfg["dropout"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.L * self.E)
        if self.mode == "token_prev":
            r = int(cfg["prev_rank"])
            # layer l's logits += prev(l-1) @ T_l + ((h U_l) * (prev(l-1) A_l)) B_l
            self.trans = nn.Parameter(torch.zeros(self.L, self.E, self.E))
            self.prev_a = nn.Parameter(torch.randn(self.L, self.E, r) * 0.05)
            self.prev_b = nn.Parameter(torch.zeros(self.L, r, self.E))
            self.prev_u = nn.Linear(d, self.L * r)
            self.r = r
        elif self.mode != "token":
            raise ValueError(f"unknown token predictor mode {self.mode!r}")
        self.lookup = bool(cfg.get("lookup_prior", False))
        if self.lookup:
            # (V, L, E) smoothed log-frequency of each training piece's experts (a count table,
            # not trained); the network learns a per-layer weight for it and a context correction
            self.register_buffer("prior_table", torch.zeros(int(cfg["vocab_size"]), self.L, self.E,
                                                            dtype=torch.float16))
            self.prior_scale = nn.Parameter(torch.ones(self.L, 1))

    def forward(self, tok: torch.Tensor, ngram: torch.Tensor, pos: torch.Tensor,
                prev: torch.Tensor | None = None, prior: torch.Tensor | None = None
                ) -> torch.Tensor:
        """tok (B, W), ngram (B, W, G), pos (B, W) [, prev (B, W, L, E) multi-hot of layer l-1's
        experts at index l (row 0 zeros)] [, prior (B, W, L, E): the lookup prior to use instead of
        ``prior_table[tok]`` (training passes out-of-fold priors)] -> logits (B, W, L, E).
        Right padding only."""
        B, W = tok.shape
        g = self.ngram(ngram)  # (B, W, G, D)
        n = (ngram > 0).sum(-1, keepdim=True).clamp(min=1)  # (B, W, 1)
        x = self.tok(tok) + g.sum(2) / n + self.pos(pos)  # (B, W, D)
        h = self.encoder(self.drop(x), mask=_causal_mask(W), is_causal=True)
        h = self.norm(h)
        out = self.head(h).view(B, W, self.L, self.E)
        if self.lookup:
            pr = self.prior_table[tok].float() if prior is None else prior
            out = out + self.prior_scale * pr
        if self.mode == "token_prev":
            assert prev is not None
            p = prev.float()  # (B, W, L, E)
            out = out + torch.einsum("bwle,lef->bwlf", p, self.trans)
            u = self.prev_u(h).view(B, W, self.L, self.r)  # (B, W, L, r)
            a = torch.einsum("bwle,ler->bwlr", p, self.prev_a)
            out = out + torch.einsum("bwlr,lrf->bwlf", u * a, self.prev_b)
        return out


class PromptPredictor(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = int(cfg["d_model"])
        self.L, self.E = int(cfg["num_layers"]), int(cfg["num_experts"])
        self.inp = nn.Linear(self.L * self.E, d)
        self.pos = nn.Embedding(int(cfg["history"]), d)
        self.encoder = _encoder(d, int(cfg["heads"]), int(cfg["d_ff"]), int(cfg["layers"]),
                                float(cfg["dropout"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.L * self.E)
        # the population prior is a learned bias; the network learns the deviation from history
        self.prior = nn.Parameter(torch.zeros(self.L, self.E))

    def forward(self, freq: torch.Tensor) -> torch.Tensor:
        """freq (B, H, L, E) previous prompts' frequencies -> logits (B, H, L, E); output j is the
        prediction for the prompt after history entry j."""
        B, H = freq.shape[:2]
        x = self.inp(freq.reshape(B, H, -1)) + self.pos.weight[:H]
        h = self.norm(self.encoder(x, mask=_causal_mask(H), is_causal=True))
        return self.head(h).view(B, H, self.L, self.E) + self.prior


def num_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


__all__ = ["MAX_NGRAMS", "PromptPredictor", "TokenPredictor", "num_parameters"]
