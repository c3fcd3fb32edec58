"""The cache replay's counters add up (``hits + misses + rerouted = accesses``, per layer too), and
batch mode with multi-token batches equals a plainly written driver of the same semantics."""

from __future__ import annotations

import numpy as np
import pytest

from sim.policies import CACHE
from sim.replay.cache import replay_batch, replay_plain, run_replay
from sim.serving.testing import routing_trace as _trace
from sim.world.facts import batch_executions

POLICIES = ["lru", "lfu", "fifo", "lifo", "priority", "keep_predicted", "belady"]


def _random(seed, T=60, L=3, E=8, K=2, per_request=12):
    rng = np.random.default_rng(seed)
    # skewed popularity, different per layer, so that layers' hit rates differ
    p = rng.dirichlet(np.full(E, 0.5), size=L)  # (L, E)
    ex = np.stack([np.stack([rng.choice(E, K, replace=False, p=p[l]) for l in range(L)])
                   for _ in range(T)])  # (T, L, K)
    return _trace(ex, E, [f"r{i // per_request}" for i in range(T)])


def _naive_batch(trace, policy, fraction, batch_size):
    """Batch mode written plainly: per layer, per batch of B tokens, the union of their experts
    in increasing id order, one access per expert with the union as the active set."""
    T, L, K = trace.experts.shape
    E = trace.num_experts
    C = int(np.floor(fraction * E + 1e-9))
    misses, accesses = [], []
    for l in range(L):
        batches = [sorted({int(e) for t in range(b, min(b + batch_size, T)) for e in trace.experts[t, l]})
                   for b in range(0, T, batch_size)]
        runs = [e for u in batches for e in u]
        pol = CACHE.make(policy, capacity=C, num_keys=E)
        if pol.requires_future:
            pol.set_future(np.asarray(runs, dtype=np.int64)[:, None])
        step, m = 0, 0
        for u in batches:
            for e in u:
                m += len(pol.access(step, (e,), frozenset(u))[0])
                step += 1
        misses.append(m)
        accesses.append(len(runs))
    return np.asarray(misses), np.asarray(accesses)


@pytest.mark.parametrize("batch_size", [2, 3, 5, 16])
@pytest.mark.parametrize("policy", POLICIES)
def test_multi_token_batches_equal_the_plain_driver(policy, batch_size):
    tr = _random(batch_size, T=61)  # 61: the last batch is short
    for frac in (0.25, 0.5):
        r = replay_batch(tr, policy, frac, batch_size)
        misses_l, acc_l = _naive_batch(tr, policy, frac, batch_size)
        assert (r.misses, r.accesses) == (int(misses_l.sum()), int(acc_l.sum())), (policy, frac)
        assert r.per_layer_hit_rate == [round(1 - m / a, 6) for m, a in zip(misses_l, acc_l)]
        assert r.hits + r.misses + r.rerouted == r.accesses and r.rerouted == 0


def test_batch_executions_hand_computed():
    # 5 tokens, batches of 2: {1, 3} | {0, 3} | {2}: runs 1, 3 | 0, 3 | 2
    ex = np.array([[3, 1], [1, 3], [0, 3], [3, 0], [2, 2]])
    starts, ids = batch_executions(ex, 2, 4)
    assert starts.tolist() == [0, 2, 4, 5] and ids.tolist() == [1, 3, 0, 3, 2]
    starts, ids = batch_executions(ex, 5, 4)
    assert starts.tolist() == [0, 4] and ids.tolist() == [0, 1, 2, 3]
    starts, ids = batch_executions(ex, 1, 4)
    assert starts.tolist() == [0, 2, 4, 6, 8, 9] and ids.tolist() == [1, 3, 1, 3, 0, 3, 0, 3, 2]


