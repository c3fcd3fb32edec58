"""The torch models of the eMoE expert predictor (torch is imported only in sim.predictor).

Two forms:

- :class:`TokenPredictor` (per token): a small causal transformer over the token pieces of a
  prompt. Token t's output sees only tokens <= t of the same prompt (causal mask), never the
  experts of any token. Output: (L, E) logits, one row per MoE layer. Mode ``token_prev`` (eMoE-L
  style) also feeds layer l-1's *true* experts of the same token into layer l's logits: at serving
  time layer l-1 has routed before layer l runs, so this is information a server has.
  Mode ``token_layers`` (layer-causal, eMoE-L generalised) runs a second causal transformer over
  the layer axis of each token: position l sees the token's context vector, a layer embedding and
  the token's *true* experts at layers 0..l-1 (position l holds layer l-1's set, the causal mask
  lets it see the earlier positions), plus the previous token's experts at layers < l
  (``prev_token: lower``, prefill-safe: at prefill all tokens of a prompt pass a layer together,
  so earlier tokens' layer-l experts are not known before layer l routes) or <= l
  (``prev_token: same``, decode only: the previous token finished all layers before this one
  started). Nothing of layer >= l of this token, or of any later token, reaches layer l's logits.
- Mode ``prefill_layers`` (PREFILL ONLY) is ``token_layers`` with what a prefill step knows: all
  tokens of a prompt pass layer l-1 together before layer l routes, and the whole prompt's text is
  there. The context transformer is bidirectional over the window (earlier and later tokens of the
  same prompt), position l of the layer transformer also sees the next token's experts at layer
  l-1 and the prompt's mean multi-hot at layer l-1 (all its tokens), and a direct term maps the
  prompt's mean multi-hot at layers < l to layer l's logits. Nothing of layer >= l of ANY token
  reaches layer l's logits. Not valid at decode (a decode token has no later tokens).
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

LAYER_MODES = ("token_layers", "prefill_layers")


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
        elif self.mode in LAYER_MODES:
            dl = int(cfg.get("layer_d_model", d))
            self.prev_token = str(cfg.get("prev_token", "lower"))
            if self.prev_token not in ("none", "lower", "same"):
                raise ValueError(f"prev_token must be none, lower or same, got {self.prev_token!r}")
            if self.mode == "prefill_layers" and self.prev_token == "same":
                raise ValueError("prefill_layers: prev_token=same is decode-only; use lower or none")
            # expert ids are per layer: row l * E + e; row L * E is the "no set" (layer -1) padding
            self.ex_self = nn.Embedding(self.L * self.E + 1, dl)
            self.ex_prev = nn.Embedding(self.L * self.E + 1, dl)
            self.layer_emb = nn.Embedding(self.L, dl)
            self.ctx_proj = nn.Linear(d, dl)
            self.layer_encoder = _encoder(dl, int(cfg.get("layer_heads", 4)),
                                          int(cfg.get("layer_d_ff", 4 * dl)),
                                          int(cfg.get("layer_layers", 2)), float(cfg["dropout"]))
            self.layer_norm = nn.LayerNorm(dl)
            self.layer_head = nn.Parameter(torch.randn(self.L, dl, self.E) * dl ** -0.5)
            self.layer_bias = nn.Parameter(torch.zeros(self.L, self.E))
            # direct cross-layer term: logits[l] += sum_{j<l} multi_hot[j] @ cross[j, :, l]
            # (the first-order transition generalised to all earlier layers; block-triangular)
            self.cross = nn.Parameter(torch.zeros(self.L * self.E, self.L * self.E))
            blk = torch.triu(torch.ones(self.L, self.L), diagonal=1)  # [j, l] = 1 iff j < l
            self.register_buffer("cross_mask", blk.repeat_interleave(self.E, 0)
                                 .repeat_interleave(self.E, 1), persistent=False)
            # optional inputs at position l (layer l-1 of this token): the router's input hidden
            # state (a capture's .hidden.safetensors) and the gate weights of the chosen experts
            self.hidden_size = int(cfg.get("hidden_size", 0) or 0)
            if self.hidden_size:
                self.hid_norm = nn.LayerNorm(self.hidden_size)
                self.hid_proj = nn.Linear(self.hidden_size, dl)
            self.gate_weights = bool(cfg.get("gate_weights", False))
            if self.gate_weights:
                self.ex_weight = nn.Embedding(self.L * self.E + 1, dl, padding_idx=self.L * self.E)
                nn.init.zeros_(self.ex_weight.weight)
            if self.mode == "prefill_layers":
                self.ex_next = nn.Embedding(self.L * self.E + 1, dl)
                # position l += prompt mean multi-hot at layer l-1 @ prompt_in[l]
                self.prompt_in = nn.Parameter(torch.randn(self.L, self.E, dl) * 0.05)
                # logits[l] += sum_{j<l} prompt_mean[j] @ prompt_cross[j, :, l]
                self.prompt_cross = nn.Parameter(torch.zeros(self.L * self.E, self.L * self.E))
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
                prev: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                experts: torch.Tensor | None = None, prev_experts: torch.Tensor | None = None,
                has_prev: torch.Tensor | None = None, sel: torch.Tensor | None = None,
                next_experts: torch.Tensor | None = None, has_next: torch.Tensor | None = None,
                prompt_mean: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """tok (B, W), ngram (B, W, G), pos (B, W) [, prev (B, W, L, E) multi-hot of layer l-1's
        experts at index l (row 0 zeros)] [, prior (B, W, L, E): the lookup prior to use instead of
        ``prior_table[tok]`` (training passes out-of-fold priors)] -> logits (B, W, L, E).
        Mode ``token_layers`` also takes experts (B, W, L, K) (this token's true experts; layer l's
        logits use only layers < l), prev_experts (B, W, L, K) (the previous token's), has_prev
        (B, W) bool (false at a prompt's first token) and sel (B, W) bool (the tokens whose logits
        are wanted; the others are returned as zeros). Right padding only.
        Mode ``prefill_layers`` also takes next_experts (B, W, L, K) / has_next (B, W) (the next
        token's experts; false at a prompt's last token) and prompt_mean (B, L, E) (each window's
        prompt: mean multi-hot of all its tokens' experts; layer l uses its layers < l only); its
        context encoder is bidirectional (token id 0 = padding, masked as a key).
        Layer modes built with ``hidden_size`` > 0 also take hidden (B, W, L, H) (the router's input
        hidden state per layer; layer l's logits use layers < l), with ``gate_weights`` weights
        (B, W, L, K) (the gate weights of ``experts``; layers < l likewise)."""
        B, W = tok.shape
        g = self.ngram(ngram)  # (B, W, G, D)
        n = (ngram > 0).sum(-1, keepdim=True).clamp(min=1)  # (B, W, 1)
        x = self.tok(tok) + g.sum(2) / n + self.pos(pos)  # (B, W, D)
        if self.mode == "prefill_layers":  # prefill: the whole window of the prompt, both ways
            h = self.encoder(self.drop(x), src_key_padding_mask=tok == 0)
        else:
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
        if self.mode in LAYER_MODES:
            assert experts is not None and prev_experts is not None and has_prev is not None
            if sel is None:
                sel = torch.ones(B, W, dtype=torch.bool)
            extra = None
            if self.mode == "prefill_layers":
                assert next_experts is not None and has_next is not None and prompt_mean is not None
                extra = self._prompt_terms(prompt_mean.float(), next_experts, has_next, sel)
            out = out.masked_fill(~sel[..., None, None], 0.0)
            hid = hidden[sel].float() if self.hidden_size else None
            w = weights[sel].float() if self.gate_weights else None
            out[sel] = out[sel] + self._layer_logits(h[sel], experts[sel], prev_experts[sel],
                                                     has_prev[sel], extra, hid, w)
        return out

    def _prompt_terms(self, pm: torch.Tensor, nex: torch.Tensor, has_next: torch.Tensor,
                      sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """prefill_layers: pm (B, L, E) prompt mean multi-hot, nex (B, W, L, K) next token's
        experts, has_next (B, W), sel (B, W) -> (n, L, Dl) layer-transformer inputs (position l:
        layer l-1 of the next token and of the prompt) and (n, L, E) direct logits (layers < l)."""
        B, L, E = pm.shape
        K = nex.shape[-1]
        pad = L * E
        shifted = torch.cat([torch.zeros(B, 1, E), pm[:, :-1]], dim=1)  # (B, L, E) l <- l-1
        p_in = torch.einsum("ble,led->bld", shifted, self.prompt_in)  # (B, L, Dl)
        direct = (pm.reshape(B, L * E) @ (self.prompt_cross * self.cross_mask)).view(B, L, E)
        W = sel.shape[1]
        p_in = p_in[:, None].expand(B, W, L, p_in.shape[-1])[sel]  # (n, L, Dl)
        direct = direct[:, None].expand(B, W, L, E)[sel]  # (n, L, E)
        nids = nex[sel] + (torch.arange(L) * E)[None, :, None]  # (n, L, K)
        n = nids.shape[0]
        nids = torch.cat([torch.full((n, 1, K), pad), nids[:, :-1]], dim=1)  # l <- l-1
        nids = torch.where(has_next[sel][:, None, None], nids, torch.full_like(nids, pad))
        return p_in + self.ex_next(nids).sum(2), direct

    def _layer_logits(self, h: torch.Tensor, ex: torch.Tensor, pex: torch.Tensor,
                      has_prev: torch.Tensor,
                      extra: tuple[torch.Tensor, torch.Tensor] | None = None,
                      hid: torch.Tensor | None = None, w: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """h (n, D) context, ex / pex (n, L, K) this / the previous token's experts, has_prev (n,)
        [, hid (n, L, H) router input hidden states, w (n, L, K) gate weights of ex]
        -> (n, L, E) logits; position l sees layers < l only (shift by one, causal mask)."""
        n, L, K = ex.shape
        E = self.E
        pad = L * E
        ids = ex + (torch.arange(L) * E)[None, :, None]  # (n, L, K) per-layer expert rows
        pids = pex + (torch.arange(L) * E)[None, :, None]
        # position l holds this token's layer l-1 set (position 0: padding)
        shifted = torch.cat([torch.full((n, 1, K), pad), ids[:, :-1]], dim=1)  # (n, L, K)
        x = self.ex_self(shifted).sum(2)  # (n, L, Dl)
        if w is not None:  # gate weights of layer l-1 at position l
            ws = torch.cat([torch.zeros(n, 1, K), w[:, :-1]], dim=1)  # (n, L, K)
            x = x + (self.ex_weight(shifted) * ws[..., None]).sum(2)
        if hid is not None:  # router input hidden state of layer l-1 at position l
            hs = self.hid_proj(self.hid_norm(hid[:, :-1]))  # (n, L-1, Dl)
            x = x + torch.cat([torch.zeros(n, 1, hs.shape[-1]), hs], dim=1)
        if self.prev_token != "none":
            if self.prev_token == "lower":  # previous token's layer l-1 at position l
                pids = torch.cat([torch.full((n, 1, K), pad), pids[:, :-1]], dim=1)
            pids = torch.where(has_prev[:, None, None], pids, torch.full_like(pids, pad))
            x = x + self.ex_prev(pids).sum(2)
        x = x + self.layer_emb.weight[None] + self.ctx_proj(h)[:, None, :]
        if extra is not None:
            x = x + extra[0]
        y = self.layer_encoder(self.drop(x), mask=_causal_mask(L), is_causal=True)
        y = self.layer_norm(y)  # (n, L, Dl)
        mh = torch.zeros(n, L * E).scatter_(1, ids.reshape(n, L * K), 1.0)  # (n, L*E)
        direct = (mh @ (self.cross * self.cross_mask)).view(n, L, E)
        if extra is not None:
            direct = direct + extra[1]
        return torch.einsum("nld,lde->nle", y, self.layer_head) + self.layer_bias + direct


class PhasedPredictor(nn.Module):
    """One per-token predictor for both phases: ``prefill`` (a ``prefill_layers`` model, for
    prompt tokens) and ``decode`` (a ``token_layers`` model, for generated tokens). Inference
    dispatches each token on its phase (:func:`sim.predictor.token.predict_token`)."""

    mode = "phased"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        # a head is None when its phase was absent from training with absent_phase=refuse
        self.prefill = TokenPredictor(cfg["prefill"]) if cfg.get("prefill") else None
        self.decode = TokenPredictor(cfg["decode"]) if cfg.get("decode") else None
        if (self.prefill is not None and self.prefill.mode != "prefill_layers") or \
                (self.decode is not None and self.decode.mode != "token_layers"):
            raise ValueError("phased: the prefill head must be prefill_layers and the decode head "
                             "token_layers")
        one = self.prefill if self.prefill is not None else self.decode
        if one is None:
            raise ValueError("phased: no head")
        self.L, self.E = one.L, one.E
        self.lookup = one.lookup
        self.trained_on = dict(cfg.get("trained_on", {}))

    @property
    def prior_table(self) -> torch.Tensor:
        return (self.prefill if self.prefill is not None else self.decode).prior_table

    def head(self, phase: str) -> TokenPredictor:
        """The head for ``phase``; a phase without one is a ValueError that says why."""
        h = self.prefill if phase == "prefill" else self.decode
        if h is None:
            why = self.trained_on.get(phase, f"its training trace had no {phase} tokens")
            raise ValueError(f"this checkpoint has no {phase} head: {why}")
        return h


def make_token_model(cfg: dict[str, Any]) -> TokenPredictor | PhasedPredictor:
    """The per-token model a checkpoint's ``token_model`` config describes."""
    return PhasedPredictor(cfg) if str(cfg["mode"]) == "phased" else TokenPredictor(cfg)


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


__all__ = ["LAYER_MODES", "MAX_NGRAMS", "PhasedPredictor", "PromptPredictor", "TokenPredictor",
           "make_token_model", "num_parameters"]
