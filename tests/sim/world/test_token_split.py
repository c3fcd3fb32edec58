"""The per-batch split of a replicated expert's tokens across its replicas (sim/world/token_split.py),
the split-aware placement ``split``, and the simulator's multi-owner layer costs through it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.common.errors import ConfigError
from sim.policies import PLACEMENT
from sim.world.token_split import split_tokens, water_fill
from tests.sim.sim_test_helpers import slot_counts


def _random_hold(rng, L, E, G, p=0.3):
    hold = rng.random((L, E, G)) < p
    owner = rng.integers(0, G, size=(L, E))
    hold[np.arange(L)[:, None], np.arange(E)[None, :], owner] = True  # at least one holder each
    return hold


def _greedy_reference(counts, hold):
    """Token by token: replicated experts most tokens first (ties smaller id), each token to the
    least-loaded holder (ties: with u = sum_e (e + 1) * tokens_e, GPUs in cyclic order from
    u mod G, upward if u // G is even, else downward); single holders first."""
    L, E, G = hold.shape
    out = np.zeros((L, E, G), dtype=np.int64)
    for l in range(L):
        u = int(sum((e + 1) * int(counts[l, e]) for e in range(E)))
        s, step = u % G, (1 if (u // G) % 2 == 0 else -1)
        gl = np.zeros(G, dtype=np.int64)
        for e in range(E):
            if hold[l, e].sum() == 1:
                g = int(np.flatnonzero(hold[l, e])[0])
                out[l, e, g] = counts[l, e]
                gl[g] += counts[l, e]
        rep = [e for e in range(E) if hold[l, e].sum() > 1]
        for e in sorted(rep, key=lambda e: (-counts[l, e], e)):
            gpus = np.flatnonzero(hold[l, e])
            for _ in range(int(counts[l, e])):
                g = min(gpus, key=lambda g: (gl[g], ((g - s) * step) % G))
                out[l, e, g] += 1
                gl[g] += 1
    return out


@settings(max_examples=80, deadline=None)
@given(L=st.integers(1, 3), E=st.integers(1, 8), G=st.integers(1, 5), N=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_split_stays_on_holders_conserves_and_is_deterministic(L, E, G, N, seed):
    rng = np.random.default_rng(seed)
    hold = _random_hold(rng, L, E, G)
    counts = rng.integers(0, 40, size=(N, L, E))
    out = split_tokens(counts, hold)
    assert out.dtype == np.int64 and out.shape == (N, L, E, G)
    assert (out >= 0).all()
    assert (out[:, ~hold] == 0).all()  # never on a GPU without a replica
    assert (out.sum(axis=-1) == counts).all()  # every token, exactly once
    assert np.array_equal(out, split_tokens(counts, hold))  # deterministic
    assert np.array_equal(out[1:2] if N > 1 else out, split_tokens(counts[1:2] if N > 1 else counts,
                                                                   hold))  # batches independent
    # the serving engine's greedy (one pass) is the token-by-token rule
    for n in range(N):
        assert np.array_equal(split_tokens(counts[n], hold, passes=1),
                              _greedy_reference(counts[n], hold))
    # refinement never makes the busiest GPU busier than the greedy
    gl1 = split_tokens(counts, hold, passes=1).sum(axis=-2).max(axis=-1)
    assert (out.sum(axis=-2).max(axis=-1) <= gl1).all()


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 3), E=st.integers(1, 8), G=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_without_replicas_the_split_is_the_equal_share(L, E, G, seed):
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, G, size=(L, E))
    hold = np.zeros((L, E, G), dtype=bool)
    hold[np.arange(L)[:, None], np.arange(E)[None, :], owner] = True
    counts = rng.integers(0, 50, size=(L, E))
    assert np.array_equal(split_tokens(counts, hold), counts[:, :, None] * hold)


def test_water_fill_hand_case():
    # loads 5, 2, 9, 2 on GPUs 0..3, holders 0, 1, 3; 6 tokens: GPUs 1 and 3 to 5 (6 tokens)
    a = water_fill(np.array([[5, 2, 9, 2]]), np.array([[True, True, False, True]]), np.array([6]))
    assert a.tolist() == [[0, 3, 0, 3]]
    # 7 tokens: then GPUs 0, 1, 3 at 5, one more to the first in the tie order
    a = water_fill(np.array([[5, 2, 9, 2]]), np.array([[True, True, False, True]]), np.array([7]))
    assert a.tolist() == [[1, 3, 0, 3]]  # from GPU 0
    a = water_fill(np.array([[5, 2, 9, 2]]), np.array([[True, True, False, True]]), np.array([7]),
                   start=np.array([2]))
    assert a.tolist() == [[0, 3, 0, 4]]  # u = 2: from GPU 2 up: 2, 3, 0, 1
    a = water_fill(np.array([[5, 2, 9, 2]]), np.array([[True, True, False, True]]), np.array([8]),
                   start=np.array([1]))
    assert a.tolist() == [[0, 4, 0, 4]]  # u = 1: from GPU 1 up: 1, 2, 3, 0
    a = water_fill(np.array([[5, 2, 9, 2]]), np.array([[True, True, False, True]]), np.array([8]),
                   start=np.array([5]))
    assert a.tolist() == [[1, 4, 0, 3]]  # u = 5: from GPU 1 down: 1, 0, 3, 2


def test_chain_of_replicas_reaches_perfect_balance():
    # GPU 0 holds expert 0 (9 tokens); expert 1 (6 tokens) on GPUs 0 and 1; expert 2 (9 tokens) on
    # GPUs 1 and 2; expert 3 (3 tokens) on GPU 1 alone. 27 tokens, 9 per GPU is perfect: it needs
    # all of expert 1 on GPU 1 and all of expert 2 on GPU 2, which the greedy alone misses.
    hold = np.zeros((1, 4, 3), dtype=bool)
    hold[0, 0, 0] = hold[0, 1, [0, 1]] = hold[0, 2, [1, 2]] = hold[0, 3, 1] = True
    counts = np.array([[9, 6, 9, 3]])
    # u = 1*9 + 2*6 + 3*9 + 4*3 = 60: from GPU 60 % 3 = 0, upward (60 // 3 even)
    greedy = split_tokens(counts, hold, passes=1).sum(axis=1)
    assert greedy.tolist() == [[11, 10, 6]]  # expert 2: 3 to GPU 2, then 3 + 3; expert 1: 3 to
    # GPU 1, then 2 + 1
    out = split_tokens(counts, hold)
    assert out.sum(axis=1).tolist() == [[9, 9, 9]]
    assert out[0, 1].tolist() == [0, 6, 0] and out[0, 2].tolist() == [0, 0, 9]


def test_split_rejects_bad_input():
    hold = np.ones((1, 2, 2), dtype=bool)
    with pytest.raises(ConfigError, match="do not match"):
        split_tokens(np.zeros((1, 3)), hold)
    with pytest.raises(ConfigError, match="no GPU"):
        split_tokens(np.zeros((1, 2)), np.zeros((1, 2, 2), dtype=bool))
    with pytest.raises(ConfigError, match="nonnegative integers"):
        split_tokens(np.array([[1.5, 2.0]]), hold)
    with pytest.raises(ConfigError, match="passes"):
        split_tokens(np.zeros((1, 2), dtype=np.int64), hold, passes=0)


@pytest.mark.parametrize("history", [False, True])
def test_split_placement_slots_and_connected_replicas(history):
    rng = np.random.default_rng(3)
    L, E, G, R = 3, 16, 4, 4
    hist = rng.poisson(rng.pareto(1.0, size=(1, L, E)) * 5 + 1, size=(30, L, E))  # (B, L, E)
    pol = PLACEMENT.make("split", num_gpus=G, num_redundant=R, candidates=4)
    if history:
        pol.fit_history(hist)
    plan = pol.place(hist.sum(axis=0))
    assert (slot_counts(plan, L, G) == (E + R) // G).all()  # equal slots per GPU
    for l in range(L):
        n = np.array([len(r) for r in plan.replicas[l]])
        assert n.sum() == E + R and set(n.tolist()) <= {1, 2}
        load = hist.sum(axis=0)[l]
        assert set(np.flatnonzero(n == 2)) == set(np.argsort(-load, kind="stable")[:R])  # heaviest
        # the replica pairs connect every GPU (load can move from any GPU to any other)
        reach, frontier = {0}, [0]
        while frontier:
            g = frontier.pop()
            for gpus in plan.replicas[l]:
                if g in gpus:
                    for h in gpus:
                        if h not in reach:
                            reach.add(h)
                            frontier.append(h)
        assert reach == set(range(G))
    # deterministic for a seed
    again = PLACEMENT.make("split", num_gpus=G, num_redundant=R, candidates=4)
    if history:
        again.fit_history(hist)
    assert again.place(hist.sum(axis=0)).replicas == plan.replicas


def test_split_placement_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="multiple"):
        PLACEMENT.make("split", num_gpus=4, num_redundant=3)
    with pytest.raises(ConfigError, match="multiple of GPUs"):
        PLACEMENT.make("split", num_gpus=4, num_redundant=4).place(np.ones((1, 6)))


def test_split_placement_balances_per_batch_better_than_eplb_on_anticorrelated_load():
    # experts peak in alternating batches: a static equal share leaves the peak where it is,
    # the split moves it through the replicas
    rng = np.random.default_rng(0)
    L, E, G = 1, 8, 4
    base = rng.poisson(10, size=(60, L, E))
    base[::2, :, :4] += 30
    base[1::2, :, 4:] += 30
    from sim.replay.placement import split_imbalance

    train, test = base[:30], base[30:]
    res = {}
    for name, kw in (("eplb", {"num_redundant": 4}), ("split", {"num_redundant": 4})):
        pol = PLACEMENT.make(name, num_gpus=G, **kw)
        if hasattr(pol, "fit_history"):
            pol.fit_history(train)
        plan = pol.place(train.sum(axis=0))
        share = plan.share(L, E)
        res[name] = (plan.imbalance(test.astype(float), share).mean(),
                     split_imbalance(test, share > 0).mean())
    for name, (equal, split) in res.items():
        assert split <= equal + 1e-9, name
    assert res["split"][1] <= res["eplb"][1] + 1e-9


# -- the simulator ---------------------------------------------------------------------------------
def _sim(cfg, pool, n=10, seed=1):
    from sim.cost import AnalyticCost
    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Simulation
    from sim.serving.binding import bind
    from sim.serving.testing import workload

    rng = np.random.default_rng(seed)
    wl = workload(np.cumsum(rng.exponential(0.01, n)).tolist(), rng.integers(5, 30, n).tolist(),
                  rng.integers(1, 8, n).tolist())
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)),
                     AnalyticCost(cfg.model, cfg.hardware), np.random.default_rng(0))
    sim.run()
    return sim, compute_metrics(sim)


