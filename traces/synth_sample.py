"""The sampler of the fitted routing generator (:mod:`traces.synth`, where the model is described):
one task's experts for requests of given lengths, layer by layer.

Sampling is numpy over all tokens of a chunk of requests (about :data:`CHUNK_TOKENS` tokens), a
Python loop over layers and blocks of :data:`BLOCK_ROWS` tokens only (the previous-token noise
links are resolved by pointer jumping, not a loop over tokens). Fitting
(:mod:`traces.synth_fit`) samples through :func:`sample_chunk` with a target share, which takes
the whole-chunk path :func:`_sample_chunk_fit` and corrects the popularity bias as it goes.
"""

from __future__ import annotations

import numpy as np

from traces.synth_params import TaskModel

#: requests are sampled in chunks of about this many tokens (bounds memory to ~ chunk * E floats)
CHUNK_TOKENS = 1 << 16
#: rows of a chunk scored at a time when sampling (bounds the temporaries to ~ BLOCK_ROWS * E)
BLOCK_ROWS = 1024


def _pl_topk(w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, E) weights -> (n, k) distinct indices, Plackett-Luce order (exponential race)."""
    keys = rng.standard_exponential(w.shape) / w  # smallest k keys win
    idx = np.argpartition(keys, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def _prev_links(pos: np.ndarray, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise sharing at one layer: (root (T,) bool, src (T,) index of the root a token copies).

    A token at position > 0 copies the previous token's noise with probability rho; chains are
    resolved by pointer jumping.
    """
    T = len(pos)
    copy = (pos > 0) & (rng.random(T) < rho)  # (T,)
    ptr = np.arange(T)
    ptr[copy] -= 1
    while True:  # every link points to an earlier token: ends after log2(longest run) rounds
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    root = ~copy
    return root, (np.cumsum(root) - 1)[ptr]


def _topk_desc(s: np.ndarray, k: int) -> np.ndarray:
    """(n, E) scores -> (n, k) indices of the k highest, highest first: exactly
    ``np.argsort(s, axis=1)[:, : -k - 1 : -1]``. The values are sorted (a vectorised sort, much
    cheaper than an argsort or argpartition); a row whose k + 1 highest values are strictly
    increasing has one answer, its top k above the (k + 1)-th; a row with a tie there (or a NaN)
    is argsorted whole, so that ties resolve as argsort resolves them."""
    n, E = s.shape
    if k >= E:
        return np.argsort(s, axis=1)[:, : -k - 1: -1]
    hi = np.sort(s, axis=1)[:, E - k - 1:]  # (n, k + 1): the boundary, then the top k ascending
    good = (hi[:, 1:] > hi[:, :-1]).all(axis=1)
    mask = s > hi[:, :1]
    mask[~good] = False
    idx = (np.flatnonzero(mask) % E).reshape(-1, k)  # good rows' top k, by expert id
    top = np.empty((n, k), dtype=np.intp)
    rows = np.flatnonzero(good)
    v = s[rows[:, None], idx]
    top[rows] = np.take_along_axis(idx, np.argsort(v, axis=1)[:, ::-1], axis=1)
    if len(rows) < n:
        bad = np.flatnonzero(~good)
        top[bad] = np.argsort(s[bad], axis=1)[:, : -k - 1: -1]
    return top


def _gumbel(g: np.ndarray) -> None:
    """Uniforms (float32, in place) -> Gumbel noise ``-log(-log(max(u, 1e-30)))``."""
    for a in range(0, len(g), BLOCK_ROWS):
        b = g[a:a + BLOCK_ROWS]
        np.maximum(b, np.float32(1e-30), out=b)
        np.log(b, out=b)
        np.negative(b, out=b)
        np.log(b, out=b)
        np.negative(b, out=b)



