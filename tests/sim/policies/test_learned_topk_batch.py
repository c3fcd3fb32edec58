"""learned_topk's batched form (``next_layers``, what the simulator's compiled prefetch walk asks):
worked by hand on a 3-layer table, equal to the layer-by-layer calls (answers and accuracy
counters) on random tables, and none outside a simulator's batch."""

from __future__ import annotations

import numpy as np
import pytest

import sim.policies.prefetch.learned_topk as lt
from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext


class _Table:
    def __init__(self, top):
        self.top, self.mode, self.s_per_token = np.asarray(top), "causal", 0.8


def _policy(monkeypatch, top, truth, E):
    key = (f"ck{id(top)}", f"tr{id(top)}")
    monkeypatch.setitem(lt._TABLES, key, (_Table(top), truth))
    L, K = top.shape[1], top.shape[2]
    return PREFETCH.make("learned_topk", num_layers=L, num_experts=E, top_k=K,
                         checkpoint=key[0], trace_path=key[1])


def test_by_hand(monkeypatch):
    """Tokens 0 and 1, 3 layers, top-2. Layer 0 guesses layer 1: predicted (2, 3) | (1, 2) =
    {1, 2, 3}, true (2, 0) | (1, 3) = {0, 1, 2, 3}: 3 hits; layer 1 guesses layer 2: predicted
    (1, 3) | (0, 2), true (3, 2) | (0, 1): all four, 4 hits; layer 2 guesses nothing."""
    top = np.array([[[0, 1], [2, 3], [1, 3]], [[1, 2], [1, 2], [0, 2]]], dtype=np.int16)
    truth = np.array([[[0, 1], [2, 0], [3, 2]], [[1, 2], [1, 3], [0, 1]]])
    p = _policy(monkeypatch, top, truth, 4)
    ctx = PrefetchContext(request_id="r")
    assert p.next_layers(ctx, np.zeros((3, 4), dtype=bool)) is None  # (no batch yet)
    p.batch(np.array([0, 1]))
    assert p.next_layers(PrefetchContext(request_id="r", extra={"token": 0}),
                         np.zeros((3, 4), dtype=bool)) is None  # (the replay's token)
    ranked, n = p.next_layers(ctx, np.zeros((3, 4), dtype=bool))
    assert n.tolist() == [3, 4, 0]
    assert ranked[0, :3].tolist() == [1, 2, 3] and ranked[1, :4].tolist() == [0, 1, 2, 3]
    assert ranked.dtype == np.int64
    assert (p.hits, p.predicted, p.true) == (7, 7, 8)
    p.batch(np.array([2]))
    with pytest.raises(ConfigError, match=r"^learned_topk: token row 2 is past the 2 tokens of tr"):
        p.next_layers(ctx, np.zeros((3, 4), dtype=bool))


def test_two_layers_and_one(monkeypatch):
    """Two layers: layer 0 guesses layer 1 (rows 1, 2: predicted (1, 2) | (3, 3) = {1, 2, 3},
    true (1, 2) | (3, 0): 3 hits of 3, 4 true), layer 1 nothing. One layer: nothing at all."""
    top = np.array([[[0, 1], [0, 1]], [[1, 2], [1, 2]], [[0, 3], [3, 3]]])
    truth = np.array([[[0, 1], [0, 2]], [[1, 2], [1, 2]], [[0, 3], [3, 0]]])
    p = _policy(monkeypatch, top, truth, 4)
    p.batch(np.array([1, 2]))
    ranked, n = p.next_layers(PrefetchContext(request_id="r"), np.zeros((2, 4), dtype=bool))
    assert n.tolist() == [3, 0] and ranked[0, :3].tolist() == [1, 2, 3]
    assert (p.hits, p.predicted, p.true) == (3, 3, 4)
    one = _policy(monkeypatch, top[:, :1], truth[:, :1], 4)
    one.batch(np.array([0, 1, 2]))
    ranked, n = one.next_layers(PrefetchContext(request_id="r"), np.zeros((1, 4), dtype=bool))
    assert n.tolist() == [0] and ranked.shape == (1, 4)
    assert (one.hits, one.predicted, one.true) == (0, 0, 0)


