"""Helpers shared by the tests/sim tests (imported as ``from tests.sim.sim_test_helpers import ...``, like
tests/traces/cli_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest


def slot_counts(plan, L, G):
    """(L, G) number of expert replicas each GPU holds per layer; checks every replica lists >= 1
    distinct GPUs."""
    s = np.zeros((L, G), dtype=np.int64)
    for l in range(L):
        for gpus in plan.replicas[l]:
            assert len(set(gpus)) == len(gpus) >= 1
            for g in gpus:
                s[l, g] += 1
    return s


def assert_log(got, want):
    """A Recorder's events equal the wanted (name, kind, gpu, start, end) rows, in order, the times
    to 1e-12."""
    assert [e[:3] for e in got] == [w[:3] for w in want]
    for g, w in zip(got, want):
        assert g[3:] == pytest.approx(w[3:], abs=1e-12), (g, w)


def run_recorded(cfg, wl, pool, cost):
    """Simulate ``wl`` on ``pool`` with ``cost``, recording every event: (sim, events, metrics)."""
    from sim.engine.metrics import compute_metrics
    from sim.engine.simulation import Recorder, Simulation
    from sim.serving.binding import bind

    rec = Recorder(0.0, float("inf"))
    b = bind(pool, wl, "wrap", np.random.default_rng(0))
    sim = Simulation(cfg, wl, pool, b, cost, np.random.default_rng(0), recorder=rec)
    sim.run()
    return sim, rec.events, compute_metrics(sim)


def run_tiny(cfg, seed: int = 0, n: int = 12, prompt: int = 14, output: int = 5, entries: int = 4,
             tokens: int = 11):
    """A run of ``n`` random requests (arrivals within 10 ms each, prompts 1..``prompt``, outputs
    1..``output`` tokens) on a random routing pool (``entries`` of ``tokens`` tokens) with the
    stub cost model: the simulation, after its run, and its metrics.json bytes. Same seed, same
    run (the fast paths' tests compare two configs on it)."""
    from sim.engine.metrics import compute_metrics, metrics_json
    from sim.engine.simulation import Simulation
    from sim.serving.binding import bind
    from sim.serving.testing import StubCost, random_pool, workload

    rng = np.random.default_rng(seed)
    m = cfg.model
    pool = random_pool(m.num_layers, m.num_experts, m.top_k, entries=entries, tokens=tokens, rng=rng)
    r = np.random.default_rng(seed + 1)
    wl = workload(np.cumsum(r.uniform(0, 0.01, n)).tolist(),
                  r.integers(1, prompt + 1, n).tolist(), r.integers(1, output + 1, n).tolist())
    sim_ = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(a2a_s=0.0003), rng)
    sim_.run()
    return sim_, metrics_json(compute_metrics(sim_))


def answered(monkeypatch, cls, name: str) -> list[bool]:
    """Spies on method ``name`` of ``cls`` (monkeypatched): the list it returns gets, per call,
    whether it answered (returned anything but None: a fast path that took the call)."""
    real = getattr(cls, name)
    seen: list[bool] = []

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(cls, name, spy)
    return seen


def refused_alike(exc: Exception, make, run) -> None:
    """A config the simulator refused (``exc``, on one path) is refused with the same exception
    type on both: ``run(cfg)`` of ``make()`` with and without the array paths
    (``policy.cache_arrays``)."""
    for arrays in (True, False):
        with pytest.raises(type(exc)):
            cfg = make()
            cfg.policy.cache_arrays = arrays
            run(cfg)
