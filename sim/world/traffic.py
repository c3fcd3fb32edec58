"""The all-to-all's traffic: which tokens go from which GPU to which, per layer, for the links
of :mod:`sim.world.network` to time.

The traffic (:func:`gpu_traffic`): a token lives on the GPU that holds it for attention. The
iteration's T tokens (in batch order) are spread evenly over the replica's G GPUs in contiguous
blocks, token i on local GPU ``i * G // T``: the batch is spread evenly over the data-parallel
ranks and, inside a tensor-parallel rank (whose GPUs all hold the rank's tokens after the
all-reduce), each GPU sends an equal share. At layer l the token goes to the GPU of each of its K
experts (the plan's placement: the single owner, or a replicated expert's ``share`` of its tokens
per GPU) and comes back (combine: the same flows reversed), once per destination GPU: a token
whose K experts sit on 2 GPUs crosses to those 2, not K times (with single owners; a replicated
expert's tokens, split by share, are still counted once per expert). A token to an expert on its
own GPU crosses no link. Bytes = tokens x hidden x 2 (bf16).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from sim.world.token_split import compiled_kernels

__all__ = ["BF16_BYTES", "count_tokens", "duplicate_destinations", "gpu_traffic", "pool_duplicates",
           "source_counts", "token_sources"]

#: bytes per hidden-state element moved by the all-to-all (bf16 activations)
BF16_BYTES = 2.0


def token_sources(T: int, G: int) -> np.ndarray:
    """(T,) the local GPU each of the batch's T tokens lives on: contiguous even blocks."""
    return (np.arange(T, dtype=np.int64) * G) // max(T, 1)


@lru_cache(maxsize=4096)
def _source_offsets(T: int, G: int, LE: int) -> np.ndarray:
    """(T, 1) int32: each token's source GPU x ``LE`` (read-only, shared between calls)."""
    out = (token_sources(T, G) * LE).astype(np.int32)[:, None]
    out.flags.writeable = False
    return out


def source_counts(keys_tok: np.ndarray, G: int, LE: int) -> np.ndarray:
    """(G, L*E) tokens per source GPU (:func:`token_sources`) and key, from ``keys_tok`` (T, L*K)
    the batch's keys ``layer * E + expert``; summed over GPUs it is the tokens per key."""
    T = len(keys_tok)
    if G == 1:
        return np.bincount(keys_tok.ravel(), minlength=LE)[None, :]
    if T < 512:  # one bincount over (source, key) pairs: fewer calls
        return np.bincount((_source_offsets(T, G, LE) + keys_tok).ravel(),
                           minlength=G * LE).reshape(G, LE)
    bounds = (np.arange(G + 1) * T + G - 1) // G  # token_sources' blocks: GPU g has [b_g, b_g+1)
    per = np.zeros((G, LE), dtype=np.int64)
    for g in range(G):
        lo, hi = bounds[g], bounds[g + 1]
        if hi > lo:
            per[g] = np.bincount(keys_tok[lo:hi].ravel(), minlength=LE)
    return per


def duplicate_destinations(keys: np.ndarray, lg_index: np.ndarray, L: int, K: int, G: int
                           ) -> np.ndarray | None:
    """(T, L*K) for tokens' keys ``keys`` (T, L*K) (``layer * E + expert``, a layer's K side by
    side) and each key's ``layer * G + GPU`` (``lg_index``, single owners): that index where
    an earlier of the token's experts at the layer sits on the same GPU (the token already goes
    there), else ``L * G``; None when no token has such a pair.

    Where each GPU owns at most one expert of a layer (Mixtral's 8 experts on 8 GPUs), two of a
    token's experts share a GPU only if they are the same expert: the keys are compared as they
    are (no gather of the destinations), and None when none repeats."""
    T = len(keys)
    by_layer = np.sort(np.asarray(lg_index).reshape(L, -1), axis=1)
    if not (by_layer[:, 1:] == by_layer[:, :-1]).any():  # (distinct owners in every layer)
        k3 = keys.reshape(T, L, K)
        if not any((k3[:, :, k] == k3[:, :, j]).any() for k in range(1, K) for j in range(k)):
            return None
    dtype = np.int16 if L * G < 2**15 else np.int32  # every index and L * G fit: taken in it
    dst = lg_index.astype(dtype).take(keys).reshape(T, L, K)  # (T, L, K)
    dup = np.zeros(dst.shape, dtype=bool)
    for k in range(1, K):
        for j in range(k):
            dup[:, :, k] |= dst[:, :, k] == dst[:, :, j]
    if not dup.any():
        return None
    return np.where(dup, dst, dtype(L * G)).reshape(T, L * K)


