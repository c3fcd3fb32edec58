"""The costs of one iteration's layers, computed once per iteration with numpy (no Python loop per
token): which pool rows the batch's tokens read, the attention context, each (layer, GPU)'s fused
MoE time, and the per-layer and per-iteration gaps the layer walk (:mod:`sim.layers`) times.

Shape legend: T tokens of the batch, B requests of the batch, L MoE layers, E experts, G GPUs of
the replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.cost.analytic import kv_read_tokens
from sim.plan import ClusterPlan
from sim.state import Requests


@dataclass
class BatchShape:
    rows: np.ndarray | None  # (T,) pool rows of the batch's tokens (None: not asked for)
    tokens: int  # T
    pairs: int  # attention (query, key) pairs, causal
    kv_tokens: int  # KV tokens FlashAttention reads (once per query tile)
    decode: int  # decode tokens (requests with one token this iteration)
    sequences: int  # requests in the batch (each samples a token from the LM head)


def batch_shape(req: Requests, batch: np.ndarray, alloc: np.ndarray, rows: bool = True
                ) -> BatchShape:
    """The batch's tokens: ``alloc`` (B,) tokens of each request ``batch`` (B,) this iteration.
    Without ``rows`` nothing is computed per token (the simulator counts tokens per key from the
    pool's prefix counts, :mod:`sim.layers`)."""
    start = req.ctx[batch]  # (B,) first position processed
    total = int(alloc.sum())
    pool_rows = None
    if rows:
        rep_start = np.repeat(start, alloc)  # (T,)
        first = np.cumsum(alloc) - alloc
        pos = rep_start + (np.arange(total) - np.repeat(first, alloc))  # (T,) positions
        length = np.repeat(req.length[batch], alloc)
        pool_rows = np.repeat(req.offset[batch], alloc) + pos % length
    # causal pairs: positions start .. start + alloc - 1 each attend to position + 1 keys
    pairs = int((alloc * start + alloc * (alloc + 1) // 2).sum())
    return BatchShape(rows=pool_rows, tokens=total, pairs=pairs,
                      kv_tokens=kv_read_tokens(start, alloc), decode=int((alloc == 1).sum()),
                      sequences=len(batch))


@dataclass
class LayerCosts:
    comp: np.ndarray  # (L, G) each GPU's expert time per layer
    load: np.ndarray  # (L, G) tokens each GPU computes per layer
    computed: np.ndarray  # (L, E) tokens computed per expert
    attn: float  # attention block + tensor-parallel collectives, per layer
    gate: float
    a2a: float  # one all-to-all (dispatch or combine), per layer
    pre: float  # per iteration, before the first layer: overhead, embeddings, dense layers, LM head


def layer_costs(plan: ClusterPlan, cost: Any, counts_flat: np.ndarray, shape: BatchShape,
                G: int) -> LayerCosts:
    """``counts_flat`` (L*E,) tokens per key of the iteration."""
    L, E = plan.L, plan.E
    counts = counts_flat.reshape(L, E)  # (L, E)
    if plan.moe_tp:
        # every GPU computes every expert's tokens on its shard of the weights
        per_layer = cost.moe_s(counts_flat, np.repeat(np.arange(L), E), L)  # (L,)
        comp = np.repeat(per_layer[:, None], G, axis=1)  # (L, G)
        computed = counts
        load = np.repeat(counts.sum(axis=1, keepdims=True) / G, G, axis=1)
    elif plan.single_owner:
        # each expert on one GPU: per-GPU sums by scatter (no (L, E, G) product)
        computed = counts
        lg = plan.lg_index
        comp = cost.moe_s(counts_flat, lg, L * G).reshape(L, G)
        load = np.bincount(lg, weights=counts_flat, minlength=L * G).reshape(L, G)
    else:
        tok_g = counts[:, :, None] * plan.share  # (L, E, G) tokens per expert per GPU
        computed = np.rint(tok_g.sum(axis=2)).astype(np.int64)
        group = (np.arange(L)[:, None, None] * G + np.arange(G)[None, None, :]) + 0 * tok_g.astype(np.int64)
        comp = cost.moe_s(np.ceil(tok_g - 1e-9).ravel(), group.ravel(), L * G).reshape(L, G)
        load = tok_g.sum(axis=1)  # (L, G)
    T = shape.tokens
    prefill = T - shape.decode
    attn = cost.attention_s(prefill, shape.decode, shape.pairs, G, kv_tokens=shape.kv_tokens) + \
        cost.layer_collectives_s(T)
    gate = cost.gate_s(T)
    dp = G // plan.tensor_parallel
    a2a = cost.all_to_all_s(T * plan.K * plan.hidden_size * 2.0 / G, dp, plan.topo.inter_node) \
        if dp > 1 else 0.0
    pre = cost.iteration_s(prefill, shape.decode, shape.pairs, shape.kv_tokens, shape.sequences)
    return LayerCosts(comp=comp, load=load, computed=computed, attn=attn, gate=gate, a2a=a2a, pre=pre)
