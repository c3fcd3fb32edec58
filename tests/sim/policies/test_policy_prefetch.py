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


# ---- hand-worked figures per prefetch policy (the mutation tests' reach: benchmarks/mutation_score.py)

def test_emoe_l_fit_counts_every_pair_of_a_tokens_consecutive_layers():
    """fit on one token of top-2 over 3 layers: experts (0, 1), then (2, 3), then (1, 2). Layer 0
    -> 1 pairs 0-2, 0-3, 1-2, 1-3; layer 1 -> 2 pairs 2-1, 2-2, 3-1, 3-2 (once each)."""
    p = PREFETCH.make("emoe_l", num_layers=3, num_experts=4, top_k=2)
    assert p.M.shape == (2, 4, 4) and not p.M.any()
    p.fit(np.array([[[0, 1], [2, 3], [1, 2]]]))
    assert np.argwhere(p.M[0]).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    assert np.argwhere(p.M[1]).tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]
    assert p.M.sum() == 8
    # from layer 0's (0, 1): 2 and 3 score 2 each; n = top_k x 2 experts given = 4, but only
    # two have a positive score
    assert p.next_layer(ctx(), 0, np.array([0, 1])).tolist() == [2, 3]
    assert p.next_layer(ctx(), 1, np.array([3])).tolist() == [1, 2]
    assert p.next_layer(ctx(), 2, np.array([1])).tolist() == []  # the last layer


def test_emoe_l_pairs_only_consecutive_layers_of_one_request_and_token_count():
    """observe pairs the experts of layer l - 1 and l of the same request, token by token (the
    same number of tokens); anything else starts afresh. With ``learn_online`` off nothing is
    learned."""
    p = PREFETCH.make("emoe_l", num_layers=3, num_experts=4, top_k=1)
    p.observe(ctx("a"), 0, np.array([[0], [1]]))
    p.observe(ctx("a"), 1, np.array([[2], [3]]))  # pairs 0-2, 1-3
    p.observe(ctx("b"), 2, np.array([[0], [0]]))  # another request: no pair
    p.observe(ctx("b"), 0, np.array([[1], [1]]))
    p.observe(ctx("b"), 2, np.array([[3], [3]]))  # layer 2 after 0: no pair
    p.observe(ctx("c"), 0, np.array([[1], [1]]))
    p.observe(ctx("c"), 1, np.array([[0]]))  # 1 token after 2: no pair
    p.observe(ctx("c"), 2, np.array([2]))  # one token, 1-d: pair 0-2 at layer 1
    assert np.argwhere(p.M[0]).tolist() == [[0, 2], [1, 3]] and p.M[0].sum() == 2
    assert np.argwhere(p.M[1]).tolist() == [[0, 2]] and p.M[1].sum() == 1
    q = PREFETCH.make("emoe_l", num_layers=3, num_experts=4, top_k=1, learn_online=False)
    q.observe(ctx("a"), 0, np.array([[0]]))
    q.observe(ctx("a"), 1, np.array([[2]]))
    assert not q.M.any() and q._prev is None


def test_emoe_l_predicts_num_predict_capped_by_max_predict():
    """Layer 0 -> 1 counts from 0: 3 x expert 1, 2 x expert 3, 1 x expert 2 (fit). By default
    n = top_k x experts given (2 x 1); ``num_predict`` sets it, ``max_predict`` caps it, at most
    the experts of a layer; ties go to the smaller id."""
    ex = np.array([[[0], [1]]] * 3 + [[[0], [3]]] * 2 + [[[0], [2]]])
    def make(**kw):
        return PREFETCH.make("emoe_l", num_layers=2, num_experts=4, top_k=2, **kw).fit(ex)
    assert make().next_layer(ctx(), 0, np.array([0])).tolist() == [1, 3]
    assert make().next_layer(ctx(), 0, np.array([0, 0, 2])).tolist() == [1, 3, 2]
    assert make(num_predict=1).next_layer(ctx(), 0, np.array([0])).tolist() == [1]
    assert make(num_predict=0).next_layer(ctx(), 0, np.array([0])).tolist() == []
    assert make(num_predict=9).next_layer(ctx(), 0, np.array([0])).tolist() == [1, 3, 2]
    assert make(max_predict=1).next_layer(ctx(), 0, np.array([0, 2])).tolist() == [1]
    assert make(num_predict=3, max_predict=2).next_layer(ctx(), 0, np.array([0])).tolist() == [1, 3]
    with pytest.raises(Exception, match="emoe_l: num_predict must be >= 0, got -1"):
        make(num_predict=-1)
    assert PREFETCH.make("emoe_l", num_layers=1, num_experts=4, top_k=1).M.shape == (0, 4, 4)


