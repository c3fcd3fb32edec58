"""A known failure, recorded (found by test_prefetch_walk.py's random scenarios, 2026-12-08, not
fixed here): on one GPU with a fault, a slow link (200 B/s), perfect prefetch one layer ahead
and LRU, a layer's demand copy is booked at 0.038 s after the link's prefetch queue was served
up to 0.038000000000000006 s: the general walk raises ``MoesimError`` ("internal: a demand copy
at ... after prefetches were served up to ...", sim/serving/link.py ``fetch``) and the compiled
walk its ``ValueError`` twin (sim/serving/compiled_prefetch.py). The two ends differ by one
rounding step, so the order of float operations (not the decision rules) is the suspect.
Strict: the test fails once the run completes, so that it is turned into a plain test then."""

from __future__ import annotations

import pytest

from sim.common.errors import MoesimError
from sim.serving.testing import tiny_config
from sim.world.config import FaultConfig
from tests.sim.sim_test_helpers import run_tiny


def _cfg(arrays: bool):
    cfg = tiny_config(layers=4, experts=4, top_k=1, gpus_per_node=1, ep=1, budget_fraction=0.3,
                      token_budget=4, host_bytes_per_s=200.0)
    cfg.policy.cache, cfg.policy.prefetch = "lru", "perfect"
    cfg.policy.prefetch_args = {"lead": 1}
    cfg.cluster.faults = [FaultConfig(time_s=0.01, gpu=0, recovery_s=0.02)]
    cfg.policy.cache_arrays = arrays
    return cfg


@pytest.mark.xfail(strict=True, raises=(MoesimError, ValueError),
                   reason="a demand copy booked one rounding step before the prefetch clock: "
                          "the link's internal check fires")
@pytest.mark.parametrize("arrays", [True, False])
def test_a_demand_copy_one_rounding_step_before_the_prefetch_clock(arrays):
    sim_, _ = run_tiny(_cfg(arrays), 41, n=14, output=6, tokens=5)
    assert sim_.env.now > 0