def pool_duplicates(keys: np.ndarray, lg_index: np.ndarray, L: int, K: int, G: int
                    ) -> np.ndarray | None:
    """:func:`duplicate_destinations` of the routing pool's keys, compiled from
    :data:`~sim.world.token_split.COMPILED_MIN_GPUS` GPUs (:func:`sim.world.compiled.dup_index`:
    the same array, or None)."""
    kern = compiled_kernels(G)
    if kern is None:
        return duplicate_destinations(keys, lg_index, L, K, G)
    out = np.empty(keys.shape, dtype=np.int16 if L * G < 2**15 else np.int32)
    return out if kern.dup_index(keys, lg_index, L, K, G, out) else None


def count_tokens(plan: Any, keys_tok: np.ndarray | None, G: int, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, Any]:
    """An iteration's tokens per key (L*E,), and what its all-to-all needs to know of them
    (None: no all-to-all, on one GPU or with every expert sharded over the replica).

    ``keys_tok`` (T, L*K): the batch's keys ``layer * E + expert``. With few tokens and a single
    owner per expert, the traffic itself (L, G, G), counted token by token (cost ~ T*L*K); else
    the :func:`source_counts` (G, L*E) (cost ~ G*L*E on top of the count per key), which
    :func:`gpu_traffic` turns into traffic with the placement's share.

    ``rows`` (T,): the tokens' pool rows, ``keys_tok`` then ``plan.pool_keys[rows]`` (or None:
    read from the pool): the repeated destinations are the pool's (``plan.pool_dups[rows]``, the
    same as :func:`duplicate_destinations` of the keys, a function of each token's keys), and
    a replica of :data:`~sim.world.token_split.COMPILED_MIN_GPUS` GPUs counts in one compiled
    pass over the rows (:func:`_count_compiled`): the same integers (with replicated experts
    the source counts as the (G, L*E) view of key-major int32 counts, ``km.T``: what the
    split's traffic reads, :meth:`sim.world.network._ReplicaNet.split_times`)."""
    L, E = plan.L, plan.E
    LE = L * E
    T = len(keys_tok) if rows is None else len(rows)
    if G // plan.tensor_parallel <= 1 or plan.moe_tp or T == 0:
        keys = plan.pool_keys[rows] if keys_tok is None else keys_tok
        return np.bincount(keys.ravel(), minlength=LE), None
    # a token may have 2 experts on one GPU (single owners; a replicated expert's share: per expert)
    dedup = plan.single_owner and getattr(plan, "pool_dups", None) is not None
    kern = None if rows is None else compiled_kernels(G)
    if kern is not None:
        return _count_compiled(kern, plan, rows, G)
    if keys_tok is None:
        keys_tok = plan.pool_keys[rows]

    def dups_of() -> np.ndarray | None:  # the batch's repeated destinations (None: none)
        if rows is None:
            return duplicate_destinations(keys_tok, plan.lg_index, L, plan.K, G)
        d = plan.pool_dups[rows]
        return d if (d < L * G).any() else None

    if plan.single_owner and T * plan.K < G * E:
        counts = np.bincount(keys_tok.ravel(), minlength=LE)
        dst = plan.lg_index.take(keys_tok)  # (T, L*K) layer * G + GPU
        idx = _source_offsets(T, G, L * G) + dst  # (T, L*K) src, layer, dst
        if dedup:  # a token's second expert on a GPU sends nothing more: to an extra bin
            dups = dups_of()
            if dups is not None:
                idx[dups.astype(np.int64) < L * G] = G * L * G
        m = np.bincount(idx.ravel(), minlength=G * L * G + 1)[:G * L * G].reshape(G, L, G)
        return counts, m.transpose(1, 0, 2)
    kern = compiled_kernels(G)
    if kern is not None:  # the same integers, counted in one compiled pass each
        sc = kern.count_sources(keys_tok, G, LE)
        if dedup:
            any_dup, dc = kern.count_dups(keys_tok, plan.lg_index, L, plan.K, G)
            if any_dup:
                return sc.sum(axis=0), gpu_traffic(plan, sc, dups=dc)
        return sc.sum(axis=0), sc
    sc = source_counts(keys_tok, G, LE)
    if dedup:
        dups = dups_of()
        if dups is not None:
            return sc.sum(axis=0), gpu_traffic(plan, sc, dups=source_counts(dups, G, L * G + 1))
    return sc.sum(axis=0), sc


