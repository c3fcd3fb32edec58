"""noisy_oracle's batched forms (sim/policies/prefetch/noisy_oracle.py): ``corrupt_layers``
against ``corrupt`` at the edges of the dial, and ``next_layers`` against ``next_layer`` where
only one of recall and precision is 1 (the exact shortcut must not be taken there)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.policies.base import PREFETCH, PrefetchContext
from sim.policies.prefetch.noisy_oracle import corrupt, corrupt_layers


@pytest.mark.parametrize("precision", [1e-20, 1e-300, 0.01])
def test_a_precision_past_reach_predicts_every_expert_in_both_forms(precision):
    """Recall 1 keeps the s true experts; the false count floor(s (1 - p) / p + u) is past
    E - s (for p = 1e-20 past what an int64 holds), so the cap takes every other expert: all E
    predicted, in the batched form as layer by layer (an empty true set: nothing)."""
    truth = np.zeros((3, 6), dtype=bool)
    truth[0, [0, 1]] = True
    truth[1, [5]] = True
    ranked, n = corrupt_layers(truth, 1.0, precision, 4, np.array([1, 2, 3]), (7, 2))
    assert n.tolist() == [6, 6, 0]
    assert ranked[0].tolist() == ranked[1].tolist() == [0, 1, 2, 3, 4, 5]
    for i in range(3):
        want = corrupt(np.flatnonzero(truth[i]), 6, 1.0, precision, 4, i + 1, (7, 2))
        assert want.tolist() == ranked[i, :n[i]].tolist()


@pytest.mark.parametrize("recall,precision", [(0.5, 0.5), (1.0, 0.3), (0.4, 1.0)])
def test_corrupt_layers_reads_the_truth_as_truth_values(recall, precision):
    """Counts (tokens per expert) name the same true sets as their truth values: the same
    answers, row by row those of ``corrupt`` of the nonzero ids."""
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 4, size=(12, 10)) * (rng.random((12, 10)) < 0.5)
    layers = np.arange(1, 13)
    rc, nc = corrupt_layers(counts, recall, precision, 3, layers, (2, 9))
    rb, nb = corrupt_layers(counts > 0, recall, precision, 3, layers, (2, 9))
    assert nc.tolist() == nb.tolist()
    for i in range(12):
        want = corrupt(np.flatnonzero(counts[i]), 10, recall, precision, 3, i + 1, (2, 9))
        assert rc[i, :nc[i]].tolist() == rb[i, :nb[i]].tolist() == want.tolist()


def _policy(L, E, **kw):
    pol = PREFETCH.make("noisy_oracle", num_layers=L, num_experts=E, top_k=2, **kw)
    # 4 pool rows; row r uses experts (r + l) % E and (r + l + 1) % E at layer l
    ex = np.array([[[(r + l) % E, (r + l + 1) % E] for l in range(L)] for r in range(4)])
    pol.set_routing(ex)
    return pol, ex


def _used(ex, rows, L, E):
    used = np.zeros((L, E), dtype=bool)
    for l in range(L):
        used[l, ex[rows, l].ravel()] = True
    return used


def test_recall_zero_at_full_precision_predicts_nothing_in_the_batch():
    """Recall 0 keeps floor(0 + u) = 0 true experts and so adds none: no guess at any layer,
    though precision is 1 (the exact shortcut is for recall = precision = 1 only)."""
    L, E = 3, 6
    pol, ex = _policy(L, E, recall=0.0, precision=1.0)
    pol.batch(np.array([0, 2]))
    ranked, n = pol.next_layers(PrefetchContext(request_id="r"), _used(ex, [0, 2], L, E))
    assert n.tolist() == [0, 0, 0]


def test_full_recall_at_a_tiny_precision_predicts_every_expert_in_the_batch():
    """Recall 1, precision 0.01: the true experts and every other (the cap), at each layer but
    the last; the exact shortcut (the true set alone) is for precision 1 too."""
    L, E = 3, 6
    pol, ex = _policy(L, E, recall=1.0, precision=0.01)
    pol.batch(np.array([1, 3]))
    ranked, n = pol.next_layers(PrefetchContext(request_id="r"), _used(ex, [1, 3], L, E))
    assert n.tolist() == [6, 6, 0]
    assert ranked[0].tolist() == ranked[1].tolist() == list(range(6))


@pytest.mark.parametrize("recall,precision", [(1.0, 0.5), (0.5, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_batched_calls_equal_the_layer_by_layer_calls_where_one_rate_is_one(recall, precision):
    """With one of the two rates at 1 the batched form corrupts as ``next_layer`` does, for
    batches of 1 to 4 rows (each keyed by its first row and size)."""
    L, E = 4, 7
    pol, ex = _policy(L, E, recall=recall, precision=precision, seed=11)
    ctx = PrefetchContext(request_id="r")
    for rows in ([0], [1, 2], [3, 0, 2], [2, 1, 0, 3]):
        pol.batch(np.array(rows))
        used = _used(ex, rows, L, E)
        want = [pol.next_layer(ctx, l, np.flatnonzero(used[l])).tolist() for l in range(L)]
        ranked, n = pol.next_layers(ctx, used)
        assert [ranked[l, :n[l]].tolist() for l in range(L)] == want