def test_similarity_refresh_library_and_default_width():
    """Two past requests: x used (0 at layer 0, 1 at layer 1, 2 tokens each), y (2, then 3 and
    0). Default num_predict = 2 x top_k = 2: matched to y, layer 1's experts are 3, 0 (y's
    counts 1 each: smaller id first -> 0, 3). With refresh 2 the match made at the first call
    stands until two more layer steps are observed; the library keeps max_history requests."""
    p = PREFETCH.make("similarity", num_layers=2, num_experts=4, top_k=1, refresh=2, max_history=2)
    assert p.num_predict == 2 and p.next_layer(ctx("x"), 0, np.array([0])).tolist() == []
    for rid, l0, l1 in (("x", [[0], [0]], [[1], [1]]), ("y", [[2]], [[3], [0]])):
        p.on_request(ctx(rid))
        p.observe(ctx(rid), 0, np.array(l0))
        p.observe(ctx(rid), 1, np.array(l1))
    p.on_request(ctx("z"))
    assert len(p._lib) == 2 and p._lib_raw[1].tolist() == [[0, 0, 1, 0], [1, 0, 0, 1]]
    r = 2 ** -0.5  # x's counts (2 at expert 0, 2 at 4 + 1) over their norm
    assert np.allclose(p._lib[0], [r, 0, 0, 0, 0, r, 0, 0])
    p.observe(ctx("z"), 0, np.array([[2]]))
    assert p.next_layer(ctx("z"), 0, np.array([2])).tolist() == [0, 3]  # matched y
    p.observe(ctx("z"), 0, np.array([[0], [0], [0]]))  # now closer to x, one step since
    assert p.next_layer(ctx("z"), 0, np.array([0])).tolist() == [0, 3]  # the match stands
    p.observe(ctx("z"), 0, np.array([[0]]))  # two steps since the match: re-matched to x
    assert p.next_layer(ctx("z"), 0, np.array([0])).tolist() == [1]
    assert p.next_layer(ctx("z"), 1, np.array([1])).tolist() == []  # the last layer
    p.on_request(ctx("w"))  # z joins the library; x, the oldest, leaves (max_history 2)
    assert len(p._lib) == 2 and p._lib_raw[0].tolist() == [[0, 0, 1, 0], [1, 0, 0, 1]]
    p.on_request(ctx("v"))  # w observed nothing: not added
    assert len(p._lib) == 2 and p._lib_raw[0].tolist() == [[0, 0, 1, 0], [1, 0, 0, 1]]
    for bad in ({"max_history": 0}, {"refresh": 0}):
        with pytest.raises(Exception, match="similarity: max_history and refresh must be >= 1"):
            PREFETCH.make("similarity", num_layers=2, num_experts=4, top_k=1, **bad)


def _splitmix_ref(seed, layer, key, slot):
    """splitmix64 of (seed, layer, key, slot) on Python ints (the module doc's formula)."""
    m, g = (1 << 64) - 1, 0x9E3779B97F4A7C15

    def mix(x):
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & m
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & m
        return x ^ (x >> 31)

    h = seed & m
    for part in (layer, key[0] & m, key[1] & m):
        h = mix(h ^ ((part + g) & m))
    return mix(h ^ ((slot * g) & m))


def test_noisy_oracle_hash_is_splitmix64():
    """The finaliser gives splitmix64's published first output for seed 0 (0xE220A8397B1DCDAF,
    the mix of 0 + the golden gamma); step_hash equals the formula on Python ints, negative keys
    taken mod 2**64."""
    from sim.policies.prefetch.noisy_oracle import _G, _mix, step_hash

    assert int(_mix(np.array([_G]))[0]) == 0xE220A8397B1DCDAF
    for seed, layer, key in ((0, 0, (0, 0)), (7, 3, (11, 1)), (2**40 + 5, 1, (3, -1))):
        got = step_hash(seed, layer, key, np.arange(5)).tolist()
        assert got == [_splitmix_ref(seed, layer, key, s) for s in range(5)]


def test_noisy_oracle_keeps_and_adds_by_stochastic_rounding():
    """True set S = {1, 4, 6, 9} of E = 16, recall 0.3, precision 0.4 over 2000 steps: kept =
    floor(1.2 + u) is 1 or 2 (mean 1.2), all from S; false = floor(kept x 1.5 + u) outside S:
    1 or 2 (mean 1.5) after one kept, exactly 3 after two. The kept of a step are the first of
    one order of S: recall 0.6's contain recall 0.3's."""
    from sim.policies.prefetch.noisy_oracle import corrupt

    S = np.array([1, 4, 6, 9])
    n_kept, false_after_one = [], []
    for t in range(2000):
        out = corrupt(S, 16, 0.3, 0.4, 7, 2, (t, 1))
        assert out.dtype == np.int64 and out.tolist() == sorted(set(out.tolist()))
        k, f = np.intersect1d(out, S), np.setdiff1d(out, S)
        n_kept.append(len(k))
        if len(k) == 1:
            assert len(f) in (1, 2)
            false_after_one.append(len(f))
        else:
            assert len(k) == 2 and len(f) == 3
        assert set(k.tolist()) <= set(corrupt(S, 16, 0.6, 1.0, 7, 2, (t, 1)).tolist())
    assert abs(np.mean(n_kept) - 1.2) < 0.05
    assert abs(np.mean(false_after_one) - 1.5) < 0.06
    # recall 1, precision 1: S itself; recall 0: nothing; a precision past reach: every expert
    assert corrupt(S, 16, 1.0, 1.0, 0, 1, (5, 1)).tolist() == [1, 4, 6, 9]
    assert corrupt(S, 16, 0.0, 0.5, 0, 1, (5, 1)).tolist() == []
    assert corrupt(np.array([1, 4]), 6, 1.0, 0.01, 0, 1, (5, 1)).tolist() == [0, 1, 2, 3, 4, 5]
    assert corrupt(np.zeros(0, dtype=np.int64), 6, 1.0, 0.5, 0, 1, (5, 1)).tolist() == []