def test_lifo_multi_token_batches_hand_computed():
    # C = 2 of 4 experts, batches of 2 tokens (top-1): {0, 1} | {2, 3} | {1, 2} | {2, 3}
    #   b0: 0 miss, 1 miss                                   resident {0, 1}, 1 last in
    #   b1: 2 miss: both inactive, LIFO evicts 1 -> {0, 2}; 3 miss: 0 is the only inactive -> {2, 3}
    #   b2: 1 miss: 3 inactive -> {2, 1}; 2 hit
    #   b3: 2 hit; 3 miss: 1 inactive -> {2, 3}
    # 6 misses of 8. Without the active set LIFO would evict 2 in b1 (the last in), and a union
    # cut one expert short (b2 = {1}) would let LIFO evict 2 there (the last in, not 3).
    ex = [[[0]], [[1]], [[3]], [[2]], [[2]], [[1]], [[3]], [[2]]]
    r = replay_batch(_trace(ex, 4), "lifo", 0.5, batch_size=2)
    assert (r.accesses, r.misses, r.hits) == (8, 6, 2)
    f = replay_batch(_trace(ex, 4), "fifo", 0.5, batch_size=2)
    # FIFO: b1 2 evicts 0 -> {1, 2}, 3 evicts 1 -> {2, 3}; b2 1 evicts 2 -> {3, 1}, 2 evicts 3
    # -> {1, 2}; b3 2 hit, 3 evicts 1: 7 misses
    assert (f.accesses, f.misses) == (8, 7)


@pytest.mark.parametrize("policy", POLICIES)
def test_plain_counts_add_up_per_layer(policy):
    tr = _random(7)
    T, L, K = tr.experts.shape
    for frac in (0.25, 0.5, 0.75):
        r = replay_plain(tr, policy, frac)
        assert r.hits + r.misses + r.rerouted == r.accesses == T * L * K
        per_layer_hits = [round(h * T * K) for h in r.per_layer_hit_rate]
        assert sum(per_layer_hits) == r.hits
        assert r.hit_rate == pytest.approx(r.hits / r.accesses)
        assert r.loads == r.misses + r.prefetched


def test_reroute_counts_add_up_per_layer():
    # 2 layers, 4 experts, C = 2, top-1. Request a fills both caches; request b's choices:
    #   layer 0: 0 (hit), 2 (rerouted), 3 (rerouted)   -> 1 hit of 3
    #   layer 1: 1 (hit), 0 (hit), 3 (rerouted)        -> 2 hits of 3
    ex = np.array([[[0], [0]], [[1], [1]],
                   [[0], [1]], [[2], [0]], [[3], [3]]], dtype=np.int16)
    tr = _trace(ex, 4, ["a", "a", "b", "b", "b"])
    r = replay_plain(tr, "lru", 0.5, reroute=True)
    assert (r.accesses, r.hits, r.misses, r.rerouted) == (10, 1 + 2, 4, 3)
    assert r.hits + r.misses + r.rerouted == r.accesses
    # per layer: a's 2 cold misses, then b's hits; a rerouted choice is not a hit
    assert r.per_layer_hit_rate == [round(1 / 5, 6), round(2 / 5, 6)]
    assert r.hit_rate == pytest.approx(3 / 10)
    assert r.routing_fidelity == pytest.approx(1 - 3 / 10)
    rec = r.record(10)
    assert (rec["rerouted"], rec["hit_rate"], rec["loads"], rec["h2d_bytes"]) == (3, 0.3, 4, 40)


def test_run_replay_returns_exactly_the_policies_asked_plus_belady():
    tr = _random(3, T=24)
    recs = run_replay(tr, ["lifo", "lru"], [0.5], mode="batch", batch_size=4, expert_bytes=6)
    assert [r["policy"] for r in recs] == ["lifo", "lru", "belady"]
    assert [r["oracle"] for r in recs] == [False, False, True]
    bel = recs[2]
    for r in recs:
        assert r["mode"] == "batch" and r["gap_to_belady_misses"] == r["misses"] - bel["misses"] >= 0
    recs = run_replay(tr, ["belady", "fifo"], [0.25, 0.75], expert_bytes=6)
    assert [(r["policy"], r["capacity_frac"]) for r in recs] == [
        ("belady", 0.25), ("fifo", 0.25), ("belady", 0.75), ("fifo", 0.75)]


