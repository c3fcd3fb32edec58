"""The iteration in one compiled call (sim/serving/fused_walk.py, compiled_walk.owned_lru_iteration):
numpy's pairwise sum and the balance tally worked the numpy way, whole runs whose metrics.json
and final state are those of the general walk (with and without the other kernels), the path
taken where its case holds and left where it does not, and the kernels loaded from numba's
on-disk cache in a fresh process (a recursive kernel once crashed there)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cost import make_cost_model
from sim.engine.metrics import compute_metrics, metrics_json
from sim.engine.simulation import Simulation
from sim.serving import fused_walk
from sim.serving.testing import random_run, tiny_config

kern = pytest.importorskip("sim.serving.compiled_walk", reason="numba is not installed")


# -- numpy's float sums ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_pairwise_sum_is_numpys(seed):
    """Every length up to 128 (one block of numpy's pairwise sum), values over 16 decades: the
    same float as ``a.sum()`` (a sequential sum differs on most of them)."""
    rng = np.random.default_rng(seed)
    differs = 0
    for n in range(129):
        a = rng.random(n) * 10.0 ** rng.integers(-8, 8, n)
        assert kern.pairwise_sum(a, n) == float(a.sum()), n
        seq = 0.0
        for x in a.tolist():
            seq += x
        differs += seq != float(a.sum())
    assert differs > 10  # (the order matters on these values: the test can tell)


def test_pairwise_sum_by_hand():
    """[1e16, 1 x 7, -1e16]: the 8 running sums start as the first 8 values and combine as
    ((1e16 + 1) + (1 + 1)) + ((1 + 1) + (1 + 1)) = (1e16 + 2) + 4 (1e16 + 1 rounds to 1e16, the
    floats there are 2 apart), then + -1e16: 6.0. One by one every + 1 rounds away: 0.0."""
    a = np.array([1e16] + [1.0] * 7 + [-1e16])
    assert kern.pairwise_sum(a, 9) == float(a.sum()) == 6.0
    seq = 0.0
    for x in a.tolist():
        seq += x
    assert seq == 0.0
    b = np.array([1.0, 2.0, 3.0])
    assert kern.pairwise_sum(b, 3) == 6.0 and kern.pairwise_sum(b, 0) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_imbalance_is_the_walks(seed):
    """The balance tally of random loads (token counts, some layers without tokens) as
    LayerWalk.iteration computes it with numpy."""
    rng = np.random.default_rng(seed)
    L, G = int(rng.integers(1, 70)), int(rng.integers(2, 17))
    load = rng.integers(0, 50, (L, G)).astype(np.float64)
    load[rng.random(L) < 0.2] = 0.0
    s = load.sum(axis=1)
    nz = s > 0
    want = float((load.max(axis=1)[nz] * G / s[nz]).sum())
    got, n = kern.imbalance(load)
    assert (got, n) == (want, int(nz.sum()))


def test_imbalance_by_hand():
    """Two GPUs: layer 0 loads (3, 1): 3 * 2 / 4 = 1.5; layer 1 none; layer 2 (2, 2): 1.0."""
    assert kern.imbalance(np.array([[3.0, 1.0], [0.0, 0.0], [2.0, 2.0]])) == (2.5, 2)


# -- whole runs -----------------------------------------------------------------------------------
def _sim(cfg, seed: int, n: int, tokens: int) -> Simulation:
    wl, pool, binding, rng = random_run(cfg, seed, n, tokens)
    cost = make_cost_model("analytic", cfg.model, cfg.hardware, None, cfg.cluster, cfg.engine,
                           cfg.host, cfg.offload)
    return Simulation(cfg, wl, pool, binding, cost, rng)


def _run(cfg, mode: str, seed: int, monkeypatch, n: int = 16, tokens: int = 9) -> tuple:
    """metrics.json, the final state (links, stamps, tallies) and how often the fused path ran
    or declined; ``mode``: "numpy" (no kernel), "kernels" (the kernels, never fused), "fused"."""
    import sim.serving.walk as walk_mod

    taken = {"fused": 0, "declined": 0}
    real = fused_walk.FusedWalk.run

    def spy(self, *a):
        d = real(self, *a)
        taken["fused" if d is not None else "declined"] += 1
        return d

    with monkeypatch.context() as mp:
        mp.setattr(fused_walk.FusedWalk, "run", spy)
        if mode == "kernels":
            mp.setattr(walk_mod, "fused_applies", lambda w: False)
        s = _sim(cfg, seed, n, tokens)
        s.walk.compile_after = 10**9 if mode == "numpy" else 1
        s.run()
    state = []
    for rep in s.replicas:
        for g in rep.states:
            x = g.link
            if x._lazy is not None:
                x._unlazy()
            state.append((x.t, x._solo, x.bytes_total, list(x.gaps), g.busy_s, g.stall_s,
                          g.peak_resident, g.keys_touched, g.evicted_reused))
            if g.cache is not None:  # (its state, however it is held: arrays or objects)
                state.append((sorted(g.cache.resident), g.cache.counts))
    t = s.tallies
    state.append((t.iter_imbalance_sum, t.iter_layers, t.gpu_tokens.tolist(),
                  t.recorded_le.tolist(), t.computed_le.tolist()))
    return metrics_json(compute_metrics(s)), state, taken


@st.composite
def scenarios(draw):
    gpus = draw(st.sampled_from([2, 4]))
    # (mostly one expert of a layer per GPU: a token's experts then never share a GPU, the case
    # the fused path computes; two per GPU send a token's duplicates once: the general walk)
    experts = draw(st.sampled_from([gpus, gpus, gpus, 2 * gpus]))
    return dict(layers=draw(st.integers(1, 4)), experts=experts,
                top_k=draw(st.integers(1, min(2, experts))), gpus=gpus,
                ep=draw(st.sampled_from([gpus, gpus, gpus, 1, 2])),
                budget=draw(st.sampled_from([0.2, 0.5, 0.8, 1.0])),
                token_budget=draw(st.integers(1, 24)), seed=draw(st.integers(0, 50)),
                tokens=draw(st.integers(2, 9)),
                link=draw(st.sampled_from([2e8, 2e9, 3e10, 1e12])),
                cache=draw(st.sampled_from(["lru", "lru", "lru", "fifo", "lfu", "static"])),
                prefetch=draw(st.sampled_from(["none", "none", "none", "emoe_a"])))


def _config(s):
    cfg = tiny_config(layers=s["layers"], experts=s["experts"], top_k=s["top_k"],
                      gpus_per_node=s["gpus"], ep=s["ep"], budget_fraction=s["budget"],
                      token_budget=s["token_budget"])
    cfg.hardware.host_link_bytes_per_s = s["link"]
    cfg.policy.cache, cfg.policy.prefetch = s["cache"], s["prefetch"]
    return cfg


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(s=scenarios())
def test_random_runs_same_as_the_general_walk(s, monkeypatch):
    """Random tiny clusters under the analytic cost (expert parallel or not, every cache with an
    array form, slow links whose copies outlast an iteration, request prefetch): the same
    metrics.json and final state fused, with the kernels unfused and with numpy only."""
    try:
        want = _run(_config(s), "numpy", s["seed"], monkeypatch)
    except Exception as exc:  # a config the simulator rejects is rejected fused too
        with pytest.raises(type(exc)):
            _run(_config(s), "fused", s["seed"], monkeypatch)
        return
    assert _run(_config(s), "kernels", s["seed"], monkeypatch)[:2] == want[:2]
    got = _run(_config(s), "fused", s["seed"], monkeypatch)
    assert got[:2] == want[:2]
    assert want[2] == {"fused": 0, "declined": 0}


def test_taken_where_it_holds_and_declined_where_not(monkeypatch):
    """EP 4 with LRU: the fused path serves most iterations; with a slow host link some
    iterations find a link still copying past the first copy's start and run the general walk
    (declined, nothing changed: the same metrics as numpy, checked above); FIFO, LIFO, LFU and
    static take it too; a prefetch policy, a cache without arrays or one GPU never do."""
    base = dict(layers=3, experts=4, top_k=2, gpus=4, ep=4, budget=0.5, token_budget=16,
                seed=3, tokens=9, cache="lru", prefetch="none")
    fast = _run(_config({**base, "link": 1e12}), "fused", 3, monkeypatch, n=30)
    assert fast[2]["fused"] > 10 * max(1, fast[2]["declined"])
    assert fast[:2] == _run(_config({**base, "link": 1e12}), "numpy", 3, monkeypatch, n=30)[:2]
    slow = _run(_config({**base, "link": 2e8}), "fused", 3, monkeypatch, n=30)
    assert slow[2]["fused"] > 0 and slow[2]["declined"] > 0
    assert slow[:2] == _run(_config({**base, "link": 2e8}), "numpy", 3, monkeypatch, n=30)[:2]
    for change in ({"prefetch": "emoe_a"}, {"cache": "priority"}, {"gpus": 1, "ep": 1},
                   {"experts": 8}):
        got = _run(_config({**base, "link": 1e12, **change}), "fused", 3, monkeypatch, n=12)
        assert got[2]["fused"] == 0, change
    for cache in ("fifo", "lifo", "lfu", "static"):  # costs, the store's serve, the timing
        cfg = _config({**base, "link": 2e9, "cache": cache})
        got = _run(cfg, "fused", 3, monkeypatch, n=30)
        assert got[2]["fused"] > 10 * max(1, got[2]["declined"]), cache
        assert got[:2] == _run(_config({**base, "link": 2e9, "cache": cache}), "numpy", 3,
                               monkeypatch, n=30)[:2], cache


def test_kernels_load_from_the_disk_cache(tmp_path):
    """A fresh process compiles the kernels into an empty numba cache, a second loads them and
    both give the same iteration (a recursive kernel crashed once loaded: no recursion now)."""
    code = textwrap.dedent("""
        import numpy as np
        from sim.serving import compiled_walk as k
        a = np.arange(200.0) / 7
        print(k.pairwise_sum(a, 100), k.imbalance(np.ones((3, 2)) + np.eye(3, 2)))
    """)
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    outs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for o in outs:
        assert o.returncode == 0, o.stderr
    assert outs[0].stdout == outs[1].stdout and outs[0].stdout.strip()
    assert any(tmp_path.rglob("*.nbi"))