def test_noisy_oracle_setup_and_perfect_at_full_accuracy():
    """At recall = precision = 1 it is the perfect oracle; bad rates are errors naming the bound;
    its outputs depend on the seed, the layer and the step only."""
    tr = _trace()
    p = PREFETCH.make("noisy_oracle", num_layers=2, num_experts=4, top_k=2)
    p.set_trace(tr)
    assert p.next_layer(ctx("a", token=1), 0, np.array([1, 2])).tolist() == [0, 3]
    assert p.next_layer(ctx("a", token=1), 1, np.array([0, 3])).tolist() == []
    for kw, msg in (({"recall": -0.1}, "expected 0 <= recall <= 1"),
                    ({"recall": 1.1}, "expected 0 <= recall <= 1"),
                    ({"precision": 0.0}, "expected 0 < precision <= 1"),
                    ({"precision": 1.5}, "expected 0 < precision <= 1")):
        with pytest.raises(Exception, match=msg):
            PREFETCH.make("noisy_oracle", num_layers=2, num_experts=4, top_k=2, **kw)
    q = PREFETCH.make("noisy_oracle", num_layers=2, num_experts=4, top_k=2, recall=0.0,
                      precision=1.0)
    q.set_trace(tr)
    assert q.recall == 0.0 and q.next_layer(ctx("a", token=1), 0, np.array([1])).tolist() == []
    r = PREFETCH.make("noisy_oracle", num_layers=2, num_experts=4, top_k=2, recall=1.0,
                      precision=0.5, seed=3)
    r.set_trace(tr)
    # token 1's layer 1: S = {0, 3}, kept both, false = floor(2 + u) = 2: every expert
    assert r.next_layer(ctx("a", token=1), 0, np.array([1])).tolist() == [0, 1, 2, 3]


def test_perfect_lead_and_the_simulators_batch():
    """``lead`` d names layer l + d's experts at layer l (none past the last layer); the batch
    form returns the union of the batch rows' experts; a request without a batch or token, its
    rows' union; an unknown request or no trace is an error."""
    tr = _trace()  # tokens (a: 0, 1; b: 2); layer 1: (2, 3), (3, 0), (1, 2)
    p = PREFETCH.make("perfect", num_layers=3, num_experts=4, top_k=2, lead=2)
    ex3 = np.concatenate([tr.experts, tr.experts[:, :1]], axis=1)  # (3, 3, 2): layer 2 = layer 0
    p.set_routing(ex3)
    p.batch(np.array([0, 2]))
    assert p.next_layer(ctx("a"), 0, np.array([0])).tolist() == [0, 1, 3]  # layer 2 of rows 0, 2
    assert p.next_layer(ctx("a"), 1, np.array([0])).tolist() == []
    q = PREFETCH.make("perfect", num_layers=2, num_experts=4, top_k=2)
    q.set_trace(tr)
    assert q.next_layer(ctx("a"), 0, np.array([0])).tolist() == [0, 2, 3]  # request a's layer 1
    assert q.next_layer(ctx("b"), 0, np.array([0])).tolist() == [1, 2]
    with pytest.raises(Exception, match="request 'zz' is not in the trace"):
        q._rows(ctx("zz"))
    for lead in (0, 3):
        with pytest.raises(Exception, match=f"perfect: lead={lead}; expected 1 <= lead < 3"):
            PREFETCH.make("perfect", num_layers=3, num_experts=4, top_k=2, lead=lead)
    r = PREFETCH.make("perfect_request", num_layers=2, num_experts=4, top_k=2)
    with pytest.raises(Exception, match="perfect_request.*reads the future"):
        r.on_request(ctx("a"))
    r.set_trace(tr)
    plan = r.on_request(ctx("b"))
    assert plan[0].tolist() == [0, 3] and plan[1].tolist() == [1, 2]


def test_emoe_a_window_set_size_and_bad_arguments():
    """window 2 keeps the last two finished prompts; set_size cuts the ranking; each observe
    adds its tokens to the prompt's layer; period and window below 1 are errors."""
    p = PREFETCH.make("emoe_a", num_layers=2, num_experts=4, top_k=1, period=1, window=2,
                      set_size=2)
    for rid, l0, l1 in (("a", [[0], [0]], [[3]]), ("b", [[1]], [[2]]), ("c", [[1]], [[2], [1]])):
        p.on_request(ctx(rid))
        p.observe(ctx(rid), 0, np.array(l0))
        p.observe(ctx(rid), 1, np.array(l1))
        p.observe(ctx(rid), 1, np.array(l1[:1]))
    plan = p.on_request(ctx("d", 3))  # a left the window: b and c
    assert plan[0].tolist() == [1] and plan[1].tolist() == [2, 1]
    assert p.reruns == 3  # period 1: every request with a finished prompt before it (b, c, d)
    assert p.on_request(ctx("e", 4))[1].tolist() == [2, 1] and p.reruns == 4
    for kw in ({"period": 0}, {"window": 0}):
        with pytest.raises(Exception, match="emoe_a: period and window must be >= 1"):
            PREFETCH.make("emoe_a", num_layers=1, num_experts=4, top_k=1, **kw)


