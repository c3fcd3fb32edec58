"""The torch model a realrun executor serves: one MoE decoder layer's parts, at a model's shapes
divided by ``shrink``. Calibration (:mod:`realrun.calibrate`) times these very functions, so the
table profile prices what the executor runs.

Per MoE layer (weights seeded, random):

- :meth:`TinyMoE.attention`: fused QKV projection, each request's new tokens written into its KV
  cache and attending to it (causal inside a prefill chunk; torch SDPA), output projection,
  residual, then the shared experts' SwiGLU (DeepSeek's ``n_shared_experts``) and residual;
- :meth:`TinyMoE.gate`: the router matmul and the top-k softmax. The trace decides the routing:
  ``routing_logits`` of the recorded experts plus the router's output squashed below the gap
  between ranks, so the top-k is exactly the recorded one, in order, and the router still runs;
  then the dynamic-gating alignment (tokens grouped by expert);
- :func:`expert_ffn`: the routed experts' SwiGLU through a slot table (on the CPU a torch loop
  over experts, one expert at a time; on a GPU the Triton grouped kernel and combine).

Shape legend: T tokens, H hidden, I expert intermediate, E experts, K top-k, nh heads, dq the
query/key head dim, dv the value head dim, S shared-expert intermediate, C device slots.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sim.common.errors import ConfigError
from sim.world.config import ModelConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the router's own logits are squashed into (-ROUTER_EPS, ROUTER_EPS): below half the gap (1/K)
#: between the recorded ranks' forced logits, so the recorded top-k wins, in order
ROUTER_EPS = 1e-3


@dataclass(frozen=True)
class Shapes:
    L: int
    E: int
    K: int
    H: int
    I: int  # noqa: E741
    nh: int
    dq: int
    dv: int
    S: int  # shared experts' intermediate (0: none)
    dtype: str = "fp32"
    block_size: int = 16

    @classmethod
    def of(cls, m: ModelConfig, block_size: int = 16) -> Shapes:
        """The shapes of model ``m`` (shrink it first: :func:`shrunk_model`)."""
        if m.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={m.dtype!r}: realrun runs {', '.join(DTYPES)}")
        dq = m.head_dim if m.attention != "mla" else m.qk_nope_head_dim + m.qk_rope_head_dim
        dv = (m.v_head_dim or dq) if m.attention == "mla" else m.head_dim
        return cls(L=m.num_layers, E=m.num_experts, K=m.top_k, H=m.hidden_size,
                   I=m.expert_intermediate_size, nh=m.num_heads, dq=dq, dv=dv,
                   S=m.shared_experts * m.expert_intermediate_size, dtype=m.dtype,
                   block_size=block_size)

    @property
    def expert_bytes(self) -> int:
        return 3 * self.H * self.I * torch.empty(0, dtype=DTYPES[self.dtype]).element_size()


def shrunk_model(m: ModelConfig, shrink: int, dtype: str | None = None) -> ModelConfig:
    """Model ``m`` with hidden and intermediate sizes and heads divided by ``shrink`` (at least
    16 wide, one head; head dims kept), in ``dtype``: the model realrun runs and the simulator
    of ``moesim realrun validate`` prices (so an expert weighs the same bytes on both sides)."""
    from dataclasses import replace

    if shrink < 1:
        raise ConfigError(f"shrink must be >= 1, got {shrink}")
    return replace(m, hidden_size=max(16, m.hidden_size // shrink),
                   expert_intermediate_size=max(16, m.expert_intermediate_size // shrink),
                   dense_intermediate_size=m.dense_intermediate_size // shrink,
                   num_heads=max(1, m.num_heads // shrink),
                   num_kv_heads=max(1, m.num_kv_heads // shrink),
                   kv_lora_rank=m.kv_lora_rank // shrink if m.kv_lora_rank else 0,
                   dtype=dtype or m.dtype, name=m.name if shrink == 1 else f"{m.name}/{shrink}")


def routing_logits(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(T, K) recorded expert ids -> (T, E) logits whose top-k is exactly those ids, in order
    (rank k gets 8 - k/K, unchosen experts 0)."""
    T, K = experts.shape
    logits = torch.zeros((T, num_experts), dtype=torch.float32, device=experts.device)
    ranks = 8.0 - torch.arange(K, dtype=torch.float32, device=experts.device) / K
    logits.scatter_(1, experts.long(), ranks.expand(T, K).contiguous())
    return logits


