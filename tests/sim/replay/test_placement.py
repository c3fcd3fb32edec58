"""Placement policies and ``moesim placement``."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies import PLACEMENT
from sim.policies.placement.exhaustive import best_layer
from sim.policies.placement.rebalance import moves
from tests.sim.sim_test_helpers import slot_counts


@settings(max_examples=60, deadline=None)
@given(G=st.sampled_from([2, 4, 8]), per=st.integers(1, 4), R_mult=st.integers(0, 2),
       nodes=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_eplb_never_exceeds_slot_count(G, per, R_mult, nodes, seed):
    E = G * per
    R = G * R_mult
    if E % nodes or R % nodes or G % nodes:
        return
    rng = np.random.default_rng(seed)
    load = rng.pareto(1.0, size=(3, E)) * 100  # (L, E) heavy-tailed
    if (E + R) // nodes > (E // nodes) * (G // nodes):  # more replicas than distinct GPUs allow
        import pytest

        from sim.common.errors import ConfigError

        with pytest.raises(ConfigError, match="replicas"):
            PLACEMENT.make("eplb", num_gpus=G, num_redundant=R, num_nodes=nodes).place(load)
        return
    plan = PLACEMENT.make("eplb", num_gpus=G, num_redundant=R, num_nodes=nodes).place(load)
    s = slot_counts(plan, 3, G)
    assert (s <= (E + R) // G).all()
    assert s.sum() == 3 * (E + R)
    # hot experts got the replicas: the hottest has at least as many as the coldest
    for l in range(3):
        n = np.array([len(r) for r in plan.replicas[l]])
        assert n[np.argmax(load[l])] >= n[np.argmin(load[l])]


def test_huang_greedy_hand_example():
    # 4 experts, 2 GPUs, 2 slots each: loads 10, 7, 6, 1 -> 10 on GPU0, 7 on GPU1, 6 on GPU1, 1 GPU0
    plan = PLACEMENT.make("greedy", num_gpus=2).place(np.array([[10.0, 7.0, 6.0, 1.0]]))
    assert plan.replicas[0] == [(0,), (1,), (1,), (0,)]
    assert plan.gpu_load(np.array([[10.0, 7.0, 6.0, 1.0]])).tolist() == [[11.0, 13.0]]


@settings(max_examples=40, deadline=None)
@given(G=st.sampled_from([2, 3]), per=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_exhaustive_is_no_worse_than_any_policy(G, per, seed):
    E = G * per
    load = np.random.default_rng(seed).integers(0, 50, size=(2, E)).astype(float)
    best = PLACEMENT.make("exhaustive", num_gpus=G).place(load).gpu_load(load).max(axis=1)
    for name in ("contiguous", "round_robin", "greedy", "anticorr"):
        other = PLACEMENT.make(name, num_gpus=G).place(load).gpu_load(load).max(axis=1)
        assert (best <= other + 1e-9).all(), name
    assert best_layer(np.array([5.0, 4.0, 3.0, 3.0, 2.0, 1.0]), 2)[0] == 9.0


def test_anticorr_splits_correlated_experts():
    # experts 0 and 1 always peak together, 2 and 3 too; equal totals -> greedy may pair them
    hist = np.array([[[9, 9, 1, 1]], [[1, 1, 9, 9]]] * 5, dtype=float)  # (B, L=1, E=4)
    p = PLACEMENT.make("anticorr", num_gpus=2)
    p.fit_history(hist)
    plan = p.place(hist.sum(axis=0))
    owner = [g[0] for g in plan.replicas[0]]
    assert owner[0] != owner[1] and owner[2] != owner[3]


def test_rebalance_counts_moves():
    p = PLACEMENT.make("rebalance", num_gpus=2, window=2, period=2)
    first = p.place(np.array([[10.0, 9.0, 1.0, 1.0]]))  # greedy: owners 0, 1, 1, 0
    assert p.observe(np.array([[1.0, 1.0, 10.0, 9.0]])) is None
    new = p.observe(np.array([[1.0, 1.0, 10.0, 9.0]]))  # replan: owners 1, 0, 0, 1
    assert [g[0] for g in new.replicas[0]] == [1, 0, 0, 1]
    assert p.moved == moves(first, new) == 4


def test_placement_cli_on_synthetic_trace(tmp_path):
    from sim.app.cli import main
    from traces.format import RoutingTrace, TraceMeta, make_tokens, write_trace

    rng = np.random.default_rng(0)
    T, L, E, K = 200, 2, 8, 2
    p = rng.dirichlet(np.full(E, 0.4))
    ex = np.stack([np.stack([rng.choice(E, K, replace=False, p=p) for _ in range(L)])
                   for _ in range(T)])  # (T, L, K)
    rid = np.arange(T) // 10
    tr = RoutingTrace(ex.astype(np.int16), None, make_tokens(rid, np.arange(T) % 10, "prefill", "x"),
                      TraceMeta("DeepSeek-V2-Lite-Chat", L, E, K))
    path = tmp_path / "t.parquet"
    write_trace(tr, path)
    outs = []
    for run in ("a", "b"):
        assert main(["placement", f"trace.path={path}", "cluster.expert_parallel=4",
                     f"hydra.run.dir={tmp_path / run}",
                     "policy.placement_args.eplb.num_redundant=4", "policy.placement_args.rebalance.period=2",
                     "policy.placement_args.rebalance.window=3"]) == 0
        outs.append((tmp_path / run / "metrics.json").read_bytes())
    assert outs[0] == outs[1]
    m = json.loads(outs[0])
    assert m["train_prompts"] == m["test_prompts"] == 10
    by = {r["policy"]: r for r in m["results"]}
    assert set(by) == {"contiguous", "round_robin", "greedy", "anticorr", "eplb", "split",
                       "rebalance", "exhaustive"}
    for r in by.values():
        assert r["test_max_over_mean"] >= 1.0 - 1e-12
    # the oracle is planned on the test half: no single-copy placement beats it there
    for name in ("contiguous", "round_robin", "greedy", "anticorr"):
        assert by["exhaustive"]["test_worst_layer"] <= by[name]["test_worst_layer"] + 1e-9
    assert by["eplb"]["max_slots_per_gpu_layer"] <= (E + 4) // 4
    # per batch with each batch's tokens split across the replicas: single-copy placements are
    # unchanged, replicated ones no worse than sharing equally (up to a token's rounding)
    for name, r in by.items():
        if name == "exhaustive":
            continue
        for half in ("train", "test"):
            eq, sp = r[f"{half}_batch_max_over_mean"], r[f"{half}_batch_split_max_over_mean"]
            if r["replicas"] == L * E:
                assert sp == eq, name
            mo = r[f"{half}_batch_split_mean_over_max"]  # mean of min/max: >= 1 / mean (Jensen)
            assert 0 < mo <= 1 and mo * sp >= 1 - 1e-12
    assert by["eplb"]["test_batch_split_max_over_mean"] < by["eplb"]["test_batch_max_over_mean"]
    assert (tmp_path / "a" / "placement.png").exists()
