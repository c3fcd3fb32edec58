"""The batch's sums compiled (numba): :func:`batch_sums`, for
:func:`sim.serving.layer_costs.batch_shape`; reached as ``kern.batch_sums``
(:mod:`sim.serving.compiled_walk` re-exports it). No kernel calls it (numba's cache is
invalidated per file: a kernel's callees live in its file)."""

from __future__ import annotations

import numpy as np
from numba import njit


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