#: a stand-in for ``pool_dups`` where a kernel does not read it (no repeats to take off)
_NO_DUPS = np.zeros((1, 1), dtype=np.int16)
#: rows per block of the pool's block prefix counts (:func:`sim.world.compiled.count_runs`): of
#: the keys (L*E wide: int32 4 bytes x L*E per block) and of the sends (L*G + 1 wide, runs cut
#: at the GPUs' bounds: shorter blocks)
KEY_BLOCK = 64
SEND_BLOCK = 8


def pool_tables(kern: Any, plan: Any, G: int) -> tuple:
    """What :func:`_count_compiled` reads of the pool, built once per plan (kept on it as
    ``plan.pool_blocks``): the block prefix counts of the keys (N // :data:`KEY_BLOCK` + 1,
    L*E) int32 and, with single owners, each pool token's (layer, GPU) sends
    (:func:`sim.world.compiled.send_index`: ``L * G`` where a repeat) and their block prefix
    counts (N // :data:`SEND_BLOCK` + 1, L*G + 1); else None for both."""
    dups = getattr(plan, "pool_dups", None)
    tab = getattr(plan, "pool_blocks", None)
    if tab is not None and tab[0] is plan.pool_keys and tab[1] is dups and \
            tab[2] is plan.lg_index and tab[3] == G:
        return tab[4:]
    L, E = plan.L, plan.E
    LG = L * G
    key_prefix = kern.block_prefix(plan.pool_keys, KEY_BLOCK, L * E)
    sends = send_prefix = None
    if plan.single_owner:
        dedup = dups is not None
        sends = np.empty(plan.pool_keys.shape, dtype=np.int16 if LG < 2**15 else np.int32)
        kern.send_index(plan.pool_keys, dups if dedup else _NO_DUPS, plan.lg_index, LG, dedup,
                        sends)
        send_prefix = kern.block_prefix(sends, SEND_BLOCK, LG + 1)
    plan.pool_blocks = (plan.pool_keys, dups, plan.lg_index, G, key_prefix, sends, send_prefix)
    return plan.pool_blocks[4:]


def _count_compiled(kern: Any, plan: Any, rows: np.ndarray, G: int) -> tuple[np.ndarray, Any]:
    """:func:`count_tokens` of the pool's ``rows`` (at least one), compiled
    (:func:`sim.world.compiled.count_runs`: a run of consecutive rows, a prefill chunk, mostly
    from the block prefix counts of :func:`pool_tables`), the same integers and arrays. With
    single owners the tokens each source GPU sends to each (layer, GPU) are counted directly
    from the pool's sends: the token-by-token path's traffic, and :func:`gpu_traffic`'s scatter
    of the source counts less the repeats (integers below 2**53 in float64: exact in any
    order); the source counts only where they are the answer, key-major with replicated
    experts (:func:`sim.world.compiled.count_layers`, with the totals)."""
    L, E, K = plan.L, plan.E, plan.K
    LE, LG, T = L * E, L * G, len(rows)
    rows = np.asarray(rows, dtype=np.int64)
    key_prefix, sends_idx, send_prefix = pool_tables(kern, plan, G)
    no_total = np.zeros(0, dtype=np.int64)
    if plan.single_owner:
        sends = np.zeros((G, LG + 1), dtype=np.int64)  # the last column: the repeats
        kern.count_runs(sends_idx, send_prefix, SEND_BLOCK, rows, G, True, no_total, sends)
        small = T * K < G * E
        if small or sends[:, LG].any():
            total = np.zeros((1, LE), dtype=np.int64)
            kern.count_runs(plan.pool_keys, key_prefix, KEY_BLOCK, rows, G, False, no_total,
                            total)
            m = np.ascontiguousarray(sends[:, :LG]) if small else sends[:, :LG].astype(np.float64)
            return total[0], m.reshape(G, L, G).transpose(1, 0, 2)
    if not plan.single_owner:  # the split's traffic reads the counts key by key (split_links)
        km = np.empty((LE, G), dtype=np.int32)  # (counts of at most T tokens)
        total = np.empty(LE, dtype=np.int64)
        kern.count_layers(plan.pool_keys, key_prefix, KEY_BLOCK, rows, G, E, km, total,
                          kern.PARALLEL_LAYERS)
        return total, km.T
    sc = np.zeros((G, LE), dtype=np.int64)
    kern.count_runs(plan.pool_keys, key_prefix, KEY_BLOCK, rows, G, True, no_total, sc)
    return sc.sum(axis=0), sc  # (integers: the same totals as counted alongside, and cheaper)