def _cfg(placement, **args):
    from sim.serving.testing import tiny_config

    cfg = tiny_config(layers=3, experts=8, top_k=2, gpus_per_node=4, ep=4)
    cfg.policy.placement = placement
    cfg.policy.placement_args = args
    return cfg


def test_multi_owner_branch_equals_single_owner_branch_without_replicas():
    """The multi-owner layer costs (through the split) give the single-owner branch's numbers
    when every expert has one GPU: only replicated experts change anything."""
    from sim.serving.layer_costs import batch_shape, layer_costs
    from sim.serving.testing import random_pool

    pool = random_pool(3, 8, 2, entries=4, tokens=40, rng=np.random.default_rng(0))
    sim, _ = _sim(_cfg("greedy"), pool, n=2)
    plan = sim.plan
    assert plan.single_owner
    multi = dataclasses.replace(plan, single_owner=False)
    req = sim.req
    batch = np.arange(2)
    alloc = np.array([7, 5])
    req.ctx[:] = 0
    shape = batch_shape(req, batch, alloc)
    keys = plan.pool_keys[shape.rows]
    counts = np.bincount(keys.ravel(), minlength=plan.L * plan.E)
    a = layer_costs(plan, sim.walk.cost, counts, shape, 4)
    b = layer_costs(multi, sim.walk.cost, counts, shape, 4)
    assert np.array_equal(a.comp, b.comp) and np.array_equal(a.load, b.load)
    assert np.array_equal(a.computed, b.computed)


