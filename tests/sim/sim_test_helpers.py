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