def test_emoe_task_defaults_and_checks():
    """Without ``running`` the new request alone: (prompt + 1 x the default W_o 128) x f; a
    layer never observed stays uniform; ``top`` None keeps every expert with positive N; a
    sensitivity not 0/1 is an error naming the task."""
    p = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1)
    p.observe(ctx(task="t"), 0, np.array([[1], [1], [3]]))
    f = p.frequency("t")
    assert np.allclose(f[0], [0, 2 / 3, 0, 1 / 3]) and np.allclose(f[1], 0.25)
    assert np.allclose(p.frequency("new"), 0.25)
    c = PrefetchContext(request_id="r", task="t", prompt_tokens=22)
    N = p.expected_tokens([("t", 22)])
    assert np.allclose(N[0], [0, 100, 0, 50]) and np.allclose(N[1], 37.5)
    plan = p.on_request(c)
    assert plan[0].tolist() == [1, 3] and plan[1].tolist() == [0, 1, 2, 3]
    q = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, top=1,
                      default_output_tokens=2.0, sensitivity={"t": [0, 1]})
    assert np.allclose(q.expected_tokens([("t", 2), ("t", 4)]), [[0] * 4, [2.5] * 4])
    assert q.sensitivity("other").tolist() == [1.0, 1.0]
    assert list(q.on_request(c)) == [1] and q.on_request(c)[1].tolist() == [0]
    with pytest.raises(Exception, match="emoe_task: sensitivity of task 'x' must be 0/1 per layer"):
        PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, sensitivity={"x": 0.5})


class _Table:
    """A prediction table as sim.predictor.table builds it: top (T, L, K), mode, s_per_token."""

    def __init__(self, top):
        self.top, self.mode, self.s_per_token = np.asarray(top), "causal", 0.8


def _learned_topk(monkeypatch, **kw):
    """learned_topk over a table of 3 tokens, 2 layers, top-2 (no checkpoint read: the loaded
    table is in the module's cache). Layer 1: predicted (0, 1), (1, 2), (3, 3); true (0, 2),
    (1, 2), (3, 0)."""
    import sim.policies.prefetch.learned_topk as lt

    top = np.array([[[0, 1], [0, 1]], [[1, 2], [1, 2]], [[0, 3], [3, 3]]])
    truth = np.array([[[0, 1], [0, 2]], [[1, 2], [1, 2]], [[0, 3], [3, 0]]])
    monkeypatch.setitem(lt._TABLES, ("ck", "tr"), (_Table(top), truth))
    args = {"checkpoint": "ck", "trace_path": "tr", **kw}
    return PREFETCH.make("learned_topk", num_layers=2, num_experts=4, top_k=2, **args), truth


def test_learned_topk_predicts_the_tables_next_layer_and_counts_its_accuracy(monkeypatch):
    """Token 0 at layer 0: predicted {0, 1}, true {0, 2}: 1 hit. The batch of rows 1, 2:
    predicted {1, 2, 3}, true {0, 1, 2, 3}: 3 hits. Recall 4 / 6, precision 4 / 5. The cost is
    the table's 0.8 s per token over 2 layers, times the batch's tokens (1 without a batch)."""
    p, truth = _learned_topk(monkeypatch)
    assert p.mode == "causal" and p.measured_s_per_token == 0.8 and p.s_per_token_layer == 0.4
    assert p.cost_s() == 0.4
    with pytest.raises(Exception, match="learned_topk: the driver named no token or batch"):
        p.next_layer(ctx(), 0, np.array([0]))
    assert p.next_layer(ctx(token=0), 0, np.array([0])).tolist() == [0, 1]
    p.set_routing(truth[:2])  # the table's trace, or its first prompts
    p.batch(np.array([1, 2]))
    assert p.cost_s() == pytest.approx(0.8)
    assert p.next_layer(ctx(), 0, np.array([0])).tolist() == [1, 2, 3]
    assert p.next_layer(ctx(), 1, np.array([0])).tolist() == []  # the last layer
    assert (p.hits, p.predicted, p.true) == (4, 5, 6)
    assert p.accuracy() == {"recall": 4 / 6, "precision": 4 / 5}
    p.batch(np.array([3]))
    with pytest.raises(Exception, match="learned_topk: token row 3 is past the 3 tokens of tr"):
        p.next_layer(ctx(), 0, np.array([0]))
    for bad in (truth[1:], truth[:, :1], np.concatenate([truth, truth])):
        with pytest.raises(Exception, match="is not tr, the trace its predictions were computed on"):
            p.set_routing(bad)


def test_learned_topk_arguments(monkeypatch):
    q, _ = _learned_topk(monkeypatch, call_s_per_token=0.0)
    assert q.s_per_token_layer == 0.0 and q.accuracy() == {"recall": 0.0, "precision": 0.0}
    with pytest.raises(Exception, match="learned_topk: call_s_per_token=-1.0; expected >= 0"):
        _learned_topk(monkeypatch, call_s_per_token=-1.0)
    with pytest.raises(Exception, match="learned_topk needs checkpoint=DIR"):
        _learned_topk(monkeypatch, checkpoint="")
    with pytest.raises(Exception, match="learned_topk needs checkpoint=DIR"):
        _learned_topk(monkeypatch, trace_path="")
    with pytest.raises(Exception, match="tr: routing has 2 layers, top-2; the model has 3, top-2"):
        PREFETCH.make("learned_topk", num_layers=3, num_experts=4, top_k=2, checkpoint="ck",
                      trace_path="tr")


class _Runtime:
    """The per-prompt predictor's runtime (sim.predictor.runtime.PromptRuntime) in small: 2
    layers x 4 experts, history 2, set size 2; a prediction scores each expert by its summed
    share over the history it is given."""

    num_layers, num_experts, history, set_size = 2, 4, 2, 2
    calls: list = []

    def __init__(self, directory):
        self.directory = directory

    def predict(self, history):
        _Runtime.calls.append(np.asarray(history).copy())
        return np.asarray(history).sum(axis=0)

    def measure_call_s(self):
        return 0.5


def _emoe_learned(monkeypatch, **kw):
    import sys
    import types

    mod = types.ModuleType("sim.predictor.runtime")
    mod.PromptRuntime = _Runtime
    monkeypatch.setitem(sys.modules, "sim.predictor.runtime", mod)
    _Runtime.calls = []
    return PREFETCH.make("emoe_learned", num_layers=2, num_experts=4, top_k=1,
                         **{"checkpoint": "ck", **kw})