def test_sim_with_replicated_experts_follows_the_split():
    from sim.serving.layer_costs import batch_shape, layer_costs
    from sim.serving.testing import random_pool

    pool = random_pool(3, 8, 2, entries=4, tokens=40, rng=np.random.default_rng(0))
    sim, m = _sim(_cfg("eplb", num_redundant=4), pool)
    plan = sim.plan
    assert not plan.single_owner
    # every routed token computed exactly once, on integers
    assert sum(m["gpu_expert_tokens"]) == int(sim.tallies.computed_le.sum())
    assert np.array_equal(sim.tallies.computed_le, sim.tallies.recorded_le)
    # one iteration by hand: the loads are the split's, no busier than the equal share (+1 token)
    req = sim.req
    req.ctx[:] = 0
    shape = batch_shape(req, np.arange(3), np.array([9, 4, 6]))
    counts = np.bincount(plan.pool_keys[shape.rows].ravel(), minlength=plan.L * plan.E)
    lc = layer_costs(plan, sim.walk.cost, counts, shape, 4)
    tok = split_tokens(counts.reshape(plan.L, plan.E), plan.share > 0)
    assert np.array_equal(lc.load, tok.sum(axis=1))
    equal = np.einsum("le,leg->lg", counts.reshape(plan.L, plan.E), plan.share)
    assert (lc.load.max(axis=1) <= equal.max(axis=1) + 1).all()
    # the all-to-all follows the split: each GPU receives the tokens the split gives it
    from sim.world.traffic import gpu_traffic

    src, share = lc.a2a
    traffic = gpu_traffic(plan, src, share)  # (L, G, G) source GPU -> expert GPU
    assert np.allclose(traffic.sum(axis=1), tok.sum(axis=1))
    assert not np.allclose(gpu_traffic(plan, src, None).sum(axis=1), tok.sum(axis=1))  # not the equal share
    # and the run is reproducible byte for byte
    _, m2 = _sim(_cfg("eplb", num_redundant=4), pool)
    assert m == m2


