"""A sim run's start-up pauses the cyclic garbage collector (its modules, Hydra's machinery, the
world: long-lived objects, little garbage) and turns it back on for the simulation and after the
command; a collector the caller had turned off stays off."""

from __future__ import annotations

import gc

import pytest

import sim.engine.simulation as simulation
import sim.serving.walk as walk
from sim.app.cli import main as cli_main

ARGS = ["model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1", "workload.num_requests=4",
        "workload.rate_rps=8", "workload.prompt_tokens_mean=32", "workload.output_tokens_mean=4",
        "trace.pool_size=2", "trace.pool_tokens=64", "output.progress=off",
        "output.print_summary=false"]


@pytest.fixture
def seen(monkeypatch):
    """Whether the collector was on as the world was built and at each iteration."""
    out: dict[str, list[bool]] = {"world": [], "iteration": []}
    init, iteration = simulation.Simulation.__init__, walk.LayerWalk.iteration

    def spy_init(self, *a, **k):
        out["world"].append(gc.isenabled())
        init(self, *a, **k)

    def spy_iteration(self, *a, **k):
        out["iteration"].append(gc.isenabled())
        return iteration(self, *a, **k)

    monkeypatch.setattr(simulation.Simulation, "__init__", spy_init)
    monkeypatch.setattr(walk.LayerWalk, "iteration", spy_iteration)
    return out


def test_paused_for_the_start_up_on_for_the_simulation(tmp_path, seen):
    assert gc.isenabled()
    assert cli_main(["sim", *ARGS, f"hydra.run.dir={tmp_path / 'a'}"]) == 0
    assert seen["world"] == [False] and seen["iteration"] and all(seen["iteration"])
    assert gc.isenabled()
    with pytest.raises(SystemExit):  # a run that fails (here in its config) turns it back on too
        cli_main(["sim", *ARGS, "policy.cache=nope", f"hydra.run.dir={tmp_path / 'b'}"])
    assert gc.isenabled()


def test_a_collector_turned_off_stays_off(tmp_path, seen):
    gc.disable()
    try:
        assert cli_main(["sim", *ARGS, f"hydra.run.dir={tmp_path / 'a'}"]) == 0
        assert not gc.isenabled() and seen["iteration"] and not any(seen["iteration"])
    finally:
        gc.enable()