@dataclass
class Routed:
    """A layer's routing: ids/weights (T, K), flat slots sorted by expert (T*K,) and per-expert
    counts (E,) and starts (E + 1,) on the host; the Triton alignment on a GPU."""

    ids: torch.Tensor
    w: torch.Tensor
    order: torch.Tensor
    counts: list[int]
    starts: list[int]
    align: Any = None


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x (M, H), w13 (2I, H), w2 (H, I) -> (M, H)."""
    h = x @ w13.t()  # (M, 2I)
    i = w2.shape[1]
    return (F.silu(h[:, :i]) * h[:, i:]) @ w2.t()


class TinyMoE:
    """Dense weights of every layer on the device; expert weights on the host (pinned on CUDA),
    keyed ``layer * E + expert`` as the simulator's cache keys."""

    def __init__(self, sh: Shapes, device: torch.device | str, seed: int = 0) -> None:
        self.sh, self.device = sh, torch.device(device)
        dt = DTYPES[sh.dtype]
        g = torch.Generator().manual_seed(seed)

        def rnd(*shape: int, fan_in: int) -> torch.Tensor:
            return (torch.randn(shape, generator=g) / fan_in**0.5).to(dt)

        L, E, H, I = sh.L, sh.E, sh.H, sh.I  # noqa: E741
        qkv = sh.nh * (2 * sh.dq + sh.dv)
        self.wqkv = [rnd(qkv, H, fan_in=H).to(self.device) for _ in range(L)]
        self.wo = [rnd(H, sh.nh * sh.dv, fan_in=sh.nh * sh.dv).to(self.device) for _ in range(L)]
        self.ws13 = [rnd(2 * sh.S, H, fan_in=H).to(self.device) for _ in range(L)] if sh.S else []
        self.ws2 = [rnd(H, sh.S, fan_in=sh.S).to(self.device) for _ in range(L)] if sh.S else []
        self.wg = [rnd(E, H, fan_in=H).to(self.device) for _ in range(L)]
        pin = self.device.type == "cuda"
        self.host_w13 = torch.empty((L * E, 2 * I, H), dtype=dt, pin_memory=pin)  # (L*E, 2I, H)
        self.host_w2 = torch.empty((L * E, H, I), dtype=dt, pin_memory=pin)  # (L*E, H, I)
        for k in range(L * E):  # expert by expert: no full-size float32 temporary
            self.host_w13[k] = rnd(2 * I, H, fan_in=H)
            self.host_w2[k] = rnd(H, I, fan_in=I)
        self.scale = 1.0 / sh.dq**0.5

    # -- attention / dense ----------------------------------------------------------------------
    def new_kv(self, tokens: int) -> torch.Tensor:
        """One request's KV cache: (L, tokens, nh, dq + dv)."""
        sh = self.sh
        return torch.empty((sh.L, tokens, sh.nh, sh.dq + sh.dv), dtype=DTYPES[sh.dtype],
                           device=self.device)

    def attention(self, l: int, x: torch.Tensor, seqs: list[tuple[torch.Tensor, int, int]]
                  ) -> torch.Tensor:
        """Layer ``l``'s attention and shared experts: x (T, H); ``seqs`` in token order: (that
        request's KV cache, first position, tokens)."""
        sh = self.sh
        nh, dq, dv = sh.nh, sh.dq, sh.dv
        qkv = rms_norm(x) @ self.wqkv[l].t()  # (T, nh*(2dq+dv))
        q = qkv[:, : nh * dq].view(-1, nh, dq)
        kv_new = qkv[:, nh * dq:].view(-1, nh, dq + dv)
        outs = []
        t0 = 0
        for kv, start, n in seqs:
            kv[l, start:start + n] = kv_new[t0:t0 + n]
            ctx = kv[l, : start + n]  # (start+n, nh, dq+dv)
            k = ctx[:, :, :dq].transpose(0, 1)  # (nh, start+n, dq)
            v = ctx[:, :, dq:].transpose(0, 1)
            qs = q[t0:t0 + n].transpose(0, 1)  # (nh, n, dq)
            if n == 1:
                o = F.scaled_dot_product_attention(qs, k, v, scale=self.scale)
            elif start == 0:
                o = F.scaled_dot_product_attention(qs, k, v, is_causal=True, scale=self.scale)
            else:
                mask = torch.ones((n, start + n), dtype=torch.bool, device=x.device).tril(start)
                o = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, scale=self.scale)
            outs.append(o.transpose(0, 1).reshape(n, nh * dv))
            t0 += n
        x = x + torch.cat(outs) @ self.wo[l].t()
        if sh.S:
            x = x + swiglu(rms_norm(x), self.ws13[l], self.ws2[l])
        return rms_norm(x)  # the MoE block's input norm

    # -- gating ---------------------------------------------------------------------------------
    def logits(self, l: int, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Router logits (T, E) of layer ``l``: the recorded ``experts`` (T, K) on top, in order."""
        return routing_logits(experts, self.sh.E) + ROUTER_EPS * torch.tanh(
            (x @ self.wg[l].t()).float())

    def gate(self, l: int, x: torch.Tensor, experts: torch.Tensor) -> Routed:
        """Router of layer ``l`` over x (T, H), forced to the recorded ``experts`` (T, K)."""
        return route(self.logits(l, x, experts), self.sh.K, self.sh.block_size)


def route(logits: torch.Tensor, K: int, block_size: int = 16) -> Routed:
    """Top-``K`` gating of router ``logits`` (T, E), renormalised, and the tokens grouped by
    expert: on a GPU the Triton top-k gating and dynamic-gating alignment kernels, on the CPU
    torch (the same ids and weights: the forced logits have no ties). The one router of both
    realrun executors (``realrun validate``'s :class:`TinyMoE` and ``realrun replay``)."""
    E = logits.shape[1]
    if logits.device.type == "cuda":
        from kernels.align import dynamic_gating
        from kernels.gating import topk_gating

        ids, w = topk_gating(logits, K, renormalize=True)
        align = dynamic_gating(ids, block_size, E)
        counts = align.expert_counts.tolist()
        order = None
    else:
        top = torch.topk(logits, K, dim=1)  # ties: never (forced logits are distinct)
        ids = top.indices.to(torch.int32)  # (T, K)
        w = torch.softmax(logits.float(), dim=1).gather(1, top.indices)
        w = w / w.sum(dim=1, keepdim=True)
        flat = ids.reshape(-1).long()
        order = torch.sort(flat, stable=True).indices  # (T*K,) flat slots by expert
        counts = torch.bincount(flat, minlength=E).tolist()
        align = None
    starts = [0, *itertools.accumulate(counts)]
    return Routed(ids=ids, w=w, order=order, counts=counts, starts=starts, align=align)


def expert_ffn(x: torch.Tensor, r: Routed, slot_of: list[int] | torch.Tensor, w13: torch.Tensor,
               w2: torch.Tensor, K: int, block_size: int = 16) -> torch.Tensor:
    """The routed experts of a layer through the slot table: out[t] = sum over its top-k experts
    e of w[t, e] * SwiGLU_e(x[t]), expert e's weights in ``w13[slot_of[e]]``, ``w2[...]``.
    An expert whose slot is -1 is not read and adds nothing (a launch over part of the layer's
    experts: the layer's output is the sum of its parts). On the CPU one expert at a time
    (torch); on a GPU the Triton grouped kernel and combine. The one expert executor of both
    realrun paths (``realrun validate`` and ``realrun replay``)."""
    if x.device.type == "cuda":
        from kernels.combine_op import combine
        from kernels.grouped_ffn import grouped_swiglu

        slot = torch.as_tensor(slot_of, dtype=torch.int32).to(x.device, non_blocking=True)
        y = grouped_swiglu(x, w13, w2, slot, r.align, K, block_size)
        return combine(y, r.align.inv, r.w)
    out = torch.zeros_like(x)
    order, w = r.order, r.w.reshape(-1)
    starts = r.starts
    for e, c in enumerate(r.counts):
        if not c:
            continue
        flat = order[starts[e]:starts[e] + c]  # flat slots t*K + k of expert e
        tok = flat // K
        s = int(slot_of[e])
        if s < 0:
            continue
        y = swiglu(x.index_select(0, tok), w13[s], w2[s])  # (c, H)
        out.index_add_(0, tok, y * w.index_select(0, flat)[:, None].to(y.dtype))
    return out