def test_ties_rotate_with_the_routing():
    # one replicated expert on GPUs 0 and 1 and a single token per batch: a fixed tie order
    # would put every token on GPU 0; the rotating one spreads them
    hold = np.zeros((1, 3, 2), dtype=bool)
    hold[0, 0] = True
    hold[0, 1, 0] = hold[0, 2, 1] = True
    counts = np.array([[[1, 0, 0]], [[1, 1, 1]], [[1, 2, 2]], [[1, 1, 0]]])  # (N, L, E)
    out = split_tokens(counts, hold)[:, 0, 0]  # expert 0's token per batch
    assert out.sum(axis=1).tolist() == [1, 1, 1, 1]
    assert out[:, 0].sum() >= 1 and out[:, 1].sum() >= 1


def test_rebalance_hands_the_window_to_an_inner_policy_that_learns():
    pol = PLACEMENT.make("rebalance", num_gpus=2, inner="anticorr", window=3, period=2)
    hist = np.array([[[9, 9, 1, 1]], [[1, 1, 9, 9]]] * 3, dtype=float)  # (B, L=1, E=4)
    pol.fit_history(hist)  # experts 0 and 1 peak together, 0 and 2 alternate
    assert pol.inner._corr[0, 0, 1] > 0.9 and pol.inner._corr[0, 0, 2] < -0.9
    pol.place(hist.sum(axis=0))
    later = np.array([[[9, 1, 9, 1]], [[1, 9, 1, 9]]], dtype=float)  # now 0 and 2 together
    assert pol.observe(later[0]) is None
    new = pol.observe(later[1])  # replanned on the window, with the window's correlations
    assert new is not None and pol.inner._corr[0, 0, 2] > 0.9
    owner = [g[0] for g in new.replicas[0]]
    assert owner[0] != owner[2] and owner[1] != owner[3]