def gpu_traffic(plan: Any, src_counts: np.ndarray, share: np.ndarray | None = None,
                dups: np.ndarray | None = None, compiled: bool | None = None) -> np.ndarray:
    """The dispatch of each layer: (L, G, G) tokens from source GPU (axis 1) to expert GPU (axis 2).

    ``src_counts`` (G, L*E): :func:`source_counts` of the iteration's tokens; destinations by the
    plan's placement: ``share`` (L, E, G), the share of an expert's tokens each GPU computes (1 on
    its one owner; default ``plan.share``; a per-batch split of replicated experts passes its
    own, nonzero only where ``plan.share`` is: the compiled product reads the plan's holders
    ``pair_key``, ``pair_gpu`` only; or that share at those pairs only, (P,):
    :mod:`sim.world.pair_split`). ``dups`` (G, L*G + 1), single owners: per source GPU
    the tokens whose (layer, GPU) an earlier expert of theirs already sends them to
    (:func:`duplicate_destinations` counted by source; the last column: none), taken off: a
    token goes once to each GPU that holds any of its experts, not once per expert. The
    diagonal is traffic that stays on its GPU. This is the one place the token-to-GPU
    assignment enters the network model. ``compiled``: the product as
    :func:`sim.world.compiled.traffic_share` forms it, the same bytes (None: from
    :data:`~sim.world.token_split.COMPILED_MIN_GPUS` GPUs)."""
    L, E, G = plan.L, plan.E, plan.topo.expert_parallel
    if share is None and plan.single_owner:  # a scatter by owner (no BLAS, see _ReplicaNet)
        idx = (np.arange(G) * (L * G))[:, None] + plan.lg_index[None, :]  # (G, L*E) src, layer, dst
        m = np.bincount(idx.ravel(), weights=src_counts.ravel(), minlength=G * L * G)
        if dups is not None:
            m -= dups[:, :L * G].ravel()
        return m.reshape(G, L, G).transpose(1, 0, 2)
    if dups is not None:
        raise ValueError("gpu_traffic: dups are for single owners with the plan's placement")
    sh = plan.share if share is None else share  # (L, E, G)
    # BLAS forms the product as one chain per output for an even G and E <= 256 (measured:
    # an odd G's edge tiles sum otherwise): only there the compiled chain is the same bytes,
    # and only where this machine's BLAS is seen to form it so (chain_matches_blas)
    kern = compiled_kernels(G, compiled) if E <= 256 and G % 2 == 0 else None
    if kern is not None and (compiled or chain_matches_blas(kern, L, E, G)):
        return kern.traffic_share(src_counts, sh, getattr(plan, "pair_key", None),
                                  getattr(plan, "pair_gpu", None), L)
    if sh.ndim == 1:  # a share per holder pair: the dense (L, E, G) it stands for
        dense = np.zeros((L * E, G))
        dense[plan.pair_key, plan.pair_gpu] = sh
        sh = dense.reshape(L, E, G)
    return _blas_traffic(src_counts, sh, L, E, G)


def _blas_traffic(src_counts: np.ndarray, sh: np.ndarray, L: int, E: int, G: int) -> np.ndarray:
    per = src_counts.reshape(G, L, E).transpose(1, 0, 2).astype(np.float64)  # (L, G, E)
    return np.matmul(per, sh)  # (L, G, G)


#: (L, E, G) -> whether the compiled chain gave BLAS's bytes on this machine's probe
_CHAIN_OK: dict[tuple[int, int, int], bool] = {}


def chain_matches_blas(kern: Any, L: int, E: int, G: int) -> bool:
    """Whether :func:`sim.world.compiled.traffic_share` gives this machine's BLAS bytes for
    products of this shape: checked once per shape and process on a probe of random counts and
    shares (zeros included). A GEMM kernel's summation order depends on the shape and the CPU's
    kernel, not on the values; where it differs (another BLAS kernel, another CPU), the BLAS
    product stays, so the outputs never depend on whether numba is installed."""
    key = (L, E, G)
    ok = _CHAIN_OK.get(key)
    if ok is None:
        rng = np.random.default_rng(20261207)
        src = rng.integers(0, 64, size=(G, L * E))
        src[rng.random(src.shape) < 0.3] = 0
        sh = rng.random((L, E, G))
        sh[rng.random(sh.shape) < 0.5] = 0.0
        sh /= np.maximum(sh.sum(axis=2, keepdims=True), 1e-300)
        ok = _CHAIN_OK[key] = bool(np.array_equal(kern.traffic_share(src, sh),
                                                  _blas_traffic(src, sh, L, E, G)))
    return ok