def test_emoe_learned_loads_all_first_then_reruns_every_period(monkeypatch, tmp_path):
    """Request a (no history): every expert. a used 1, 1, 2 at layer 0 and 3 at layer 1, so its
    shares are (0, 2/3, 1/3, 0) and (0, 0, 0, 1): request b (index 1, no standing prediction)
    predicts 1, 2 and 3, 0 (ties: smaller id), at the measured 0.5 s. c (index 3: no rerun)
    reuses it for free; b observed nothing, so the history is a alone until c finishes. d
    (index 4) reruns on a and c; e on c and d (history 2)."""
    p = _emoe_learned(monkeypatch, period=2)
    plan = p.on_request(ctx("a", 0))
    assert [plan[l].tolist() for l in (0, 1)] == [[0, 1, 2, 3]] * 2 and p.cost_s() == 0.0
    p.observe(ctx("a", 0), 0, np.array([[1], [1], [2]]))
    p.observe(ctx("a", 0), 1, np.array([[3]]))
    plan = p.on_request(ctx("b", 1))
    assert plan[0].tolist() == [1, 2] and plan[1].tolist() == [3, 0] and p.cost_s() == 0.5
    assert np.allclose(_Runtime.calls[0], [[[0, 2 / 3, 1 / 3, 0], [0, 0, 0, 1]]])
    assert p.on_request(ctx("c", 3))[0].tolist() == [1, 2] and p.cost_s() == 0.0
    p.observe(ctx("c", 3), 0, np.array([[0], [0]]))
    p.observe(ctx("c", 3), 1, np.array([[2]]))
    plan = p.on_request(ctx("d", 4))
    assert len(_Runtime.calls) == 2 and _Runtime.calls[1].shape == (2, 2, 4)
    assert plan[0].tolist() == [0, 1] and plan[1].tolist() == [2, 3]
    p.observe(ctx("d", 4), 0, np.array([[3]]))
    p.observe(ctx("d", 4), 1, np.array([[3]]))
    p.on_request(ctx("e", 6))
    assert np.allclose(_Runtime.calls[2][:, 0], [[1, 0, 0, 0], [0, 0, 0, 1]])  # c, d
    sens = tmp_path / "sensitivity.json"
    sens.write_text('{"tasks": {"chat": {"sensitive": [true, false]}}}')
    q = _emoe_learned(monkeypatch, sensitivity=str(sens), call_s=0.25, set_size=3)
    assert list(q.on_request(ctx("a", 0, task="chat"))) == [0]  # layer 1 insensitive
    assert list(q.on_request(ctx("b", 1, task="code"))) == [0, 1]
    assert q.set_size == 3 and q._call_s == 0.25 and q.period == 40


def test_emoe_learned_bad_arguments(monkeypatch, tmp_path):
    with pytest.raises(Exception, match="emoe_learned needs checkpoint=DIR"):
        _emoe_learned(monkeypatch, checkpoint="")
    with pytest.raises(Exception, match="emoe_learned period must be >= 1, got 0"):
        _emoe_learned(monkeypatch, period=0)
    bad = tmp_path / "s.json"
    bad.write_text('{"tasks": {"chat": {}}}')
    with pytest.raises(Exception, match="s.json: not a sensitivity.json"):
        _emoe_learned(monkeypatch, sensitivity=str(bad))
    monkeypatch.setattr(_Runtime, "num_layers", 3)
    with pytest.raises(Exception, match="ck: predictor trained for 3 layers x 4 experts, the model "
                                        "has 2 x 4"):
        _emoe_learned(monkeypatch)


# ---- the survivors of the mutation run (2026-12-07): three layers, so that l + 1 is not l - 1

def _trace3():
    """3 tokens (a: rows 0, 1; b: row 2), 3 layers, top-2, int16 ids as traces store them."""
    ex = np.array([[[0, 1], [2, 3], [1, 3]], [[1, 2], [3, 0], [0, 2]], [[0, 3], [1, 2], [2, 3]]],
                  dtype=np.int16)
    return RoutingTrace(ex, None, make_tokens(["a", "a", "b"], [0, 1, 0], "prefill", "chat"),
                        TraceMeta("m", 3, 4, 2))


def test_oracle_truth_and_its_key_per_driver():
    """The truth for layer l + 1 and the key a noisy copy is seeded by: the replay's token t ->
    (t, 1); the simulator's batch -> (first row, rows), an empty batch (0, 0); a whole request ->
    (its first row, -1). Ids come back int64 whatever the trace's dtype."""
    p = PREFETCH.make("perfect", num_layers=3, num_experts=4, top_k=2)
    p.set_trace(_trace3())
    ids, key = p._truth_next(ctx("a", token=1), 1)
    assert ids.tolist() == [0, 2] and key == (1, 1) and ids.dtype == np.int64  # token 1, layer 2
    ids, key = p._truth_next(ctx("b"), 1)
    assert ids.tolist() == [2, 3] and key == (2, -1)  # request b: row 2's layer 2
    ids, key = p._truth_next(ctx("a"), 0)
    assert ids.tolist() == [0, 2, 3] and key == (0, -1)  # rows 0, 1 at layer 1
    assert p.next_layer(ctx("a", token=0), 1, np.array([2])).tolist() == [1, 3]
    p.batch([2, 0])
    ids, key = p._truth_next(ctx("a"), 1)
    assert ids.tolist() == [1, 2, 3] and key == (2, 2)  # rows 2 and 0 at layer 2
    p.batch([])
    ids, key = p._truth_next(ctx("a"), 1)
    assert ids.tolist() == [] and key == (0, 0)
    last = p.next_layer(ctx("a"), 2, np.array([2]))
    assert last.tolist() == [] and last.dtype == np.int64
    # the simulator's routing without a trace: no request bounds, so a request is unknown
    q = PREFETCH.make("perfect", num_layers=3, num_experts=4, top_k=2)
    q.set_routing(_trace3().experts)
    with pytest.raises(Exception, match="perfect: request 'a' is not in the trace"):
        q.next_layer(ctx("a"), 0, np.array([0]))


