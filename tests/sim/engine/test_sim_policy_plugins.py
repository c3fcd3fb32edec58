"""Every registered policy plugs into the simulator by name (oracles are replay-only)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.policies import CACHE, PLACEMENT, PREFETCH, SCHEDULER
from sim.serving.binding import bind
from sim.serving.testing import StubCost, random_pool, tiny_config, workload


def _run(kind: str, name: str):
    cfg = tiny_config(layers=3, experts=8, top_k=2, gpus_per_node=2, ep=2, budget_fraction=0.5,
                      token_budget=16)
    setattr(cfg.policy, kind, name)
    rng = np.random.default_rng(0)
    pool = random_pool(3, 8, 2, entries=4, tokens=30, rng=rng)
    wl = workload([0.0, 0.001, 0.002, 0.01, 0.02, 0.05], [5, 9, 3, 12, 4, 7], [4, 2, 6, 3, 5, 2])
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    sim.run()
    return compute_metrics(sim)


#: policies that cannot run without arguments, and what their error asks for
NEEDS_ARGUMENTS = {("prefetch", "emoe_learned"): "needs checkpoint=DIR",
                   ("prefetch", "learned_next"): "needs checkpoint=DIR",
                   ("prefetch", "learned_topk"): "needs checkpoint=DIR"}


@pytest.mark.parametrize("kind,name", [("cache", n) for n in CACHE.names()]
                         + [("prefetch", n) for n in PREFETCH.names()]
                         + [("placement", n) for n in PLACEMENT.names()]
                         + [("scheduler", n) for n in SCHEDULER.names()])
def test_policy_runs_by_name(kind, name):
    registry = {"cache": CACHE, "prefetch": PREFETCH}.get(kind)
    cls = registry.get(name) if registry is not None else None
    # an oracle is refused, except the next-layer oracles that read the batch's routing
    if getattr(cls, "requires_future", False) and not getattr(cls, "batch_rows", False):
        with pytest.raises(ConfigError, match="oracle"):
            _run(kind, name)
        return
    if (kind, name) in NEEDS_ARGUMENTS:  # a policy that needs a file says so, by name
        with pytest.raises(ConfigError, match=NEEDS_ARGUMENTS[kind, name]):
            _run(kind, name)
        return
    m = _run(kind, name)
    assert m["requests_completed"] == 6
    assert all(p <= b for p, b in zip(m["peak_expert_bytes_per_gpu"], m["expert_budget_bytes_per_gpu"]))
    assert m["routing_fidelity"] == 1.0
