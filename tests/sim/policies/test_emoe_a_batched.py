"""eMoE-A's batched form (sim/policies/prefetch/emoe_a.py ``next_layers``): an iteration's
``observe`` of every layer at once, with no next-layer guess; checked by hand and against the
calls one layer after the other."""

from __future__ import annotations

import numpy as np

from sim.policies.base import PREFETCH, PrefetchContext


def _ctx(rid: str, index: int = 0) -> PrefetchContext:
    return PrefetchContext(request_id=rid, request_index=index)


def _make(**kw):
    return PREFETCH.make("emoe_a", num_layers=2, num_experts=4, top_k=2, **kw)


def test_batched_observation_by_hand():
    """Request a runs two iterations (layer 0 uses {1, 2} then {2}; layer 1 {0} then {0, 3}),
    request b one ({3}; {3}): a's counts are (0, 1, 2, 0) and (2, 0, 0, 1), b's (0, 0, 0, 1)
    and (0, 0, 0, 1). Request c (a rerun, period 1) ranks their sums: layer 0 (0, 1, 2, 1):
    2, then 1 and 3 (smaller id first); layer 1 (2, 0, 0, 2): 0 and 3. No guess at any layer."""
    p = _make(period=1)
    a1 = np.array([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    a2 = np.array([[0, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
    b1 = np.array([[0, 0, 0, 1], [0, 0, 0, 1]], dtype=bool)
    for rid, used in (("a", a1), ("a", a2)):
        ranked, n = p.next_layers(_ctx(rid), used)
        assert n.tolist() == [0, 0] and len(ranked) == 2
        assert np.issubdtype(ranked.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)
    assert p._cur.tolist() == [[0, 1, 2, 0], [2, 0, 0, 1]] and len(p._done) == 0
    p.next_layers(_ctx("b"), b1)  # a new prompt: a's counts are done
    assert [d.tolist() for d in p._done] == [[[0, 1, 2, 0], [2, 0, 0, 1]]]
    assert p._cur.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]] and p._cur_id == "b"
    plan = p.on_request(_ctx("c", 1))
    assert plan[0].tolist() == [2, 1, 3] and plan[1].tolist() == [0, 3] and p.reruns == 1


def test_batched_observation_reads_used_as_truth_values():
    """Tokens per expert (counts) add one per used expert, as the truth values do."""
    p = _make(period=1)
    counts = np.array([[0, 3, 0, 2], [1, 0, 4, 0]])
    p.next_layers(_ctx("a"), counts)
    p.next_layers(_ctx("a"), counts.reshape(-1))  # (L*E,) flat: the same layers
    assert p._cur.tolist() == [[0, 2, 0, 2], [2, 0, 2, 0]]
    assert p._cur.dtype == np.int64


def test_batched_calls_leave_the_state_of_the_layer_by_layer_calls():
    """Random iterations of five prompts (each one to three iterations), a rerun every second
    prompt, window 3: the plans and the counts after the batched calls equal those after
    ``observe`` of each layer's used experts, one layer after the other."""
    rng = np.random.default_rng(4)
    L, E = 3, 6
    one = PREFETCH.make("emoe_a", num_layers=L, num_experts=E, top_k=2, period=2, window=3)
    two = PREFETCH.make("emoe_a", num_layers=L, num_experts=E, top_k=2, period=2, window=3)
    for r in range(5):
        c = _ctx(f"r{r}", r)
        assert {k: v.tolist() for k, v in one.on_request(c).items()} == \
            {k: v.tolist() for k, v in two.on_request(c).items()}
        for _ in range(int(rng.integers(1, 4))):
            used = rng.random((L, E)) < 0.4
            for l in range(L):
                one.observe(c, l, np.flatnonzero(used[l]))
            two.next_layers(c, used)
            assert np.array_equal(one._cur, two._cur) and one._cur_id == two._cur_id
    assert one.reruns == two.reruns == 2
    assert [d.tolist() for d in one._done] == [d.tolist() for d in two._done]