def test_emoe_l_three_layers_leading_shapes_and_bad_layers():
    """observe takes tokens as the rows of the last axis, any leading shape; pairs go to layer
    l - 1's row of M; the last layer predicts an empty int64 array; a layer outside the model is
    an error naming it."""
    p = PREFETCH.make("emoe_l", num_layers=3, num_experts=4, top_k=1)
    c = ctx()
    p.observe(c, 0, np.array([[[0], [1]]]))  # (1, 2, 1): tokens 0 and 1
    p.observe(c, 1, np.array([[2], [3]]))
    p.observe(c, 2, np.array([[1], [1]]))
    assert np.argwhere(p.M[0]).tolist() == [[0, 2], [1, 3]]
    assert np.argwhere(p.M[1]).tolist() == [[2, 1], [3, 1]]
    assert p.next_layer(c, 1, np.array([3])).tolist() == [1]
    last = p.next_layer(c, 2, np.array([1]))
    assert last.tolist() == [] and last.dtype == np.int64
    for bad in (-1, 3):
        with pytest.raises(Exception, match=f"emoe_l: observed layer {bad}; the model has 3"):
            p.observe(c, bad, np.array([[0]]))
    q = PREFETCH.make("emoe_l", num_layers=3, num_experts=4, top_k=1)
    q.observe(c, 0, np.array(1))  # one token's one expert, as a scalar
    q.observe(c, 1, np.array([2]))
    assert np.argwhere(q.M[0]).tolist() == [[1, 2]]


def test_emoe_a_first_request_observed_before_planning_and_a_cut_ranking():
    """A prompt observed before any plan (and named '', a name like any other) is in the first
    prediction, whatever the request index; set_size 1 keeps the most used only."""
    p = PREFETCH.make("emoe_a", num_layers=1, num_experts=4, top_k=1, period=5, set_size=1)
    p.observe(ctx(""), 0, np.array([[2], [2], [1]]))
    assert p.on_request(ctx("b", 1))[0].tolist() == [2] and p.reruns == 1
    q = PREFETCH.make("emoe_a", num_layers=1, num_experts=4, top_k=1, period=1)
    q.on_request(ctx("", 0))
    q.observe(ctx("", 0), 0, np.array([[2], [2], [1]]))
    assert q.on_request(ctx("b", 1))[0].tolist() == [2, 1]


def test_similarity_three_layers_width_and_accumulated_counts():
    """On 3 layers the match's layer l + 1 is read (not l - 1); ``num_predict`` cuts the list; a
    layer observed twice adds up; max_history 1 keeps the last request; '' is a request name
    like any other; the messages are whole."""
    p = PREFETCH.make("similarity", num_layers=3, num_experts=4, top_k=2, num_predict=1,
                      max_history=1)
    assert p.num_predict == 1
    p.on_request(ctx(""))
    p.observe(ctx(""), 0, np.array([[0, 1]]))
    p.observe(ctx(""), 1, np.array([[1, 2], [2, 3]]))  # layer 1: 2 twice, 1 and 3 once
    p.observe(ctx(""), 2, np.array([[3, 0]]))
    p.observe(ctx(""), 1, np.array([[3, 3]]))  # layer 1 again: 3 now three times
    assert p._cur.tolist() == [[1, 1, 0, 0], [0, 1, 2, 3], [1, 0, 0, 1]]
    p.on_request(ctx("z"))
    p.observe(ctx("z"), 0, np.array([[0, 1]]))
    assert p.next_layer(ctx("z"), 0, np.array([0, 1])).tolist() == [3]  # layer 1: 3 of 3, 2, 1
    assert p.next_layer(ctx("z"), 1, np.array([3])).tolist() == [0]  # layer 2: 0 and 3 tie
    last = p.next_layer(ctx("z"), 2, np.array([0]))
    assert last.tolist() == [] and last.dtype == np.int64
    p.on_request(ctx("w"))  # z joins; max_history 1: '' leaves
    assert len(p._lib) == 1 and p._lib_raw[0].tolist() == [[1, 1, 0, 0], [0] * 4, [0] * 4]
    wide = PREFETCH.make("similarity", num_layers=3, num_experts=4, top_k=2)
    assert wide.num_predict == 4
    with pytest.raises(Exception) as err:
        PREFETCH.make("similarity", num_layers=3, num_experts=4, top_k=2, max_history=0)
    assert str(err.value) == "similarity: max_history and refresh must be >= 1"


def test_top_ids_ranks_positive_scores_as_int64():
    """Scores 0, 2, -1, 2, 1: the positive ones, larger first, ties the smaller id: 1, 3, 4."""
    from sim.policies.prefetch._ids import top_ids

    got = top_ids(np.array([0.0, 2, -1, 2, 1]), 3)
    assert got.tolist() == [1, 3, 4] and got.dtype == np.int64
    assert top_ids(np.array([0.0, 2, -1, 2, 1]), 9).tolist() == [1, 3, 4]
    assert top_ids(np.array([0.0, 2, -1, 2, 1]), 1).tolist() == [1]