@pytest.mark.parametrize("seed", range(8))
def test_equal_to_the_layer_by_layer_calls(seed, monkeypatch):
    """Random tables (1 to 5 layers, 2 to 70 experts, top-1 to top-3, batches of 0 to 40 rows,
    repeated rows): each layer's answer and the counters after all layers are the calls'."""
    rng = np.random.default_rng(seed)
    L, E = int(rng.integers(1, 6)), int(rng.integers(2, 71))
    K, N = int(rng.integers(1, min(3, E) + 1)), int(rng.integers(1, 60))
    top = rng.integers(0, E, size=(N, L, K))
    truth = rng.integers(0, E, size=(N, L, K))
    one, two = _policy(monkeypatch, top, truth, E), _policy(monkeypatch, top, truth, E)
    ctx = PrefetchContext(request_id="r")
    for T in (0, 1, 5, 40):
        rows = rng.integers(0, N, size=T)
        one.batch(rows)
        two.batch(rows)
        want = [one.next_layer(ctx, l, np.zeros(0, dtype=np.int64)).tolist()
                for l in range(L - 1)]  # (the walk asks layers with a next one)
        ranked, n = two.next_layers(ctx, np.zeros((L, E), dtype=bool))
        assert [ranked[l, :n[l]].tolist() for l in range(L - 1)] == want
        assert n[L - 1] == 0
        assert (one.hits, one.predicted, one.true) == (two.hits, two.predicted, two.true)


@pytest.mark.parametrize("cache", ["lru", "fifo", "keep_predicted"])
def test_whole_runs_on_the_compiled_walk_equal_the_objects(cache, monkeypatch):
    """EP 4 (one expert of a layer per GPU), the table's predictions a token's true experts at
    the next layer shifted by one for every third token: the compiled prefetch walk (from the
    second iteration, the policy's calls batched where it is the only observer) writes the
    objects' metrics.json."""
    from sim.serving import prefetch_walk
    from sim.serving.testing import random_pool, tiny_config
    from tests.sim.sim_test_helpers import answered, run_tiny

    pytest.importorskip("sim.serving.compiled_prefetch", reason="numba is not installed")
    L, E, K, seed = 4, 4, 2, 5
    truth = random_pool(L, E, K, entries=4, tokens=11, rng=np.random.default_rng(seed)).experts
    top = np.array(truth)
    top[::3] = (top[::3] + 1) % E
    key = ("ck_run", "tr_run")
    monkeypatch.setitem(lt._TABLES, key, (_Table(top), np.asarray(truth)))
    taken = answered(monkeypatch, prefetch_walk.PrefetchWalk, "run")
    batched = answered(monkeypatch, lt.LearnedTopK, "next_layers")
    out = []
    for arrays in (True, False):
        cfg = tiny_config(layers=L, experts=E, top_k=K, gpus_per_node=4, ep=4,
                          budget_fraction=0.5, token_budget=24)
        cfg.policy.cache, cfg.policy.prefetch = cache, "learned_topk"
        cfg.policy.prefetch_args = {"checkpoint": key[0], "trace_path": key[1]}
        cfg.policy.cache_arrays = arrays
        s, metrics = run_tiny(cfg, seed, n=14, output=6)
        out.append(metrics)
        if arrays:
            assert taken.count(True) == sum(r.iterations for r in s.replicas) - 1 > 0
            assert s.walk.pred.prefetch.predicted > 0
            # one batched call an iteration; none beside keep_predicted's predictor, which
            # observes every layer too (its calls interleave: layer by layer)
            want = 0 if cache == "keep_predicted" else taken.count(True)
            assert batched.count(True) == want
    assert out[0] == out[1]
