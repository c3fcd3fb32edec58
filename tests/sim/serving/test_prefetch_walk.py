"""The compiled next-layer prefetch walk (sim/serving/prefetch_walk.py,
sim/serving/compiled_prefetch.py) against the general walk through the objects: whole runs write
the same metrics.json; one iteration worked out by hand (a prefetch queued behind the layer's
own demand copy lands after the next layer's gate: the order of events and the bytes); eMoE-L's
batched calls against its calls one layer after the other.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.engine.metrics import compute_metrics
from sim.policies.base import PREFETCH, PrefetchContext
from sim.serving import prefetch_walk
from sim.serving.testing import tiny_config
from sim.world.config import FaultConfig
from tests.sim.sim_test_helpers import answered, refused_alike, run_tiny

cp = pytest.importorskip("sim.serving.compiled_prefetch", reason="numba is not installed")

#: next-layer policies that run without a checkpoint (similarity also prefetches per request)
NEXT = ["emoe_l", "perfect", "noisy_oracle", "similarity"]


def _run(cfg, seed: int = 0, tokens: int = 11):
    return run_tiny(cfg, seed, n=14, output=6, tokens=tokens)


def _both(make, monkeypatch, **kw):
    """metrics.json with the compiled walk (the kernels from the second iteration) and through
    the objects (policy.cache_arrays=false), and how many iterations the compiled walk took."""
    taken = answered(monkeypatch, prefetch_walk.PrefetchWalk, "run")
    fast = make()
    s_fast, j_fast = _run(fast, **kw)
    slow = make()
    slow.policy.cache_arrays = False
    _, j_slow = _run(slow, **kw)
    return s_fast, j_fast, j_slow, taken


@pytest.mark.parametrize("cache", ["lru", "fifo", "lifo", "lfu", "keep_predicted"])
@pytest.mark.parametrize("prefetch", NEXT)
@pytest.mark.parametrize("shape", ["ep4", "ep1", "eplb", "tight"])
def test_next_layer_policies_same_metrics(cache, prefetch, shape, monkeypatch):
    def make():
        if shape == "ep4":  # one expert of a layer per GPU, as the Azure bench
            cfg = tiny_config(layers=4, experts=4, top_k=2, gpus_per_node=4, ep=4,
                              budget_fraction=0.5, token_budget=24)
        elif shape == "ep1":  # one GPU holding every expert: steps of several keys
            cfg = tiny_config(layers=3, experts=6, top_k=2, budget_fraction=0.5, token_budget=24)
        elif shape == "eplb":  # replicated experts: a key on two GPUs
            cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=2, ep=2,
                              budget_fraction=0.6, token_budget=24)
            cfg.policy.placement = "eplb"
        else:  # fewer slots than a step's keys: misses stream through, prefetches skipped
            cfg = tiny_config(layers=3, experts=6, top_k=3, budget_fraction=0.2, token_budget=24)
        cfg.policy.cache, cfg.policy.prefetch = cache, prefetch
        return cfg

    s_fast, j_fast, j_slow, taken = _both(make, monkeypatch, seed=5)
    assert j_fast == j_slow
    iters = sum(r.iterations for r in s_fast.replicas)
    # the first iteration walks the objects (the kernels load at the second), then every one
    assert taken.count(True) == iters - 1 > 0
    if PREFETCH.get(prefetch).plans_requests:
        return
    counts = compute_metrics(s_fast)["prefetch"]
    assert counts["issued"] + counts["skipped"] > 0  # (the runs exercise the prefetches)


@st.composite
def scenarios(draw):
    layers = draw(st.integers(2, 4))
    experts = draw(st.integers(2, 6))
    gpus = draw(st.sampled_from([1, 2, 4]))
    return dict(layers=layers, experts=experts, top_k=draw(st.integers(1, min(3, experts))),
                gpus=gpus, budget=draw(st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0])),
                token_budget=draw(st.integers(1, 16)), seed=draw(st.integers(0, 50)),
                fault=draw(st.booleans()), fault_gpu=draw(st.integers(0, gpus - 1)),
                eplb=draw(st.booleans()), tokens=draw(st.integers(2, 9)),
                prefetch=draw(st.sampled_from(NEXT)), lead=draw(st.integers(1, 2)),
                cache=draw(st.sampled_from(["lru", "fifo", "lifo", "lfu", "keep_predicted"])),
                bw=draw(st.sampled_from([200.0, 2000.0, 20000.0])))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_scenarios_same_metrics(s):
    """Random tiny clusters (faults, replicated experts, prefetches two layers ahead, slow and
    fast links, request prefetches turning the caches to objects and back): the same
    metrics.json with and without the compiled walk."""
    def make():
        cfg = tiny_config(layers=s["layers"], experts=s["experts"], top_k=s["top_k"],
                          gpus_per_node=s["gpus"], ep=s["gpus"], budget_fraction=s["budget"],
                          token_budget=s["token_budget"], host_bytes_per_s=s["bw"])
        cfg.policy.cache, cfg.policy.prefetch = s["cache"], s["prefetch"]
        if s["prefetch"] == "perfect" and s["lead"] < s["layers"]:
            cfg.policy.prefetch_args = {"lead": s["lead"]}
        if s["eplb"] and s["gpus"] > 1:
            cfg.policy.placement = "eplb"
        if s["fault"]:
            cfg.cluster.faults = [FaultConfig(time_s=0.01, gpu=s["fault_gpu"], recovery_s=0.02)]
        return cfg

    try:
        with pytest.MonkeyPatch.context() as mp:
            _, j_fast, j_slow, _ = _both(make, mp, seed=s["seed"], tokens=s["tokens"])
    except Exception as exc:  # a config the simulator rejects is rejected by both paths alike
        refused_alike(exc, make, lambda cfg: _run(cfg, seed=s["seed"], tokens=s["tokens"]))
        return
    assert j_fast == j_slow


# -- one iteration by hand ------------------------------------------------------------------------
def _kernel_state(G: int, H: int, QC: int = 8, GC: int = 8) -> dict:
    return dict(lat=np.zeros(G), bw=np.ones(G), lt=np.zeros(G), solo=np.zeros(G), pt=np.zeros(G),
                nid=np.zeros(G, dtype=np.int64), btot=np.zeros(G),
                qt=np.full((G, QC), -1, dtype=np.int64), qb=np.zeros((G, QC)),
                qs=np.zeros((G, QC)), qk=np.full((G, QC), -1, dtype=np.int64),
                qh=np.zeros(G, dtype=np.int64), qn=np.zeros(G, dtype=np.int64),
                gs=np.zeros((G, GC)), ge=np.zeros((G, GC)), gh=np.zeros(G, dtype=np.int64),
                gn=np.zeros(G, dtype=np.int64), itid=np.full((G, H), cp.NONE, dtype=np.int64),
                iland=np.full((G, H), np.nan), islot=np.zeros((G, H), dtype=np.int64))


def _iteration(S, cap, used, pk, po, ptl, comp, eb, lk, stall, figs, rule=0, C=None, T=None,
               pin=None):
    G, H = S.shape
    L = len(ptl)
    E = len(used) // L
    hkey = np.arange(H, dtype=np.int64)[None, :].repeat(G, 0)
    loc = np.arange(L * E, dtype=np.int64)[None, :].repeat(G, 0)
    lo = (np.arange(L + 1, dtype=np.int64) * E)[None, :].repeat(G, 0)
    nres = (S >= 0).sum(axis=1)
    clock = int(S.max()) + 1  # (the next stamp)
    C = np.zeros_like(S) if C is None else C
    T = np.full_like(S, -1) if T is None else T
    pin = np.zeros_like(S, dtype=bool) if pin is None else pin
    return cp.prefetch_iteration(
        rule, S, C, T, pin, 10, nres, cap, clock, hkey, loc, lo, used, pk, po, ptl, 0.0, 1.0,
        0.0, 0.0,
        np.zeros(L), comp, eb, stall, lk["lat"], lk["bw"], lk["lt"], lk["solo"], lk["pt"],
        lk["nid"], lk["btot"], lk["qt"], lk["qb"], lk["qs"], lk["qk"], lk["qh"], lk["qn"],
        lk["gs"], lk["ge"], lk["gh"], lk["gn"], lk["itid"], lk["iland"], lk["islot"],
        np.zeros(G, dtype=np.int64), figs), nres


def test_a_prefetch_behind_the_demand_copy_lands_late():
    """One GPU, 2 layers of 2 experts (keys 0, 1 | 2, 3), 2 slots, empty; the batch uses key 0
    then key 3, and the prefetch after layer 0 names key 3. Attention 1 s, experts 2 s a layer,
    an expert 4 bytes on a 1 B/s link.

    Layer 0 (t = 0): key 0 misses (a free slot); its demand copy runs 1 -> 5 (gate at 1), the
    experts 5 -> 7 (4 s stall). The prefetch of key 3 (a free slot: no victim) is issued at
    layer 0's gate, 1: demand copies own the link, so its 4 bytes move 5 -> 9. Layer 1 (t = 7):
    key 3 is resident (a hit), needed at its gate 8; it lands at 9: a late hit, 1 s stall, the
    experts 9 -> 11. 8 bytes crossed the link; the iteration ends at 11."""
    S = np.full((1, 4), -1, dtype=np.int64)
    cap = np.array([2], dtype=np.int64)
    used = np.array([True, False, False, True])
    pk, po, ptl = np.array([3]), np.array([0, 1, 1]), np.array([1, -1])
    comp = np.array([[2.0], [2.0]])
    lk = _kernel_state(1, 4)
    stall = np.zeros(1)
    figs = np.zeros((1, len(cp.FIGS)), dtype=np.int64)
    (t, clock), nres = _iteration(S, cap, used, pk, po, ptl, comp, 4, lk, stall, figs)
    f = dict(zip(cp.FIGS, figs[0].tolist()))
    assert t == 11.0 and stall[0] == 5.0
    assert lk["btot"][0] == 8.0 and lk["gs"][0, 0] == 1.0 and lk["ge"][0, 0] == 5.0
    assert lk["pt"][0] == 9.0 and lk["qh"][0] == lk["qn"][0] == 1  # (the copy served, landed)
    assert (f["hits"], f["late"], f["misses"], f["prefetched"], f["used"]) == (0, 1, 1, 1, 1)
    assert (f["keys"], f["peak"], f["evictions"], f["skipped"]) == (2, 2, 0, 0)
    # LRU stamps: key 0 at layer 0's step (0), key 3 loaded by the prefetch (1), then used at
    # layer 1's step (2); nothing in flight
    assert S[0].tolist() == [0, -1, -1, 2] and clock == 3 and nres[0] == 2
    assert (lk["itid"][0] == cp.NONE).all()


def test_a_prefetch_never_evicts_what_the_layers_use_and_may_stay_unwaited():
    """As above with one slot: the prefetch after layer 0 may not evict key 0 (the layer
    computing), so key 3 is skipped; layer 1 then misses key 3, which evicts key 0 (outside
    its step), its demand copy at its gate 8 (8 bytes in all, no prefetch queued).

    Then two slots holding keys 1 (least recent) and 2, and a batch that uses key 2 at layer 1
    only: layer 0 takes no step (1 s of attention, no experts). The prefetch of key 3 evicts key
    1, not key 2 (layer 1 uses it: protected); issued at layer 0's gate (1) on an idle link, its
    copy would run 1 -> 5, but layer 1 (t = 1, gate 2) does not use key 3: a hit on key 2, no
    wait, the iteration ends at 2 + 2 = 4 with key 3 still in flight (queued, id 0)."""
    S = np.full((1, 4), -1, dtype=np.int64)
    cap = np.array([1], dtype=np.int64)
    used = np.array([True, False, False, True])
    lk = _kernel_state(1, 4)
    figs = np.zeros((1, len(cp.FIGS)), dtype=np.int64)
    _iteration(S, cap, used, np.array([3]), np.array([0, 1, 1]), np.array([1, -1]),
               np.array([[2.0], [2.0]]), 4, lk, np.zeros(1), figs)
    f = dict(zip(cp.FIGS, figs[0].tolist()))
    # layer 1: key 3 misses (the prefetch was skipped) and evicts key 0 (now outside the step)
    assert (f["skipped"], f["prefetched"], f["misses"], f["evictions"]) == (1, 0, 2, 1)
    assert lk["btot"][0] == 8.0 and lk["qn"][0] == 0

    S = np.array([[-1, 0, 1, -1]], dtype=np.int64)  # keys 1 (older) and 2 resident
    cap = np.array([2], dtype=np.int64)
    used = np.array([False, False, True, False])  # only key 2, at layer 1
    lk = _kernel_state(1, 4)
    figs = np.zeros((1, len(cp.FIGS)), dtype=np.int64)
    stall = np.zeros(1)
    (t, _), _ = _iteration(S, cap, used, np.array([3]), np.array([0, 1, 1]), np.array([1, -1]),
                           np.array([[0.0], [2.0]]), 4, lk, stall, figs)
    f = dict(zip(cp.FIGS, figs[0].tolist()))
    # the prefetch (layer 0's gate, 1) evicts key 1 (least recent; key 2 is protected: layer 1
    # uses it): key 2 hits at layer 1 (t = 1, gate 2), key 3's copy runs 1 -> 5 unwaited
    assert (f["prefetched"], f["evictions"], f["hits"], f["misses"]) == (1, 1, 1, 0)
    assert S[0].tolist() == [-1, -1, 3, 2] and t == 4.0 and stall[0] == 0.0
    assert lk["itid"][0, 3] == 0 and np.isnan(lk["iland"][0, 3])  # still in flight, queued
    assert lk["qn"][0] == 1 and lk["qs"][0, 0] == 1.0 and lk["btot"][0] == 4.0


@pytest.mark.parametrize("rule,after", [(0, [-1, 3, -1, -1, 4, -1]),
                                        (1, [2, -1, -1, -1, 3, -1]),
                                        (2, [-1, 0, -1, -1, 3, -1]),
                                        (3, [-1, 0, -1, -1, 3, -1])])
def test_the_four_rules_pick_their_victims(rule, after):
    """One GPU, 2 layers of 3 experts, 2 slots holding keys 1 (loaded first, stamp 0) and 2
    (stamp 1); the batch uses keys 0, 1 at layer 0 and key 4 at layer 1 (the active set
    {0, 1, 4}); the prefetch after layer 0 names key 3, which layer 1 does not use.

    Layer 0: key 1 hits, key 0 misses and evicts key 2 (the one resident outside the step): stamp
    2 (LRU stamps its hit key 1 after it: 3). The prefetch may evict neither key 0 nor key 1
    (LRU, FIFO: layer 0 computes with them; LIFO: both active): key 3 is skipped. Layer 1: key 4
    misses and evicts LRU's least recent key 0 (stamp 2 < 3), FIFO's oldest load key 1 (stamp
    0), LIFO's newest load key 0 (both active: the newest first), LFU's key 0 (keys 0 and 1
    both used once, at step 10: the smaller id)."""
    S = np.array([[-1, 0, 1, -1, -1, -1]], dtype=np.int64)
    used = np.array([True, True, False, False, True, False])
    lk = _kernel_state(1, 6)
    figs = np.zeros((1, len(cp.FIGS)), dtype=np.int64)
    C, T = np.zeros_like(S), np.full_like(S, -1)
    _iteration(S, np.array([2]), used, np.array([3]), np.array([0, 1, 1]), np.array([1, -1]),
               np.array([[1.0], [1.0]]), 4, lk, np.zeros(1), figs, rule=rule, C=C, T=T)
    f = dict(zip(cp.FIGS, figs[0].tolist()))
    assert (f["hits"], f["misses"], f["evictions"], f["skipped"], f["prefetched"]) == \
        (1, 2, 2, 1, 0)
    assert S[0].tolist() == after  # (LRU: key 1 stamped 3 as layer 0's hit, key 4 then 4)
    if rule == 3:
        assert C[0].tolist() == [1, 1, 0, 0, 1, 0] and T[0].tolist() == [10, 10, -1, -1, 11, -1]


def test_keep_predicted_never_evicts_a_pin():
    """keep_predicted (rule 4) on one GPU, 2 layers of 3 experts, 2 slots holding keys 1
    (pinned: predicted) and 2. The batch uses key 0 at layer 0 and keys 3, 4 at layer 1. Layer
    0: key 0 misses and evicts key 2 (key 1 is pinned, LRU would take it: the least recent).
    Layer 1: keys 3 and 4 miss; the one slot not pinned goes to key 3 (evicting key 0, outside
    the step), key 4 streams through (the only other resident key is pinned)."""
    S = np.array([[-1, 0, 1, -1, -1, -1]], dtype=np.int64)
    used = np.array([True, False, False, True, True, False])
    pin = np.array([[False, True, False, False, False, False]])
    lk = _kernel_state(1, 6)
    figs = np.zeros((1, len(cp.FIGS)), dtype=np.int64)
    _iteration(S, np.array([2]), used, np.zeros(0, dtype=np.int64), np.zeros(3, dtype=np.int64),
               np.array([-1, -1]), np.array([[1.0], [1.0]]), 4, lk, np.zeros(1), figs, rule=4,
               pin=pin)
    f = dict(zip(cp.FIGS, figs[0].tolist()))
    assert (f["hits"], f["misses"], f["evictions"], f["streamed"]) == (0, 3, 2, 1)
    assert S[0].tolist() == [-1, 0, -1, 3, -1, -1]  # (key 1 pinned, untouched; key 3 loaded)
    assert lk["btot"][0] == 12.0  # (three misses copied, the streamed one too)


@pytest.mark.parametrize("prefetch", ["emoe_task", "similarity"])
@pytest.mark.parametrize("cache", ["lru", "fifo", "lifo", "lfu", "keep_predicted"])
def test_request_prefetches_in_flight_same_metrics(cache, prefetch, monkeypatch):
    """Without a next-layer policy the compiled walk serves the iterations the array paths do
    not (keys of a request's prefetch still in flight; keep_predicted's pins): with the kernels
    from the first iteration, the same metrics.json as the objects."""
    import sim.serving.walk as walk_mod

    monkeypatch.setattr(walk_mod, "COMPILE_AFTER", 1)

    def make():
        cfg = tiny_config(layers=3, experts=4, top_k=2, gpus_per_node=2, ep=2,
                          budget_fraction=0.5, token_budget=12, host_bytes_per_s=300.0)
        cfg.policy.cache, cfg.policy.prefetch = cache, prefetch
        return cfg

    s_fast, j_fast, j_slow, taken = _both(make, monkeypatch, seed=2)
    assert j_fast == j_slow
    assert any(taken)


# -- eMoE-L's batched calls -----------------------------------------------------------------------
@pytest.mark.parametrize("args", [{}, {"num_predict": 3}, {"max_predict": 2},
                                  {"learn_online": False}, {"num_predict": 0}])
@pytest.mark.parametrize("seed", range(4))
def test_emoe_l_batched_calls_equal_the_layer_by_layer_calls(args, seed):
    L, E, K = 5, 8, 2
    rng = np.random.default_rng(seed)
    one = PREFETCH.make("emoe_l", num_layers=L, num_experts=E, top_k=K, **args)
    two = PREFETCH.make("emoe_l", num_layers=L, num_experts=E, top_k=K, **args)
    train = rng.integers(0, E, size=(40, L, K))
    one.fit(train)
    two.fit(train)
    ctx = PrefetchContext(request_id="r")
    for _ in range(6):
        used = rng.random((L, E)) < rng.uniform(0.05, 0.6)
        used[rng.integers(0, L)] = False  # (a layer with no tokens)
        want = []
        for l in range(L):
            ex = np.flatnonzero(used[l])
            one.observe(ctx, l, ex)
            want.append(one.next_layer(ctx, l, ex).tolist())
        ranked, n = two.next_layers(ctx, used)
        assert [ranked[l, :n[l]].tolist() for l in range(L)] == want
        assert np.array_equal(one.M, two.M)
        if one._prev is None:  # (learn_online off: nothing observed)
            assert two._prev is None
        else:
            assert one._prev[:2] == two._prev[:2] and np.array_equal(one._prev[2], two._prev[2])


@pytest.mark.parametrize("name,args", [("perfect", {}), ("perfect", {"lead": 2}),
                                       ("noisy_oracle", {}),
                                       ("noisy_oracle", {"recall": 0.6, "precision": 0.7})])
@pytest.mark.parametrize("E", [8, 70])
def test_oracles_batched_calls_equal_the_layer_by_layer_calls(name, args, E):
    """Given the batch's experts per layer (the union of its pool rows', what the walk counts),
    the oracles' batched form answers what ``next_layer`` answers layer by layer from the
    batch's rows; outside a simulator's batch there is no batched form."""
    L, K, N = 4, 3, 50
    rng = np.random.default_rng(E)
    pol = PREFETCH.make(name, num_layers=L, num_experts=E, top_k=K, **args)
    ex = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)])
                   for _ in range(N)])
    pol.set_routing(ex)
    ctx = PrefetchContext(request_id="r")
    assert pol.next_layers(ctx, np.zeros((L, E), dtype=bool)) is None  # (no batch yet)
    for T in (0, 1, 7, 30):
        rows = rng.integers(0, N, size=T)
        pol.batch(rows)
        used = np.zeros((L, E), dtype=bool)
        for l in range(L):
            used[l, ex[rows, l].ravel()] = True
        want = [pol.next_layer(ctx, l, np.flatnonzero(used[l])).tolist() for l in range(L)]
        ranked, n = pol.next_layers(ctx, used)
        assert [ranked[l, :n[l]].tolist() for l in range(L)] == want


@pytest.mark.parametrize("recall,precision", [(1.0, 1.0), (0.8, 0.8), (0.3, 1.0), (1.0, 0.2),
                                              (0.0, 0.5), (0.55, 0.05)])
def test_noisy_corruption_of_every_layer_at_once_equals_one_layer_at_a_time(recall, precision):
    """``corrupt_layers`` picks what ``corrupt`` picks, row by row: empty, full and partial true
    sets, 1 to 70 experts, several steps."""
    from sim.policies.prefetch.noisy_oracle import corrupt, corrupt_layers

    rng = np.random.default_rng(int(recall * 100 + precision * 10))
    for E in (1, 2, 8, 64, 70):
        truth = rng.random((9, E)) < rng.uniform(0, 1, size=(9, 1))
        truth[0] = False
        truth[1] = True
        layers = rng.integers(0, 60, size=9)
        key = (int(rng.integers(0, 10**6)), int(rng.integers(0, 5000)))
        ranked, n = corrupt_layers(truth, recall, precision, 7, layers, key)
        for i in range(9):
            want = corrupt(np.flatnonzero(truth[i]), E, recall, precision, 7, int(layers[i]), key)
            assert ranked[i, :n[i]].tolist() == want.tolist()


def test_emoe_l_batched_calls_read_used_as_truth_values():
    """``used`` is read as truth values (counts work: a layer's used experts), and the guesses
    are integer ids."""
    L, E = 4, 6
    rng = np.random.default_rng(3)
    a = PREFETCH.make("emoe_l", num_layers=L, num_experts=E, top_k=2)
    b = PREFETCH.make("emoe_l", num_layers=L, num_experts=E, top_k=2)
    train = rng.integers(0, E, size=(30, L, 2))
    a.fit(train)
    b.fit(train)
    ctx = PrefetchContext(request_id="r")
    counts = rng.integers(0, 4, size=(L, E))  # tokens per expert: 0 .. 3
    ra, na = a.next_layers(ctx, counts)
    rb, nb = b.next_layers(ctx, counts > 0)
    assert np.issubdtype(ra.dtype, np.integer) and np.issubdtype(na.dtype, np.integer)
    assert np.array_equal(ra, rb) and np.array_equal(na, nb) and np.array_equal(a.M, b.M)


@pytest.mark.parametrize("name", ["perfect", "noisy_oracle"])
def test_oracles_batched_form_is_the_simulators_only(name):
    """A replay's token context (``extra["token"]``) gets no batched form even with a batch
    set; in the simulator's batch ``used`` is read as truth values (counts work) and the
    guesses are integer ids."""
    L, E = 3, 5
    pol = PREFETCH.make(name, num_layers=L, num_experts=E, top_k=2)
    pol.set_routing(np.zeros((4, L, 2), dtype=np.int64))
    pol.batch(np.array([0, 1]))
    counts = np.array([[0, 2, 0, 1, 0], [3, 0, 0, 0, 1], [0, 0, 2, 2, 0]])
    assert pol.next_layers(PrefetchContext(request_id="r", extra={"token": 1}), counts) is None
    ranked, n = pol.next_layers(PrefetchContext(request_id="r"), counts)
    assert np.issubdtype(ranked.dtype, np.integer)
    # at layer l the experts layer l + 1 uses, by id: {0, 4}, {2, 3}, then nothing
    assert [ranked[l, :n[l]].tolist() for l in range(L)] == [[0, 4], [2, 3], []]


def test_similarity_matches_against_every_finished_request():
    """The library matrix (stacked once per finished request) holds the newest request: r3,
    which used expert 2 at layer 0 as r2 did, matches r2 and is told r2's layer-1 expert 3,
    not r1's expert 1."""
    p = PREFETCH.make("similarity", num_layers=2, num_experts=4, top_k=1, num_predict=1)
    for rid, (e0, e1) in (("r1", (0, 1)), ("r2", (2, 3))):
        ctx = PrefetchContext(request_id=rid)
        p.on_request(ctx)
        p.observe(ctx, 0, np.array([e0]))
        if rid == "r2":  # (r1 alone in the library: r2 is told r1's expert)
            assert p.next_layer(ctx, 0, np.array([e0])).tolist() == [1]
        p.observe(ctx, 1, np.array([e1]))
    ctx = PrefetchContext(request_id="r3")
    p.on_request(ctx)
    p.observe(ctx, 0, np.array([2]))
    assert p.next_layer(ctx, 0, np.array([2])).tolist() == [3]


def test_a_whole_run_by_hand(monkeypatch):
    """The simulator end to end on the compiled walk: one GPU, 2 layers of 2 experts (top-1),
    2 slots, an expert 6 bytes on a 2,000 B/s link (3 ms a copy), attention 1 ms and 1 ms per
    expert a layer, the perfect next-layer oracle; one request of one prompt token routed to
    expert 0 then expert 1 (keys 0 and 3), one output token (the prefill makes it).

    Layer 0: key 0 misses; its copy runs 1 -> 4 ms (gate at 1), the expert 4 -> 5 ms (3 ms
    stall). The oracle names key 3, a free slot: its copy, issued at layer 0's gate, waits for
    the demand copy and runs 4 -> 7 ms. Layer 1 (t = 5 ms): key 3 is a hit needed at its gate,
    6 ms, landed at 7 ms: a late hit, 1 ms stall, the expert 7 -> 8 ms. TTFT 8 ms, 12 bytes
    copied, 4 ms of fetch stall."""
    import sim.serving.walk as walk_mod
    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Simulation
    from sim.serving.binding import RoutingPool, bind
    from sim.serving.testing import StubCost, workload

    monkeypatch.setattr(walk_mod, "COMPILE_AFTER", 1)
    taken = []
    real = prefetch_walk.PrefetchWalk.run
    monkeypatch.setattr(prefetch_walk.PrefetchWalk, "run",
                        lambda self, *a, **k: taken.append(real(self, *a, **k)) or taken[-1])
    cfg = tiny_config(layers=2, experts=2, top_k=1, budget_fraction=0.5, token_budget=8)
    cfg.policy.cache, cfg.policy.prefetch = "lru", "perfect"
    cfg.cluster.warm_start = False  # (an empty cache: no expert loaded before serving)
    pool = RoutingPool(experts=np.array([[[0], [1]]], dtype=np.int16),
                       offsets=np.array([0]), lengths=np.array([1]), tasks=["unknown"])
    wl = workload([0.0], [1], [1])
    rng = np.random.default_rng(0)
    s = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng),
                   StubCost(attn_s=0.001, expert_s_each=0.001, a2a_s=0.0), rng)
    s.run()
    m = compute_metrics(s)
    assert len(taken) == 1 and taken[0] is not None  # (the iteration was the compiled walk's)
    assert (m["misses"], m["late_prefetch_hits"], m["prefetched"], m["h2d_bytes"]) == (1, 1, 1, 12)
    assert m["fetch_stall_s"] == pytest.approx(0.004, abs=1e-12)
    assert m["ttft_s"]["p50"] == pytest.approx(0.008, abs=1e-12)