def test_next_layer_prefetch_replays_token_major():
    # 2 layers, 4 experts, C = 1, top-1. Per token, layer 0 then layer 1; after layer 0 the
    # perfect next-layer oracle inserts the token's layer-1 expert, so layer 1 always hits:
    #   t0 (0, 1): L0 miss, prefetch 1, L1 hit;  t1 (2, 3): L0 miss, prefetch 3, L1 hit;
    #   t2 (0, 1): L0 miss, prefetch 1, L1 hit
    tr = _trace([[[0], [1]], [[2], [3]], [[0], [1]]], 4)
    r = replay_plain(tr, "lru", 0.25, prefetch="perfect")
    assert (r.accesses, r.hits, r.misses, r.prefetched, r.loads) == (6, 3, 3, 3, 6)
    assert r.per_layer_hit_rate == [0.0, 1.0] and r.counts.evictions == 4
    with pytest.raises(Exception, match="reroute=true needs a per-request prefetch policy"):
        replay_plain(tr, "lru", 0.25, prefetch="perfect", reroute=True)
    # only the first C of a next-layer prediction is inserted: top-2 at C = 1 -> {2} once (then
    # resident); the experts a step needs beyond its one slot stream through
    tr2 = _trace([[[0, 1], [2, 3]], [[0, 1], [2, 3]]], 4)
    r2 = replay_plain(tr2, "lru", 0.25, prefetch="perfect")
    assert (r2.prefetched, r2.hits, r2.misses, r2.counts.streamed) == (1, 3, 5, 4)
    assert r2.per_layer_hit_rate == [0.25, 0.5]


def test_per_request_prefetch_loads_the_plan_before_the_first_token():
    # 1 layer, C = 2. Request a uses 1, 1, 2: the plan (most used first) [1, 2, 0, 3] -> insert
    # {1, 2}: all three hit. Request b uses 3, 0: plan [0, 3, 1, 2] -> insert {0, 3}: both hit.
    tr = _trace([[[1]], [[1]], [[2]], [[3]], [[0]]], 4, ["a", "a", "a", "b", "b"])
    r = replay_plain(tr, "lru", 0.5, prefetch="perfect_request")
    assert (r.accesses, r.hits, r.misses, r.prefetched, r.loads) == (5, 5, 0, 4, 4)
    assert r.prefetch == r.record(1)["prefetch"] == "perfect_request"
    # Belady in run_replay is the demand-loading bound: no prefetch for it
    recs = run_replay(tr, ["lru"], [0.5], prefetch="perfect_request", expert_bytes=1)
    assert [(x["policy"], x["prefetch"], x["prefetched"]) for x in recs] == [
        ("lru", "perfect_request", 4), ("belady", "none", 0)]


def test_replay_option_errors():
    from sim.common.errors import ConfigError

    tr = _random(1, T=8)
    with pytest.raises(ConfigError, match="^mode must be 'plain' or 'batch', got 'fast'$"):
        run_replay(tr, ["lru"], [0.5], mode="fast", expert_bytes=1)
    with pytest.raises(ConfigError, match="^reroute=true is a plain-mode option$"):
        run_replay(tr, ["lru"], [0.5], mode="batch", reroute=True, expert_bytes=1)


def test_replay_log_serves_each_event_kind():
    from sim.common.errors import ConfigError
    from sim.replay.cache import replay_log

    events = [("warm", 0, (0, 1), ()),          # loaded before serving: not counted
              ("access", 1, (0,), ()),          # hit
              ("access", 2, (2,), ()),          # miss, evicts 1 (LRU)
              ("insert", 3, (3,), (2,)),        # prefetched, evicts 0 (2 protected)
              ("begin", 4, (), ()),
              ("predict", 4, (3,), ()),
              ("access", 5, (3,), ()),          # hit
              ("reset", 6, (), ()),             # a fault: a fresh cache, counts kept
              ("access", 7, (0,), ())]          # cold miss
    c = replay_log(events, "lru", 2, 4)
    assert (c.hits, c.misses, c.prefetched, c.evictions, c.loads) == (2, 2, 1, 2, 3)
    with pytest.raises(ConfigError, match="^cache log: unknown event 'jump'$"):
        replay_log([("jump", 0, (), ())], "lru", 2, 4)


# ------------------------------------------------------------------------------------------------
# the replay's wiring: contexts, prefetch construction, run_replay's pass-through
# ------------------------------------------------------------------------------------------------
def test_contexts_describe_each_request():
    from sim.policies.base import PrefetchContext
    from sim.replay.cache import _contexts

    tr = _trace([[[0]], [[1]], [[2]], [[3]], [[0]]], 4, ["a", "a", "b", "b", "b"])
    tr.tokens["task"] = ["t1", "t1", "t2", "t2", "t2"]
    assert _contexts(tr) == [
        PrefetchContext(request_id="a", task="t1", prompt_tokens=2, request_index=0,
                        extra={"first_token": 0, "last_token": 2}),
        PrefetchContext(request_id="b", task="t2", prompt_tokens=3, request_index=1,
                        extra={"first_token": 2, "last_token": 5})]


