"""Fault recovery (sim/serving/faults.py): a recovered GPU starts with empty caches, KV accounting never
goes negative, a re-routed request recomputes its context; and a stuck run fails, never hangs
(the simulator's livelock check in-process, pytest-timeout around any test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sim.common.errors import MoesimError
from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.serving.binding import bind
from sim.serving.testing import StubCost, random_pool, tiny_config, workload
from sim.world.config import FaultConfig

ROOT = Path(__file__).resolve().parents[3]


def _sim(faults, warm_start=False, n=6, output=40):
    cfg = tiny_config(layers=2, experts=4, top_k=1, gpus_per_node=2, ep=1, budget_fraction=0.5,
                      kv_tokens=400, token_budget=8)
    cfg.cluster.warm_start = warm_start
    cfg.cluster.faults = list(faults)
    rng = np.random.default_rng(0)
    pool = random_pool(2, 4, 1, entries=3, tokens=9, rng=rng)
    wl = workload([0.0] * n, [10] * n, [output] * n)
    return Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)


def test_recovered_gpu_starts_with_empty_caches():
    # GPU 0 (replica 0) fails at 0.05 s while both replicas serve; its requests move to replica 1
    # and it comes back at 0.06 s with nothing left to route to it: its cache must be the fresh
    # one (nothing resident, nothing counted), the old cache's counts kept as retired
    sim = _sim([FaultConfig(time_s=0.05, gpu=0, recovery_s=0.01)])
    sim.run()
    m = compute_metrics(sim)
    assert m["requests_completed"] == 6 and m["requests_rerouted"] == 3
    st0 = sim.replicas[0].states[0]
    assert st0.cache is not None and st0.capacity == 4  # half of 2 layers x 4 experts
    assert len(st0.cache.resident) == 0
    assert st0.cache.counts.accesses == 0 and st0.cache.counts.loads == 0
    assert st0.retired.accesses > 0 and st0.counts() == st0.retired
    st1 = sim.replicas[1].states[0]
    assert st1.retired.accesses == 0 and len(st1.cache.resident) == st1.capacity
    assert (sim.req.replica == 1).all()  # every request finished on the live replica


def test_recovered_gpu_is_warm_started_again():
    sim = _sim([FaultConfig(time_s=0.05, gpu=0, recovery_s=0.01)], warm_start=True)
    sim.run()
    st0 = sim.replicas[0].states[0]
    # a warm start loads the first `capacity` home experts, not counted as loads
    assert sorted(st0.cache.resident) == np.flatnonzero(st0.home_mask)[: st0.capacity].tolist()
    assert st0.cache.counts.loads == 0 and st0.cache.counts.accesses == 0


def test_fault_frees_kv_and_rerouted_requests_recompute_their_context():
    sim = _sim([FaultConfig(time_s=0.05, gpu=0, recovery_s=0.01)])
    seen = []
    finish = sim.batcher.finish

    def spy(rep, batch, alloc, now):
        out = finish(rep, batch, alloc, now)
        seen.append((rep.index, now, rep.kv_used, int(sim.req.ctx[rep.running].sum())))
        return out

    sim.batcher.finish = spy
    sim.run()
    assert all(kv >= 0 for _, _, kv, _ in seen)
    assert all(kv == held for _, _, kv, held in seen)  # KV held = the running requests' contexts
    assert all(rep.kv_used == 0 for rep in sim.replicas)  # all completed: nothing held
    r, t = sim.req, sim.tallies
    moved = r.reroutes > 0
    assert moved.sum() == 3 and t.preemptions == 0
    need = r.prompt + r.output - 1
    assert (r.processed[~moved] == need[~moved]).all()
    # a re-routed request processed its whole context again on the live replica (one that was
    # waiting at the fault had none)
    assert (r.processed[moved] >= need[moved]).all() and (r.processed[moved] > need[moved]).any()
    assert t.tokens_recomputed > 0
    assert int((r.processed - need).sum()) >= t.tokens_recomputed
    assert (r.completions == 1).all() and (r.generated == r.output).all()


def _stuck_sim():
    """The scenario of test_sim_properties' fault test: with the context reset deleted, a re-routed
    request's iterations take no simulated time, forever."""
    cfg = tiny_config(layers=2, experts=4, top_k=1, gpus_per_node=2, ep=1, budget_fraction=0.5,
                      kv_tokens=200, token_budget=8)
    cfg.cluster.faults = [FaultConfig(time_s=0.1, gpu=0, recovery_s=0.03)]
    rng = np.random.default_rng(0)
    pool = random_pool(2, 4, 1, entries=3, tokens=9, rng=rng)
    wl = workload([0.0] * 6, [10] * 6, [20] * 6)
    return Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)


def _without_context_reset():
    """faults.fail with the re-routed requests' context reset undone (the bug that hung)."""
    from sim.serving import faults

    real = faults.fail

    def fail(rep, req, tallies, now):
        ctx = req.ctx.copy()
        victims = real(rep, req, tallies, now)
        req.ctx[:] = ctx  # the bug: re-routed requests keep the context their KV no longer holds
        return victims

    return fail


def test_stuck_fault_recovery_is_a_livelock_error(monkeypatch):
    """Re-routed requests that keep their old context never catch up: the run used to spin
    forever; the livelock check makes it an error."""
    import sim.engine.simulation as engine
    from sim.serving import faults

    monkeypatch.setattr(faults, "fail", _without_context_reset())
    monkeypatch.setattr(engine, "LIVELOCK_ITERATIONS", 200)
    with pytest.raises(MoesimError, match="livelock: replica 1 ran 201 iterations"):
        _stuck_sim().run()
    monkeypatch.undo()
    _stuck_sim().run()  # the scenario itself is fine with the real fault_process


STUCK = '''
import sim.engine.simulation as engine
from sim.serving import faults
from tests.sim.serving.test_faults import _stuck_sim, _without_context_reset


def test_stuck(monkeypatch):
    monkeypatch.setattr(faults, "fail", _without_context_reset())
    monkeypatch.setattr(engine, "LIVELOCK_ITERATIONS", 10**15)  # as before the livelock check
    _stuck_sim().run()
'''


def test_a_hanging_test_fails_within_the_configured_timeout(tmp_path):
    """The project's pytest configuration (pyproject.toml, its `timeout` lowered to 2 s here)
    turns a test that never ends into a failure."""
    import tomllib

    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 10 <= int(ini["timeout"]) <= 300  # a few times the slowest test, not unlimited
    f = tmp_path / "test_stuck_scenario.py"
    f.write_text(textwrap.dedent(STUCK))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(ROOT), "-o", "timeout=2", str(f)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Timeout" in out and "1 failed" in out, out