def _chunk_layout(lens: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Requests of lengths ``lens``, tokens contiguous: (requests n, tokens T, each token's
    request (T,), each token's position in its request (T,))."""
    n = len(lens)
    T = int(lens.sum())
    ridx = np.repeat(np.arange(n), lens)  # (T,)
    pos = np.arange(T) - (np.cumsum(lens) - lens)[ridx]  # (T,)
    return n, T, ridx, pos


def sample_chunk(tm: TaskModel, bias: np.ndarray, lens: np.ndarray, K: int,
                  rng: np.random.Generator, target_share: np.ndarray | None = None,
                  ipf_iters: int = 6) -> np.ndarray:
    """(sum(lens), L, K) int16 experts for requests of the given lengths (tokens contiguous).

    ``target_share`` (L, E) (fitting only): after drawing layer l's noise, ``bias[l]`` is
    corrected in place by ``ipf_iters`` rounds of iterative proportional fitting (same noise,
    experts redrawn) so that the layer's expert shares match ``target_share[l]``; the request
    topics are then centred (token-weighted) so that the correction fits the expected shares,
    not the chance popularity shift of the requests drawn.

    Without ``target_share`` the scores are computed :data:`BLOCK_ROWS` tokens at a time into
    reused buffers (the same float operations in the same order, so the same experts).
    """
    if target_share is not None:
        return _sample_chunk_fit(tm, bias, lens, K, rng, target_share, ipf_iters)
    L, E = bias.shape
    n, T, ridx, pos = _chunk_layout(lens)
    out = np.empty((T, L, K), dtype=np.int16)  # (T, L, K)
    prev = np.empty((T, K), dtype=np.intp)  # the previous layer's experts
    cur = np.empty((T, K), dtype=np.intp)
    beta, sigma = np.float32(tm.beta), np.float32(tm.sigma)
    inv_k = np.float32(1.0 / K)
    gbuf = np.empty(T * E, dtype=np.float32)  # the layer's noise, reused across layers
    B = min(BLOCK_ROWS, T)
    sbuf = np.empty((B, E), dtype=np.float32)
    abuf = np.empty((B, E), dtype=np.float32)
    tbuf = np.empty((B, E), dtype=np.float32)
    for l in range(L):
        root, src = _prev_links(pos, tm.rho, rng)
        g = gbuf[: int(root.sum()) * E].reshape(-1, E)  # (roots, E) -> Gumbel
        rng.random(dtype=np.float32, out=g)
        _gumbel(g)
        rs = None
        if sigma > 0:
            r = rng.standard_normal((n, E), dtype=np.float32)  # (n, E) request topic
            rs = sigma * r
        P = tm.trans[l - 1] if l > 0 and beta > 0 else None  # (E, E)
        for a in range(0, T, B):
            b = min(a + B, T)
            s, m = sbuf[: b - a], b - a
            np.take(g, src[a:b], axis=0, out=s, mode="clip")  # (m, E); in range: no check
            s += bias[l]
            if rs is not None:
                s += np.take(rs, ridx[a:b], axis=0, out=tbuf[:m], mode="clip")
            if P is not None:
                acc, tmp = abuf[:m], tbuf[:m]  # sum of the rows of the previous layer's experts
                np.take(P, prev[a:b, 0], axis=0, out=acc, mode="clip")
                for k in range(1, K):
                    np.take(P, prev[a:b, k], axis=0, out=tmp, mode="clip")
                    acc += tmp
                acc *= inv_k
                np.log(acc, out=acc)
                acc *= beta
                s += acc
            cur[a:b] = _topk_desc(s, K)  # (m, K) highest scores first
        out[:, l] = cur
        prev, cur = cur, prev
    return out


def _sample_chunk_fit(tm: TaskModel, bias: np.ndarray, lens: np.ndarray, K: int,
                      rng: np.random.Generator, target_share: np.ndarray,
                      ipf_iters: int) -> np.ndarray:
    """:func:`sample_chunk` with ``target_share`` (fitting): the whole chunk at once."""
    L, E = bias.shape
    n, T, ridx, pos = _chunk_layout(lens)
    out = np.empty((T, L, K), dtype=np.int16)  # (T, L, K)
    prev = None
    beta, sigma = np.float32(tm.beta), np.float32(tm.sigma)
    inv_k = np.float32(1.0 / K)
    for l in range(L):
        root, src = _prev_links(pos, tm.rho, rng)
        g = rng.random((int(root.sum()), E), dtype=np.float32)  # (roots, E) -> Gumbel
        _gumbel(g)
        s = g[src]  # (T, E)
        s += bias[l]
        if sigma > 0:
            r = rng.standard_normal((n, E), dtype=np.float32)  # (n, E) request topic
            r -= (lens[:, None] * r).sum(axis=0) / np.float32(T)  # no net popularity shift
            s += sigma * r[ridx]
        if l > 0 and beta > 0:
            P = tm.trans[l - 1]  # (E, E)
            acc = P[prev[:, 0]]  # (T, E) sum of the rows of the previous layer's experts
            for k in range(1, K):
                acc += P[prev[:, k]]
            acc *= inv_k
            np.log(acc, out=acc)
            acc *= beta
            s += acc
        s -= bias[l]
        for _ in range(ipf_iters):
            top = np.argpartition(s + bias[l], E - K, axis=1)[:, E - K:]  # (T, K) the top-K set
            share = (np.bincount(top.reshape(-1), minlength=E) + 0.5) / (T * K + 0.5 * E)
            bias[l] += np.log(target_share[l] / share).astype(np.float32)
        s += bias[l]
        top = _topk_desc(s, K)  # (T, K) highest scores first
        out[:, l] = top
        prev = top
    return out


def sample_task(tm: TaskModel, lens: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """(sum(lens), L, K) int16, requests in chunks of about CHUNK_TOKENS tokens."""
    lens = np.asarray(lens, dtype=np.int64)
    bias = tm.bias()
    ends = np.cumsum(lens)
    parts, lo = [], 0
    while lo < len(lens):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + CHUNK_TOKENS, side="right")))
        parts.append(sample_chunk(tm, bias, lens[lo:hi], K, rng))
        lo = hi
    return np.concatenate(parts) if len(parts) > 1 else parts[0]
