"""The analytic cost model's per-iteration scalars compiled (numba), with the batch's sums they
are computed from: :func:`batch_sums` (:func:`sim.serving.layer_costs.batch_shape`'s integers)
and :func:`batch_costs` (the iteration's attention block per layer, gate, and the time besides
its MoE layers: :meth:`AnalyticCost.attention_s` + :meth:`AnalyticCost.layer_collectives_s`,
:meth:`AnalyticCost.gate_s`, :meth:`AnalyticCost.iteration_s`) in one call.

The kernels repeat :class:`sim.cost.analytic.AnalyticCost`'s float operations in its order (no
fast-math): Python's int-by-int true division is the correctly rounded quotient, as numba's
division of the two exactly converted floats (integers below 2**53), and a product of Python
ints that a float then multiplies is the same float as the product of their exact float forms.
tests/sim/cost/test_compiled_analytic.py holds them to the methods' bits on random models.
The parameters come from :func:`cost_params`, here: a kernel reads no other file's constants
(numba's disk cache is invalidated by an edit of the kernel's own file only). Imported lazily,
with the walk's kernels (:mod:`sim.serving.compiled_walk` re-exports both kernels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

#: cost_params' slots
(P_LATENCY, P_FLOPS_S, P_HBM_S, P_HIDDEN, P_EXPERTS, P_WBYTES, P_DENSE_READ, P_ATTN_PARAMS,
 P_BLOCK_PARAMS, P_ATTN_LAUNCHES, P_SHARED_LAUNCHES, P_ELEMENTWISE, P_PAIR_FLOPS, P_KV_BYTES,
 P_LAYER_OVERHEAD, P_ITER_OVERHEAD, P_TP, P_GPUS, P_DENSE_LAYERS, P_DENSE_INTER, P_VOCAB,
 P_LINK_BW, P_LINK_LAT, N_PARAMS) = range(24)


def cost_params(cost: Any) -> np.ndarray:
    """An :class:`~sim.cost.analytic.AnalyticCost`'s figures that :func:`batch_costs` reads
    (float64; integers below 2**53, exact)."""
    from sim.cost.analytic import ATTENTION_LAUNCHES, ELEMENTWISE_PASSES

    m, par, hw = cost.model, cost.par, cost.hw
    bw, lat = cost._link()
    p = np.zeros(N_PARAMS)
    p[P_LATENCY], p[P_FLOPS_S], p[P_HBM_S] = hw.kernel_latency_s, cost.flops_s, cost.hbm_s
    p[P_HIDDEN], p[P_EXPERTS], p[P_WBYTES] = m.hidden_size, m.num_experts, cost.wbytes
    p[P_DENSE_READ], p[P_ATTN_PARAMS] = cost.dense_read, cost._attn_params
    p[P_BLOCK_PARAMS] = cost._attn_params + cost._shared_params  # (attention_s' sum, once)
    p[P_ATTN_LAUNCHES] = ATTENTION_LAUNCHES
    p[P_SHARED_LAUNCHES] = ATTENTION_LAUNCHES + (2 if m.shared_experts else 0)
    p[P_ELEMENTWISE], p[P_PAIR_FLOPS] = ELEMENTWISE_PASSES, cost._attn_flops_per_pair
    p[P_KV_BYTES], p[P_LAYER_OVERHEAD] = cost._kv_bytes_per_ctx, cost.layer_overhead_s
    p[P_ITER_OVERHEAD], p[P_TP], p[P_GPUS] = cost.iteration_overhead_s, par.tp, par.gpus
    p[P_DENSE_LAYERS], p[P_DENSE_INTER] = m.dense_layers, m.dense_intermediate_size
    p[P_VOCAB], p[P_LINK_BW], p[P_LINK_LAT] = m.vocab_size, bw, lat
    return p


@njit(cache=True)
def batch_sums(start, alloc, tile):  # pragma: no cover - compiled
    """layer_costs.batch_shape's sums of a batch (requests from positions ``start``, ``alloc``
    tokens each): tokens, causal (query, key) pairs, KV tokens read with query tiles of ``tile``
    (analytic.kv_read_tokens) and decode tokens. Integers: exact in any order."""
    total = 0
    pairs = 0
    kv = 0
    decode = 0
    for b in range(alloc.shape[0]):
        a = np.int64(alloc[b])
        s = np.int64(start[b])
        total += a
        pairs += a * s + a * (a + 1) // 2
        tiles = -(-a // tile)
        full = max(tiles - 1, 0)
        kv += tiles * s + tile * full * (full + 1) // 2 + (a if tiles > 0 else 0)
        if a == 1:
            decode += 1
    return total, pairs, kv, decode


@njit(cache=True)
def roof(p, flops, nbytes, launches):  # pragma: no cover - compiled
    """AnalyticCost._roof."""
    a = flops / p[P_FLOPS_S]
    b = nbytes / p[P_HBM_S]
    return launches * p[P_LATENCY] + (b if b > a else a)


@njit(cache=True)
def attention_block(p, tokens, pairs, kv_tokens, params, launches, gpus):  # pragma: no cover
    """AnalyticCost._attention_block (``tokens``, ``pairs``, ``kv_tokens``, ``gpus``: int64)."""
    tp = min(np.int64(p[P_TP]), gpus)
    dp = max(1, gpus // tp)
    h = p[P_HIDDEN]
    t_gpu = tokens / dp
    gemm = roof(p, 2.0 * params * tokens / gpus,
                params * p[P_DENSE_READ] / tp + t_gpu * h * 2 * 2, launches - 1)
    attn = roof(p, p[P_PAIR_FLOPS] * pairs / gpus, kv_tokens / dp * p[P_KV_BYTES], 1)
    elementwise = p[P_ELEMENTWISE] * t_gpu * h * 2 * 2 / p[P_HBM_S]
    return gemm + attn + elementwise


@njit(cache=True)
def layer_collectives(p, tokens):  # pragma: no cover - compiled
    """AnalyticCost.layer_collectives_s (two all_reduce_s over the TP group)."""
    tp = np.int64(p[P_TP])
    if tp <= 1 or tokens == 0:
        return 0.0
    dp = max(1, np.int64(p[P_GPUS]) // tp)
    nbytes = tokens / dp * p[P_HIDDEN] * 2.0
    return 2.0 * (p[P_LINK_LAT] + 2.0 * (tp - 1) / tp * nbytes / p[P_LINK_BW])


@njit(cache=True)
def batch_costs(start, alloc, tile, p, shards):  # pragma: no cover - compiled
    """:func:`batch_sums` of the batch, then its attention block per layer (with the layer's
    collectives), gate and the time besides its MoE layers, on ``shards`` GPUs: the tokens, the
    pairs, the KV tokens, the decode tokens, then those three times."""
    T, pairs, kv, decode = batch_sums(start, alloc, tile)
    if T == 0:
        return T, pairs, kv, decode, 0.0, 0.0, 0.0
    prefill = T - decode
    h = p[P_HIDDEN]
    gpus = np.int64(p[P_GPUS])
    tp = np.int64(p[P_TP])
    dp = max(1, gpus // tp)
    # attention_s(prefill, decode, pairs, shards, kv) + layer_collectives_s(T)
    tokens = prefill + decode
    block = attention_block(p, tokens, pairs, kv, p[P_BLOCK_PARAMS],
                            np.int64(p[P_SHARED_LAUNCHES]), max(1, shards))
    if p[P_LAYER_OVERHEAD]:
        block = block + p[P_LAYER_OVERHEAD]
    attn = block + layer_collectives(p, T)
    # gate_s(T)
    t = T / dp
    gate = roof(p, 2.0 * t * h * p[P_EXPERTS],
                h * p[P_EXPERTS] * p[P_WBYTES] + t * h * 2, 1)
    # iteration_s(prefill, decode, pairs, kv, sequences)
    seqs = alloc.shape[0]
    t_gpu = tokens / dp
    pre = p[P_ITER_OVERHEAD] + roof(p, 0.0, t_gpu * h * 2 * 2, 1)
    if p[P_DENSE_LAYERS]:
        mlp = 3.0 * h * p[P_DENSE_INTER]
        per = attention_block(p, tokens, pairs, kv, p[P_ATTN_PARAMS],
                              np.int64(p[P_ATTN_LAUNCHES]), gpus) + \
            roof(p, 2.0 * mlp * tokens / gpus, mlp * p[P_DENSE_READ] / tp, 2) + \
            layer_collectives(p, tokens)
        pre += p[P_DENSE_LAYERS] * per
    lm = p[P_VOCAB] * h
    pre += roof(p, 2.0 * lm * seqs / gpus, lm * p[P_WBYTES] / tp +
                seqs / dp * p[P_VOCAB] * 4.0 / tp, 2)
    return T, pairs, kv, decode, attn, gate, pre
