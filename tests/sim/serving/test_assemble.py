"""The World (sim/serving/assemble.py) the simulator and realrun both drive: built without simpy,
the config checked once per run, and the walk's ``on_iteration`` hooks seeing every iteration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sim.serving.assemble as assemble
import sim.serving.plan as plan_mod
from sim.engine.run import simulate
from sim.engine.simulation import Simulation
from sim.serving.assemble import World
from sim.serving.binding import bind
from sim.serving.testing import StubCost, random_pool, tiny_config, workload
from sim.world.config import FaultConfig
from sim.world.facts import CacheCounts

ROOT = Path(__file__).resolve().parents[3]


def test_realrun_and_the_world_import_no_simpy():
    code = ("import pkgutil, importlib, sys, realrun; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(realrun.__path__, 'realrun.')]; "
            "import sim.serving.assemble; assert 'simpy' not in sys.modules, 'simpy imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr


def _parts(cache="lru", prefetch="none", ep=2, faults=(), arrays=True, n=12):
    cfg = tiny_config(layers=2, experts=10, top_k=2, gpus_per_node=2, ep=ep, budget_fraction=0.5,
                      token_budget=16, max_batch=4)
    cfg.policy.cache, cfg.policy.prefetch, cfg.policy.cache_arrays = cache, prefetch, arrays
    cfg.cluster.faults = list(faults)
    rng = np.random.default_rng(0)
    pool = random_pool(2, 10, 2, entries=6, tokens=24, rng=rng)
    arr = np.sort(rng.uniform(0, 0.05, n)).tolist()
    wl = workload(arr, rng.integers(1, 12, n).tolist(), rng.integers(1, 6, n).tolist())
    return cfg, wl, pool, bind(pool, wl, "wrap", rng)


@pytest.mark.parametrize("cache,prefetch,ep,faults,arrays", [
    ("lru", "none", 2, (), True),  # the stamp arrays
    ("lru", "none", 2, (), False),  # access_steps
    ("lfu", "emoe_l", 2, (), True),  # layer by layer, next-layer prefetch
    ("keep_predicted", "emoe_a", 2, (), True),  # request prefetch, keys in flight
    ("lru", "none", 1, (FaultConfig(time_s=0.01, gpu=0, recovery_s=0.01),), True),  # 2 replicas
])
def test_on_iteration_sees_every_iteration_and_sums_to_the_totals(cache, prefetch, ep, faults,
                                                                  arrays):
    cfg, wl, pool, b = _parts(cache, prefetch, ep, faults, arrays)
    sim = Simulation(cfg, wl, pool, b, StubCost(), np.random.default_rng(0))
    seen = []
    sim.world.on_iteration.append(seen.append)
    sim.run()
    assert len(seen) == sum(rep.iterations for rep in sim.replicas) > 0
    for r, rep in enumerate(sim.replicas):
        mine = [it for it in seen if it.replica == r]
        assert len(mine) == rep.iterations
        total = CacheCounts()
        for it in mine:
            total.add(it.counts)
        want = CacheCounts()
        for st in rep.states:
            want.add(st.counts())
        assert total == want
        assert all(a.t0 <= b.t0 for a, b in zip(mine, mine[1:]))
        if not faults:  # (a fault cuts an iteration short: the next may start before its end)
            assert all(a.t0 + a.duration_s <= b.t0 for a, b in zip(mine, mine[1:]))
    if not faults:  # (an iteration a fault interrupted processed no tokens)
        assert sum(it.tokens for it in seen) == sim.tallies.tokens_processed
    assert sum(it.counts.accesses for it in seen) > 0


def test_the_hook_changes_nothing():
    """A run with a hook and one without give the same counts and the same end time."""
    def run(hook):
        sim = Simulation(*_parts("lfu", "emoe_l"), StubCost(), np.random.default_rng(0))
        if hook:
            sim.world.on_iteration.append(lambda it: None)
        sim.run()
        return sim.env.now, [st.counts() for rep in sim.replicas for st in rep.states]

    assert run(True) == run(False)


def test_check_config_runs_once_per_run(monkeypatch):
    calls = []
    real = plan_mod.check_config

    def counted(cfg):
        calls.append(cfg)
        return real(cfg)

    monkeypatch.setattr(plan_mod, "check_config", counted)
    monkeypatch.setattr(assemble, "check_config", counted)
    cfg, wl, pool, _ = _parts()
    simulate(cfg, wl, pool)
    assert len(calls) == 1
    calls.clear()
    World(*_parts(), StubCost())  # built alone, the world checks its config itself
    assert len(calls) == 1