def test_noisy_oracle_picks_by_its_keys_and_hashes_layer_l_plus_1():
    """recall 1, precision 0.5 on S = {0, 1} of 6: kept = both, false = floor(2 x 0.5 / 0.5 + u) =
    2, the two others with the smallest "add" keys h(E + expert); the ids come back int64
    whatever S's dtype. next_layer is corrupt() of layer l + 1's truth, keyed by layer l + 1."""
    from sim.policies.prefetch.noisy_oracle import corrupt, step_hash

    h = step_hash(3, 2, (5, 1), np.arange(2 * 6 + 2))
    others = np.array([2, 3, 4, 5])
    want = sorted([0, 1] + others[np.argsort(h[6 + others])[:2]].tolist())
    got = corrupt(np.array([0, 1], dtype=np.int16), 6, 1.0, 0.5, 3, 2, (5, 1))
    assert got.tolist() == want and got.dtype == np.int64
    assert corrupt(np.array([0, 1], dtype=np.int16), 6, 1.0, 1.0, 3, 2, (5, 1)).dtype == np.int64
    p = PREFETCH.make("noisy_oracle", num_layers=3, num_experts=4, top_k=2, recall=0.5,
                      precision=0.5, seed=9)
    p.set_trace(_trace3())
    for t in range(3):
        truth, key = p._truth_next(ctx("a", token=t), 0)
        assert p.next_layer(ctx("a", token=t), 0, np.array([0])).tolist() == \
            corrupt(truth, 4, 0.5, 0.5, 9, 1, key).tolist()
    last = p.next_layer(ctx("a", token=0), 2, np.array([0]))
    assert last.tolist() == [] and last.dtype == np.int64


def test_emoe_task_running_requests_counts_and_rerouting_by_hand():
    """The running requests decide the plan: a new qa request of 8 tokens (W_o 4; f(qa) is (0,
    .75, .25, 0) at layer 0, (0, 0, 0, 1) at layer 1) alone plans 1, 2 and 3 (12 x f); beside a
    running sum request of 100 tokens (W_o 10, uniform f: 27.5 each) layer 0 is 27.5, 36.5, 30.5,
    27.5 (1, 2 again) and layer 1 27.5, 27.5, 27.5, 39.5 (3, then 0 of the tied). Counts of a
    layer observed twice add up; a layer with one token has that expert's share 1. Rerouting
    moves every absent choice of every token."""
    p = PREFETCH.make("emoe_task", num_layers=2, num_experts=4, top_k=1, top=2,
                      output_tokens={"sum": 10, "qa": 4})
    p.observe(ctx(task="qa"), 0, np.array([[1], [1]]))
    p.observe(ctx(task="qa"), 0, np.array([[1], [2]]))
    p.observe(ctx(task="qa"), 1, np.array([[3]]))
    assert np.allclose(p.frequency("qa"), [[0, 0.75, 0.25, 0], [0, 0, 0, 1]])
    alone = p.on_request(PrefetchContext(request_id="n", task="qa", prompt_tokens=8))
    assert alone[0].tolist() == [1, 2] and alone[1].tolist() == [3]
    both = p.on_request(PrefetchContext(request_id="n", task="qa", prompt_tokens=8,
                                        extra={"running": [("sum", 100), ("qa", 8)]}))
    assert both[0].tolist() == [1, 2] and both[1].tolist() == [3, 0]
    # token 0 all resident; token 1 has two absent choices: both move (best resident first)
    resident = np.array([True, False, True, True, False])
    ex, moved = reroute(np.array([[0, 2], [1, 4]], dtype=np.int16), resident,
                        np.array([0.1, 0.9, 0.5, 0.3, 0.8]))
    assert ex.tolist() == [[0, 2], [2, 3]] and moved == 2 and ex.dtype == np.int64


def _learned_topk3(monkeypatch, top_k=2):
    """learned_topk over 2 tokens, 3 layers, top-2 (layers != experts a token: the shapes'
    axes are told apart). Token 0 predicted at layers 0 / 1 / 2: (0, 1) / (2, 3) / (1, 3), true
    (0, 1) / (2, 0) / (3, 2); token 1 predicted (1, 2) / (1, 2) / (0, 2), true (1, 2) / (1, 3) /
    (0, 1)."""
    import sim.policies.prefetch.learned_topk as lt

    top = np.array([[[0, 1], [2, 3], [1, 3]], [[1, 2], [1, 2], [0, 2]]], dtype=np.int16)
    truth = np.array([[[0, 1], [2, 0], [3, 2]], [[1, 2], [1, 3], [0, 1]]])
    monkeypatch.setitem(lt._TABLES, ("ck3", "tr3"), (_Table(top), truth))
    return PREFETCH.make("learned_topk", num_layers=3, num_experts=4, top_k=top_k, checkpoint="ck3",
                         trace_path="tr3"), truth