def test_make_prefetch_names_none_and_passes_arguments():
    from sim.replay.cache import _make_prefetch

    tr = _random(2, T=12)
    assert _make_prefetch(None, tr) is None and _make_prefetch("", tr) is None
    assert _make_prefetch("none", tr) is None
    pf = _make_prefetch("emoe_a", tr, period=3, set_size=2)
    assert (pf.cfg.period, pf.cfg.set_size) == (3, 2)
    assert (pf.num_layers, pf.num_experts, pf.top_k) == (3, 8, 2)


def _naive_token_major(trace, policy, fraction, prefetch):
    """Plain mode with a next-layer prefetch policy, written plainly from the docstring."""
    from sim.policies import PREFETCH
    from sim.replay.cache import _contexts

    T, L, K = trace.experts.shape
    E = trace.num_experts
    C = int(np.floor(fraction * E + 1e-9))
    caches = []
    for l in range(L):
        c = CACHE.make(policy, capacity=C, num_keys=E)
        if c.requires_future:
            c.set_future(trace.experts[:, l, :].astype(np.int64))
        caches.append(c)
    pf = PREFETCH.make(prefetch, num_layers=L, num_experts=E, top_k=K)
    if pf.requires_future:
        pf.set_trace(trace)
    bounds = trace.request_bounds()
    misses = [0] * L
    for r, ctx in enumerate(_contexts(trace)):
        first, last = int(bounds[r]), int(bounds[r + 1])
        for c in caches:
            c.begin_request(r)
        plan = pf.on_request(ctx)
        for l in sorted(plan):
            if len(plan[l]):
                caches[l].insert(first, [int(e) for e in plan[l]][:C])
        for t in range(first, last):
            ctx.extra["token"] = t
            for l in range(L):
                need = [int(e) for e in trace.experts[t, l]]
                misses[l] += len(caches[l].access(t, need)[0])
                if l + 1 < L:
                    nxt = pf.next_layer(ctx, l, np.asarray(need, dtype=np.int64))
                    if len(nxt):
                        caches[l + 1].insert(t, [int(e) for e in nxt][:C])
                pf.observe(ctx, l, np.asarray([need], dtype=np.int64))
    return misses, _total_counts(caches)


def _total_counts(caches):
    from sim.world.facts import CacheCounts

    return CacheCounts.total(c.counts for c in caches)


@pytest.mark.parametrize("prefetch", ["similarity", "perfect", "emoe_l"])
@pytest.mark.parametrize("policy", ["lru", "lifo", "priority", "belady"])
def test_next_layer_prefetch_equals_the_plain_driver(policy, prefetch):
    tr = _random(11, T=40, L=3, E=8, K=2, per_request=8)
    r = replay_plain(tr, policy, 0.5, prefetch=prefetch)
    misses, counts = _naive_token_major(tr, policy, 0.5, prefetch)
    assert r.counts == counts
    T, L, K = tr.experts.shape
    assert r.per_layer_hit_rate == [round(1 - m / (T * K), 6) for m in misses]
    assert (r.mode, r.prefetch, r.policy, r.capacity) == ("plain", prefetch, policy, 4)


def test_run_replay_passes_its_options_through():
    tr = _trace([[[0], [1]], [[1], [2]], [[2], [0]], [[3], [3]], [[0], [1]], [[1], [2]]], 4,
                ["a", "a", "b", "b", "c", "c"])
    batch = run_replay(tr, ["lifo"], [0.5], mode="batch", expert_bytes=1)
    assert batch[0]["misses"] == replay_batch(tr, "lifo", 0.5, 16).misses
    assert batch[0]["misses"] != replay_batch(tr, "lifo", 0.5, 1).misses  # 16 is the default
    rer = run_replay(tr, ["lru"], [0.5], reroute=True, expert_bytes=1)
    assert rer[0]["rerouted"] == replay_plain(tr, "lru", 0.5, reroute=True).rerouted > 0
    kw = dict(period=1, set_size=1)
    pf = run_replay(tr, ["lru"], [0.5], prefetch="emoe_a", prefetch_kwargs=kw, expert_bytes=1)
    assert pf[0]["prefetched"] == replay_plain(tr, "lru", 0.5, prefetch="emoe_a",
                                               prefetch_kwargs=kw).prefetched
    assert pf[0]["prefetched"] != replay_plain(tr, "lru", 0.5, prefetch="emoe_a").prefetched
    by_model = run_replay(tr, ["lru"], [0.5], model="mixtral-8x7b")
    assert by_model[0]["h2d_bytes"] == by_model[0]["loads"] * 3 * 4096 * 14336 * 2
    lru, bel = run_replay(tr, ["lru"], [0.5], expert_bytes=1)
    assert (lru["hits"], bel["hits"], bel["accesses"]) == (0, 2, 12)
    assert lru["gap_to_belady_hit_rate"] == 0.166666667 and bel["gap_to_belady_hit_rate"] == 0.0
    assert lru["gap_to_belady_misses"] == 2


