"""Prefetch / prediction policies and eMoE task-aware loading."""

from __future__ import annotations

import numpy as np
import pytest

from sim.policies import PREFETCH
from sim.policies.base import PrefetchContext
from sim.policies.prefetch.emoe_task import reroute
from traces.format import RoutingTrace, TraceMeta, make_tokens


def ctx(rid="r0", i=0, task="chat", **extra):
    return PrefetchContext(request_id=rid, task=task, request_index=i, extra=dict(extra))


def test_emoe_l_learns_transitions_from_training_trace():
    # layer 0 expert 1 is always followed by expert 3 at layer 1; expert 2 by 0
    ex = np.array([[[1], [3]], [[1], [3]], [[2], [0]], [[1], [2]]])  # (T=4, L=2, K=1)
    p = PREFETCH.make("emoe_l", num_layers=2, num_experts=4, top_k=1).fit(ex)
    assert p.next_layer(ctx(), 0, np.array([1])).tolist() == [3]
    assert p.next_layer(ctx(), 0, np.array([1, 2]), ).tolist() == [3, 0]  # scores 2, 1, 1 -> top 2
    assert p.next_layer(ctx(), 1, np.array([1])).tolist() == []  # last layer
    assert p.next_layer(ctx(), 0, np.array([0])).tolist() == []  # never seen: nothing


def test_emoe_l_learns_online_from_consecutive_layers():
    p = PREFETCH.make("emoe_l", num_layers=3, num_experts=4, top_k=1)
    c = ctx()
    for _ in range(2):
        p.observe(c, 0, np.array([[2]]))
        p.observe(c, 1, np.array([[1]]))
        p.observe(c, 2, np.array([[0]]))
    assert p.next_layer(c, 0, np.array([2])).tolist() == [1]
    assert p.next_layer(c, 1, np.array([1])).tolist() == [0]


def test_emoe_a_predicts_nothing_before_its_first_prediction_then_reruns_every_p():
    """Cold start: nothing observed, no prediction (it named every expert before, and the
    simulator then loaded all 1,664 of DeepSeek-V2-Lite's experts into 832 slots for each of the
    first 40 requests of the demo). The plan stays empty until the next rerun (request p)."""
    p = PREFETCH.make("emoe_a", num_layers=1, num_experts=4, top_k=1, period=2)
    assert p.on_request(ctx("a", 0)) == {} and p.reruns == 0
    p.observe(ctx("a", 0), 0, np.array([[3], [3], [1]]))
    # request 1: not a rerun (1 % 2 != 0): still no prediction
    assert p.on_request(ctx("b", 1)) == {}
    p.observe(ctx("b", 1), 0, np.array([[2], [3]]))
    # request 2 reruns on requests a and b: 3 (3 tokens), then 1 and 2 (1 each, smaller id first)
    assert p.on_request(ctx("c", 2))[0].tolist() == [3, 1, 2]
    assert p.reruns == 1
    # request 3: the same prediction stands
    assert p.on_request(ctx("d", 3))[0].tolist() == [3, 1, 2] and p.reruns == 1


def test_similarity_prefetches_the_closest_past_requests_next_layer():
    p = PREFETCH.make("similarity", num_layers=2, num_experts=4, top_k=1, num_predict=1)
    for rid, (a, b) in (("x", (0, 1)), ("y", (2, 3))):
        p.on_request(ctx(rid))
        p.observe(ctx(rid), 0, np.array([[a]]))
        p.observe(ctx(rid), 1, np.array([[b]]))
    p.on_request(ctx("z"))
    p.observe(ctx("z"), 0, np.array([[2]]))
    assert p.next_layer(ctx("z"), 0, np.array([2])).tolist() == [3]


def _trace():
    ex = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 0]], [[0, 3], [1, 2]]], dtype=np.int16)  # (3,2,2)
    return RoutingTrace(ex, None, make_tokens(["a", "a", "b"], [0, 1, 0], "prefill", "chat"),
                        TraceMeta("m", 2, 4, 2))


def test_perfect_oracles_read_the_future():
    tr = _trace()
    p = PREFETCH.make("perfect", num_layers=2, num_experts=4, top_k=2)
    with pytest.raises(Exception, match="future"):
        p.next_layer(ctx("a"), 0, np.array([0]))
    p.set_trace(tr)
    assert p.next_layer(ctx("a", token=1), 0, np.array([1, 2])).tolist() == [0, 3]
    q = PREFETCH.make("perfect_request", num_layers=2, num_experts=4, top_k=2)
    q.set_trace(tr)
    plan = q.on_request(ctx("a"))
    assert plan[0].tolist() == [1, 0, 2] and plan[1].tolist() == [3, 0, 2]


def test_perfect_prefetch_replay_hits_everything_after_first_layer():
    from sim.replay.cache import replay_plain

    tr = _trace()
    r = replay_plain(tr, "lru", 0.5, prefetch="perfect")
    # layer 1 is always prefetched exactly -> only layer 0 can miss
    assert r.per_layer_hit_rate[1] == 1.0
    assert r.prefetched > 0 and r.loads == r.misses + r.prefetched


def test_task_aware_expected_tokens_formula():
    # N_i = (sum W_j + T * W_o) * s * f_i per task, summed; f uniform (1/4) before observation
    p = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, top=2,
                      sensitivity={"sum": [1, 0], "qa": 1}, output_tokens={"sum": 10, "qa": 4})
    p.observe(ctx(task="qa"), 0, np.array([[1], [1], [1], [2]]))  # f(qa, layer 0) = (0, .75, .25, 0)
    N = p.expected_tokens([("sum", 20), ("sum", 30), ("qa", 8)])
    # sum: (50 + 2*10) * 1 * 0.25 = 17.5 at layer 0, 0 at layer 1 (insensitive)
    # qa:  (8 + 1*4) * f -> layer 0: (0, 9, 3, 0); layer 1: 12 * 0.25 = 3 each
    assert np.allclose(N[0], [17.5, 26.5, 20.5, 17.5])
    assert np.allclose(N[1], [3, 3, 3, 3])
    plan = p.on_request(ctx(task="qa", running=[("sum", 20), ("sum", 30), ("qa", 8)]))
    assert plan[0].tolist() == [1, 2] and plan[1].tolist() == [0, 1]
    # a task insensitive everywhere skips prediction
    q = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, sensitivity={"x": 0})
    assert q.on_request(ctx(task="x")) == {}


def test_reroute_to_best_resident_expert():
    resident = np.array([True, False, True, True])
    scores = np.array([0.1, 0.9, 0.5, 0.3])
    ex, moved = reroute(np.array([[1, 2], [0, 3]]), resident, scores)
    assert ex.tolist() == [[3, 2], [0, 3]] and moved == 1  # 1 absent -> best resident not chosen: 3