def test_learned_topk_reads_the_next_layer_of_three(monkeypatch):
    """At layer 0 the prediction is layer 1's (not layer 2's, which a 2-layer model could not
    tell from l - 1): token 0 -> (2, 3) against true (0, 2): 1 hit of 2 predicted, 2 true; at
    layer 1, layer 2's: (1, 3) against (2, 3): 1 hit. Integer ids whatever the table's dtype."""
    p, truth = _learned_topk3(monkeypatch)
    got = p.next_layer(ctx(token=0), 0, np.array([0]))
    assert got.tolist() == [2, 3] and got.dtype == np.int64
    assert (p.hits, p.predicted, p.true) == (1, 2, 2)
    assert p.next_layer(ctx(token=0), 1, np.array([2])).tolist() == [1, 3]
    assert (p.hits, p.predicted, p.true) == (2, 4, 4)
    last = p.next_layer(ctx(token=0), 2, np.array([3]))
    assert last.tolist() == [] and last.dtype == np.int64
    p.batch([0, 1])  # a list of rows: kept as int64
    assert p._batch.dtype == np.int64
    p.batch(np.array([1], dtype=np.int32))
    assert p._batch.dtype == np.int64
    assert p.next_layer(ctx(), 0, np.array([1])).tolist() == [1, 2]  # true (1, 3): 1 hit
    p.set_routing(truth)  # the whole trace is the table's trace
    p.set_routing(truth[:1])


def test_learned_topk_accuracy_of_one():
    """One expert predicted and true, one hit: recall and precision 1 (not halved)."""
    from sim.policies.prefetch.learned_topk import LearnedTopK

    p = LearnedTopK.__new__(LearnedTopK)
    p.hits = p.predicted = p.true = 1
    assert p.accuracy() == {"recall": 1.0, "precision": 1.0}


def test_learned_topk_messages(monkeypatch):
    p, _ = _learned_topk3(monkeypatch)
    with pytest.raises(Exception, match=r"^learned_topk: the driver named no token or batch$"):
        p.next_layer(ctx(), 0, np.array([0]))
    need = (r"^prefetch policy learned_topk needs checkpoint=DIR \(from 'moesim predictor train'\) "
            r"and trace_path=FILE \(the routing trace replayed\)$")
    with pytest.raises(Exception, match=need):
        PREFETCH.make("learned_topk", num_layers=3, num_experts=4, top_k=2, checkpoint="ck3")
    # the table's layers fit, the trace's top-k does not (the model's top-3): refused, with
    # the trace's layers (3) and top-k (2) named
    with pytest.raises(Exception, match=r"^tr3: routing has 3 layers, top-2; the model has 3, top-3$"):
        _learned_topk3(monkeypatch, top_k=3)


def test_learned_topk_loads_the_trace_and_its_table_once(monkeypatch):
    """_load: the trace named by policy.prefetch_args.trace_path is read, the checkpoint's table
    built on it, and the pair kept for the next policy of the same (checkpoint, trace)."""
    import sim.common.files as files
    import sim.policies.prefetch.learned_topk as lt
    import sim.predictor.table as table
    import traces.format as fmt

    calls = []

    class _Trace:
        experts = [[[0, 1]], [[2, 3]]]

    trace = _Trace()
    monkeypatch.setattr(lt, "_TABLES", {})
    monkeypatch.setattr(files, "require_file", lambda p, key: calls.append(("file", p, key)) or "P")
    monkeypatch.setattr(fmt, "read_trace", lambda p: calls.append(("read", p)) or trace)
    monkeypatch.setattr(table, "next_layer_table",
                        lambda ck, tr: calls.append(("table", ck, tr is trace)) or "T")
    got = lt._load("ckX", "trX")
    assert got[0] == "T" and isinstance(got[1], np.ndarray)
    assert got[1].tolist() == [[[0, 1]], [[2, 3]]]
    assert calls == [("file", "trX", "policy.prefetch_args.trace_path"), ("read", "P"),
                     ("table", "ckX", True)]
    assert lt._load("ckX", "trX") is got and len(calls) == 3  # kept


def test_emoe_learned_edges(monkeypatch):
    """Before any request it costs nothing; period 1 reruns at every prompt; the checkpoint goes
    to the runtime; a prompt that used one expert once is history (its share 1 at that layer),
    handed to the predictor as float32; a request announced again (re-routed) keeps counting
    into the same prompt: one history entry, not two."""
    p = _emoe_learned(monkeypatch, period=1)
    assert p.cost_s() == 0.0 and p._rt.directory == "ck" and p.period == 1
    p.on_request(ctx("a", 0))
    p.observe(ctx("a", 0), 1, np.array([2]))
    plan = p.on_request(ctx("b", 1))
    assert len(_Runtime.calls) == 1 and _Runtime.calls[0].dtype == np.float32
    assert _Runtime.calls[0].tolist() == [[[0, 0, 0, 0], [0, 0, 1, 0]]]
    assert plan[1].tolist() == [2, 0]
    p.on_request(ctx("c", 2))  # period 1: a rerun (b observed nothing: still a alone)
    assert len(_Runtime.calls) == 2 and p.cost_s() == 0.5
    q = _emoe_learned(monkeypatch)
    q.on_request(ctx("a", 0))
    q.observe(ctx("a", 0), 0, np.array([1]))
    q.on_request(ctx("a", 0))  # a again (re-routed): the same prompt
    q.observe(ctx("a", 0), 0, np.array([3]))
    q.on_request(ctx("b", 1))
    assert len(_Runtime.calls) == 1 and _Runtime.calls[0].shape == (1, 2, 4)
    assert _Runtime.calls[0][0, 0].tolist() == [0, 0.5, 0, 0.5]


def test_emoe_learned_checkpoint_message(monkeypatch):
    with pytest.raises(Exception, match=r"^prefetch policy emoe_learned needs checkpoint=DIR \(from "
                                        r"'moesim predictor train'\)$"):
        _emoe_learned(monkeypatch, checkpoint="")
