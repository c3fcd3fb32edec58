"""The costs of one iteration's layers, computed once per iteration with numpy (no Python loop per
token): which pool rows the batch's tokens read, the attention context, each (layer, GPU)'s fused
MoE time, and the per-layer and per-iteration gaps the layer walk (:mod:`sim.serving.walk`) times.

Shape legend: T tokens of the batch, B requests of the batch, L MoE layers, E experts, G GPUs of
the replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.cost.analytic import (
    ATTENTION_TILE_TOKENS,
    MOE_BLOCK_TOKENS,
    MOE_LAUNCHES,
    AnalyticCost,
    kv_read_tokens,
)
from sim.serving.plan import ClusterPlan
from sim.serving.state import Requests
from sim.world.pair_split import pair_table, split_pairs
from sim.world.token_split import compiled_kernels, split_tokens
from sim.world.traffic import count_tokens


@dataclass
class BatchShape:
    rows: np.ndarray | None  # (T,) pool rows of the batch's tokens (None: not asked for)
    tokens: int  # T
    pairs: int  # attention (query, key) pairs, causal
    kv_tokens: int  # KV tokens FlashAttention reads (once per query tile)
    decode: int  # decode tokens (requests with one token this iteration)
    sequences: int  # requests in the batch (each samples a token from the LM head)


def batch_shape(req: Requests, batch: np.ndarray, alloc: np.ndarray, rows: bool = True,
                kern: Any = None) -> BatchShape:
    """The batch's tokens: ``alloc`` (B,) tokens of each request ``batch`` (B,) this iteration.
    Without ``rows`` nothing is computed per token (the simulator counts tokens per key from the
    pool's prefix counts, :mod:`sim.serving.token_counts`). ``kern``: the sums compiled
    (:func:`sim.cost.compiled_analytic.batch_sums`, the same integers)."""
    start = req.ctx[batch]  # (B,) first position processed
    if kern is not None and not rows:
        total, pairs, kv, decode = kern.batch_sums(start, alloc, ATTENTION_TILE_TOKENS)
        return BatchShape(rows=None, tokens=total, pairs=pairs, kv_tokens=kv, decode=decode,
                          sequences=len(batch))
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
    #: the all-to-all (sim.world.network times it): its traffic (L, G, G), or (G, L*E) tokens per source
    #: GPU and key with the share of each expert's tokens per GPU (None: the plan's; (L, E, G),
    #: or (P,) at the plan's holder pairs from COMPILED_MIN_GPUS GPUs); None when there is no
    #: all-to-all
    a2a: Any
    pre: float  # per iteration, before the first layer: overhead, embeddings, dense layers, LM head


def layer_costs(plan: ClusterPlan, cost: Any, counts_flat: np.ndarray, shape: BatchShape,
                G: int, a2a_tokens: Any = "count", kern: Any = None) -> LayerCosts:
    """``counts_flat`` (L*E,) tokens per key of the iteration; ``a2a_tokens`` what the all-to-all
    needs of the batch (:func:`sim.world.traffic.count_tokens`; counted from the batch when not given).
    ``kern``: the fused MoE time under the analytic model compiled, of single owners and of a
    large replica's holder pairs (:func:`sim.serving.compiled_walk.moe_owned`, the same floats)."""
    L, E = plan.L, plan.E
    counts = counts_flat.reshape(L, E)  # (L, E)
    computed = counts  # every layout below computes each routed token once
    batch_share = None  # (L, E, G) this batch's split of replicated experts (multi-owner only)
    if plan.moe_tp:
        # every GPU computes every expert's tokens on its shard of the weights
        per_layer = cost.moe_s(counts_flat, np.repeat(np.arange(L), E), L)  # (L,)
        comp = np.repeat(per_layer[:, None], G, axis=1)  # (L, G)
        load = np.repeat(counts.sum(axis=1, keepdims=True) / G, G, axis=1)
    elif plan.single_owner:
        # each expert on one GPU: per-GPU sums by scatter (no (L, E, G) product)
        comp, load = _moe_load(cost, kern, counts_flat, plan.lg_index, L, G)
    else:
        # replicated experts: this batch's tokens split across the replicas, each token to the
        # least-loaded replica GPU (sim/world/token_split.py), integers summing to counts
        wide = compiled_kernels(G) if plan.share.shape[2] == G else None
        if wide is not None:  # a large replica: over the plan's holder pairs only (P,), the
            # dense arrays' nonzeros in their order: the same integers and floats
            tab = pair_table(plan, wide)
            tok_p = split_pairs(counts, tab, wide)  # (P,) tokens per (expert, GPU) holding
            comp, load = _moe_load(cost, kern, tok_p, tab.group, L, G)
            batch_share = tok_p / np.maximum(counts_flat, 1)[tab.pair_key]  # (P,)
        else:
            tok_g = split_tokens(counts, plan.share > 0)  # (L, E, G) tokens per expert per GPU
            group = np.broadcast_to(np.arange(L)[:, None, None] * G + np.arange(G)[None, None, :],
                                    tok_g.shape)
            comp = cost.moe_s(tok_g.ravel(), group.ravel(), L * G).reshape(L, G)
            load = tok_g.sum(axis=1).astype(np.float64)  # (L, G)
            # the all-to-all follows the split: each GPU's share of an expert's tokens this batch
            batch_share = tok_g / np.maximum(counts, 1)[:, :, None]
    T = shape.tokens
    prefill = T - shape.decode
    attn = cost.attention_s(prefill, shape.decode, shape.pairs, G, kv_tokens=shape.kv_tokens) + \
        cost.layer_collectives_s(T)
    gate = cost.gate_s(T)
    # the all-to-all: each layer's traffic between the replica's GPUs (sim/world/network.py times it
    # on the links); none on one GPU, nor when every expert is sharded over the replica
    if isinstance(a2a_tokens, str):
        a2a_tokens = count_tokens(plan, None, G, rows=shape.rows)[1]
    a2a = a2a_tokens
    if a2a is not None and a2a.ndim == 2:
        # source counts (G, L*E) to the token-to-GPU assignment: the plan's placement (None), or
        # with replicated experts this batch's split (sim/world/token_split.py) as an (L, E, G) share
        a2a = (a2a, batch_share)
    pre = cost.iteration_s(prefill, shape.decode, shape.pairs, shape.kv_tokens, shape.sequences)
    return LayerCosts(comp=comp, load=load, computed=computed, attn=attn, gate=gate, a2a=a2a, pre=pre)


def _moe_load(cost: Any, kern: Any, tokens: np.ndarray, group: np.ndarray, L: int, G: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each (layer, GPU)'s fused MoE time (L, G) and tokens (L, G) of ``tokens`` (N,) computed
    where ``group`` (N,) says (layer * G + GPU): ``cost.moe_s`` and a bincount, or, with the
    walk's kernels under the analytic model, both in one compiled pass
    (:func:`sim.serving.compiled_walk.moe_owned`: the same sums in index order, then the same
    floats)."""
    if kern is not None and cost.__class__ is AnalyticCost:
        comp, load = kern.moe_owned(tokens, group, L * G, MOE_BLOCK_TOKENS,
                                    cost._expert_flops_per_token, cost._expert_weight_bytes,
                                    cost._act_bytes_per_token, cost.flops_s, cost.hbm_s,
                                    MOE_LAUNCHES * cost.hw.kernel_latency_s)
        return comp.reshape(L, G), load.reshape(L, G)
    return (cost.moe_s(tokens, group, L * G).reshape(L, G),
            np.bincount(group, weights=tokens, minlength=L * G).reshape(L, G))

