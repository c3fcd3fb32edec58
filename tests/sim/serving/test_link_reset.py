"""A failure restarts a host link's clocks at its time (sim/serving/link.py ``reset``): the
iteration cut off by it was walked ahead of time, so the prefetches it served never ran. Worked
by hand on one link, and the whole run that once stopped on the link's internal check (one GPU,
a fault, perfect prefetch one layer ahead, a 200 B/s link; found by the prefetch walk's random
scenarios) completing alike through the objects and the compiled walk."""

from __future__ import annotations

import pytest

from sim.serving.link import Link
from sim.serving.testing import tiny_config
from sim.world.config import FaultConfig
from tests.sim.sim_test_helpers import run_tiny


def test_a_reset_forgets_the_prefetches_served_ahead():
    """100 B/s, no latency. A prefetch of 10 B issued at 0.1 s is served to its end, 0.2 s (the
    walk asked when it lands). The GPU fails at 0.05 s: the link restarts there. A prefetch
    issued at 0.12 s (after recovery) then runs 0.12 -> 0.17 s (5 B), not from 0.2 s behind the
    copy that never ran, and a demand copy at 0.15 s pauses it (3 B done): 0.15 -> 0.16 s
    (1 B), the prefetch's last 2 B then 0.16 -> 0.18 s."""
    x = Link(100.0, 0.0)
    tid = x.add(0.1, 10.0)
    assert x.finish(tid) == pytest.approx(0.2) and x.pt == pytest.approx(0.2)
    x.reset(0.05)
    assert x.pt == 0.05 and not x.pq and not x.gaps and not x.done
    t2 = x.add(0.12, 5.0)
    assert x.fetch(0.15, 1.0) == pytest.approx(0.16)  # (before, it raised: 0.15 < 0.2 served)
    assert x.finish(t2) == pytest.approx(0.18)


def test_a_reset_never_moves_the_clock_back_past_a_later_start():
    """Reset at 0.3 s on a link whose prefetches were served to 0.2 s: the clock is 0.3 s; a
    prefetch issued at 0.4 s starts then (the queue waits for its copies' issue times)."""
    x = Link(100.0, 0.0)
    tid = x.add(0.1, 10.0)
    x.finish(tid)
    x.reset(0.3)
    assert x.pt == 0.3
    assert x.finish(x.add(0.4, 1.0)) == pytest.approx(0.41)


def _cfg(arrays: bool):
    cfg = tiny_config(layers=4, experts=4, top_k=1, gpus_per_node=1, ep=1, budget_fraction=0.3,
                      token_budget=4, host_bytes_per_s=200.0)
    cfg.policy.cache, cfg.policy.prefetch = "lru", "perfect"
    cfg.policy.prefetch_args = {"lead": 1}
    cfg.cluster.faults = [FaultConfig(time_s=0.01, gpu=0, recovery_s=0.02)]
    cfg.policy.cache_arrays = arrays
    return cfg


def test_the_run_cut_by_a_fault_mid_prefetch_completes_alike():
    """The fault at 0.01 s cuts an iteration whose prefetch had been served to 0.038 s; after
    recovery a demand copy at 0.038 s used to stop the run ("internal: a demand copy at 0.038
    after prefetches were served up to 0.038000000000000006") in both walks."""
    out = []
    for arrays in (True, False):
        sim_, metrics = run_tiny(_cfg(arrays), 41, n=14, output=6, tokens=5)
        assert sim_.env.now > 0.03 and all(r.alive for r in sim_.replicas)
        out.append(metrics)
    assert out[0] == out[1]