def test_result_fields_on_tiny_cases():
    one = _trace([[[2]]], 4)
    r = replay_plain(one, "lru", 0.5)
    assert r.per_layer_hit_rate == [0.0] and (r.capacity, r.mode) == (2, "plain")
    b = replay_batch(one, "lru", 0.5, 4)
    assert b.per_layer_hit_rate == [0.0] and (b.capacity, b.mode, b.prefetch) == (2, "batch", "none")
    from sim.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^cluster\.expert_budget_fractions=1.5; expected a fraction"):
        replay_plain(one, "lru", 1.5)


class _Both:
    """A test prefetcher that plans requests and predicts the next layer from what it observed."""

    def __new__(cls, *a, **k):
        from sim.policies.base import PrefetchPolicy

        class Both(PrefetchPolicy):
            plans_requests = True
            predicts_next_layer = True
            observes = True

            def __init__(self, num_layers, num_experts, top_k, cfg=None):
                super().__init__(num_layers, num_experts, top_k, cfg)
                self.seen = np.zeros((num_layers, num_experts), dtype=np.int64)

            def on_request(self, ctx):
                # layer 0 only: the request's index mod E and the next one
                E = self.num_experts
                return {0: np.array([ctx.request_index % E, (ctx.request_index + 1) % E])}

            def next_layer(self, ctx, layer, experts):
                assert layer + 1 < self.num_layers
                return np.argsort(-self.seen[layer + 1], kind="stable")[:2]

            def observe(self, ctx, layer, experts):
                self.seen[layer] += np.bincount(np.asarray(experts).reshape(-1),
                                                minlength=self.num_experts)
        return Both(*a, **k)


@pytest.mark.parametrize("policy", ["lru", "fifo", "priority"])
def test_a_prefetcher_that_plans_and_predicts_equals_the_plain_driver(policy, monkeypatch):
    from sim.policies import PREFETCH

    cls = type(_Both(1, 2, 1))
    monkeypatch.setitem(PREFETCH._classes, "test_both", cls)
    tr = _random(5, T=30, L=3, E=8, K=2, per_request=6)
    r = replay_plain(tr, policy, 0.5, prefetch="test_both")
    misses, counts = _naive_token_major(tr, policy, 0.5, "test_both")
    assert r.counts == counts and r.prefetched > 0
    T, L, K = tr.experts.shape
    assert r.per_layer_hit_rate == [round(1 - m / (T * K), 6) for m in misses]


def test_plain_prefetch_edges():
    tr = _trace([[[0]], [[1]], [[2]], [[3]], [[0]]], 4, ["a", "a", "b", "b", "b"])
    # no slot: nothing is prefetched, nothing rerouted (the cache is never full of anything)
    z = replay_plain(tr, "lru", 0.0, prefetch="perfect_request")
    assert (z.prefetched, z.misses, z.hits) == (0, 5, 0)
    zr = replay_plain(tr, "lru", 0.0, reroute=True)
    assert (zr.rerouted, zr.misses) == (0, 5)
    # one slot: after request a the cache is full; b's choices not resident are rerouted
    one = replay_plain(tr, "lru", 0.25, reroute=True)
    assert (one.misses, one.rerouted, one.hits) == (2, 3, 0)
    # keep_predicted's own predictor (eMoE-A) takes the prefetch arguments
    ex = _random(9, T=48, L=2, E=8, K=2, per_request=6)
    a = replay_plain(ex, "keep_predicted", 0.5)
    b = replay_plain(ex, "keep_predicted", 0.5, prefetch_kwargs={"period": 1, "window": 1, "set_size": 1})
    assert a.misses != b.misses
