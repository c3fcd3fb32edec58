"""duplicate_destinations' shortcut where each GPU owns at most one expert of a layer: the same
array (or None) as gathering every token's destinations, on placements with and without a GPU
owning two experts of a layer, and pools with and without a repeated expert in a token's row."""

from __future__ import annotations

import numpy as np

from sim.world.traffic import duplicate_destinations


def _gathered(keys, lg_index, L, K, G):
    """The destinations gathered and compared pairwise (the computation without the shortcut)."""
    dst = lg_index.take(keys).reshape(len(keys), L, K)
    dup = np.zeros(dst.shape, dtype=bool)
    for k in range(1, K):
        for j in range(k):
            dup[:, :, k] |= dst[:, :, k] == dst[:, :, j]
    if not dup.any():
        return None
    return np.where(dup, dst, L * G).reshape(len(keys), L * K)


def _same(got, want):
    assert (got is None) == (want is None)
    if want is not None:
        assert np.array_equal(got.astype(np.int64), want)


def test_by_hand_one_expert_per_gpu():
    # 1 layer, 2 experts on GPUs 0 and 1, top-2: token 0 routes to experts 0 and 1 (two GPUs),
    # token 1 lists expert 1 twice: its second entry goes where its first went (index 0 * 2 + 1)
    lg = np.array([0, 1])
    assert duplicate_destinations(np.array([[0, 1]]), lg, 1, 2, 2) is None
    got = duplicate_destinations(np.array([[0, 1], [1, 1]]), lg, 1, 2, 2)
    assert got.tolist() == [[2, 2], [2, 1]]


def test_random_pools_and_placements():
    rng = np.random.default_rng(5)
    for _ in range(200):
        L, E, K = int(rng.integers(1, 5)), int(rng.integers(2, 9)), int(rng.integers(1, 4))
        K = min(K, E)
        G = int(rng.integers(1, 2 * E))
        if rng.random() < 0.5 and G >= E:  # every GPU at most one expert of a layer
            owner = np.stack([rng.permutation(G)[:E] for _ in range(L)])
        else:
            owner = rng.integers(0, G, (L, E))
        lg = (np.arange(L)[:, None] * G + owner).reshape(-1).astype(np.int64)
        T = int(rng.integers(1, 40))
        ex = np.argsort(rng.random((T, L, E)), axis=2)[:, :, :K]  # distinct experts
        if rng.random() < 0.3:  # a row that repeats an expert
            t, l = int(rng.integers(T)), int(rng.integers(L))
            ex[t, l, -1] = ex[t, l, 0]
        keys = (np.arange(L)[None, :, None] * E + ex).reshape(T, L * K)
        _same(duplicate_destinations(keys, lg, L, K, G), _gathered(keys, lg, L, K, G))
