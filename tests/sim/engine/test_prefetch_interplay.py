"""Where prefetch meets the running layer, the cache and the clock (issue 21, defects 1-4): tiny
scenarios worked out by hand, each stating the order of events and the bytes.

StubCost: attention ``attn_s`` per layer, gating free, 2 ms per expert with tokens, copies at
2000 B/s with no latency; the tiny model's expert weighs 6 B, so one copy takes 3 ms. One GPU:
no all-to-all. A cache key is ``layer * 4 + expert``.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Policies, Recorder, Simulation
from sim.policies import CACHE
from sim.policies.base import PrefetchPolicy
from sim.replay.cache import replay_log
from sim.serving.binding import bind
from sim.serving.cache_log import CacheLog
from sim.serving.testing import StubCost, pool_from_rows, tiny_config, workload
from tests.sim.sim_test_helpers import assert_log


class NextIsTwo(PrefetchPolicy):
    """After any layer, predict expert 2 of the next one."""

    predicts_next_layer = True

    def next_layer(self, ctx, layer, experts):
        return np.array([2])


def _one_token(cache: str, frac: float, first: int, attn_s: float):
    """One request of one token: layer 0 -> expert ``first``, layer 1 -> expert 2 (key 6), which
    :class:`NextIsTwo` prefetches at layer 0's gate. Returns the simulation, its Chrome events,
    metrics, the prefetch copies issued (GPU, loaded, evicted) and the cache log."""
    pool = pool_from_rows([[[first], [2]]])
    cfg = tiny_config(layers=2, experts=4, budget_fraction=frac)
    cfg.policy.cache = cache
    wl = workload([0.0], [1], [1])
    rec, log = Recorder(0.0, float("inf")), CacheLog()
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)),
                     StubCost(attn_s=attn_s), np.random.default_rng(0), recorder=rec,
                     policies=Policies(prefetch=NextIsTwo(num_layers=2, num_experts=4, top_k=1)),
                     cache_log=log)
    issued = []
    issue = sim.walk.pred.issue
    sim.walk.pred.issue = lambda rep, copies, t: (issued.extend(copies), issue(rep, copies, t))
    sim.run()
    return sim, rec.events, compute_metrics(sim), issued, log


def test_a_prefetch_still_in_flight_when_needed_is_a_late_hit_not_a_hit():
    # 2 slots, warm keys 0, 1 (LRU). Attention 0.5 ms. Layer 0 needs key 0 (a hit); at its gate
    # (0.5 ms) the prefetch of key 6 starts (evicting key 1: key 0 is in use), lands at 3.5 ms.
    # Layer 1 is ready at 0.5 + 2 (experts L0) + 0.5 (attention L1) = 3.0 ms: key 6 is resident but
    # in flight: the layer waits 0.5 ms. Before, that counted as a hit (hit rate 100 %).
    sim, log, m, issued, clog = _one_token("lru", 0.25, 0, 0.0005)
    assert issued == [(0, [6], [1])]
    assert_log(log, [
        ("attention L0", "compute", 0, 0.0, 0.0005),
        ("experts L0", "compute", 0, 0.0005, 0.0025),
        ("prefetch L1 e2", "copy", 0, 0.0005, 0.0035),
        ("attention L1", "compute", 0, 0.0025, 0.003),
        ("experts L1", "compute", 0, 0.0035, 0.0055),
    ])
    assert (m["accesses"], m["hits"], m["late_prefetch_hits"], m["misses"]) == (2, 1, 1, 0)
    assert m["hit_rate"] == 0.5
    assert m["fetch_stall_s"] == pytest.approx(0.0005)
    assert m["h2d_bytes"] == 6 and m["e2e_s"]["p50"] == pytest.approx(0.0055)
    assert m["prefetch"] == {"issued": 1, "used": 1, "late": 1, "evicted_unused": 0, "pending": 0,
                             "skipped": 0, "bytes_wasted": 0}
    # the replay has no clock: the same calls give 2 hits, no late one
    st = sim.replicas[0].states[0]
    got = replay_log(clog.events[st.gpu], "lru", st.capacity, 8)
    assert (got.hits, got.late_prefetch_hits) == (m["hits"] + m["late_prefetch_hits"], 0)


def test_a_prefetch_that_lands_in_time_is_a_hit():
    # attention 1 ms: the copy (1 -> 4 ms) lands exactly when layer 1 is ready (1 + 2 + 1 = 4 ms)
    _, _, m, _, _ = _one_token("lru", 0.25, 0, 0.001)
    assert (m["hits"], m["late_prefetch_hits"], m["fetch_stall_s"]) == (2, 0, 0.0)


def test_a_prefetch_never_evicts_the_computing_layers_expert():
    # LIFO, 2 slots, warm keys 0 then 1 (1 the latest in). Layer 0 computes key 1 while the
    # prefetch of key 6 is decided: LIFO's victim would be key 1 (the latest in), in use; it
    # must evict key 0 instead. Before, it evicted key 1 under the running layer.
    sim, _, m, issued, clog = _one_token("lifo", 0.25, 1, 0.001)
    assert issued == [(0, [6], [0])]
    assert (m["hits"], m["late_prefetch_hits"], m["misses"], m["prefetched"]) == (2, 0, 0, 1)
    # the insert protects layer 0's and layer 1's keys and carries the iteration's active set
    ev = clog.events[sim.replicas[0].states[0].gpu]
    assert ("active", 0, (1, 6), ()) in ev and ("insert", 0, (6,), (1, 6)) in ev


def test_a_prefetch_with_no_victim_it_may_evict_is_skipped_and_counted():
    # 1 slot holding key 0, which layer 0 computes: the prefetch of key 6 has no victim it may
    # evict, so it is skipped (before, it evicted key 0 under the running layer). Layer 1 then
    # misses key 6 and fetches it on demand: attention L1 ends at 4 ms, the copy 4 -> 7 ms.
    sim, log, m, issued, _ = _one_token("lru", 0.125, 0, 0.001)
    assert issued == []
    assert (m["hits"], m["misses"], m["prefetched"], m["prefetch_skipped"]) == (1, 1, 0, 1)
    assert m["prefetch"]["skipped"] == 1 and m["h2d_bytes"] == 6
    assert m["e2e_s"]["p50"] == pytest.approx(0.009)
    assert ("copy L1 x1", "copy", 0, 0.004, 0.007) in {(e[0], e[1], e[2], round(e[3], 9),
                                                        round(e[4], 9)) for e in log}


def test_prefetch_insert_under_an_active_set_evicts_inactive_keys_only():
    # Huang et al.'s rule on the prefetch path: LIFO holding 1, 2, 3 (3 the latest in); a
    # prefetch of 5 under active {2, 3, 5} evicts 1 (inactive), not 3 (the latest in)
    c = CACHE.make("lifo", capacity=3, num_keys=8)
    c.access(0, [1, 2, 3])
    assert c.insert(1, [5], active={2, 3, 5}) == ([5], [1])
    # every resident key active: the prefetch of 6 is skipped (a demand step would evict 5)
    assert c.insert(2, [6], active={2, 3, 5, 6}) == ([], []) and c.counts.prefetch_skipped == 1
    assert c.access(3, [6], active={2, 3, 5, 6}) == ([6], [5])
    c = CACHE.make("lifo", capacity=3, num_keys=8)
    c.access(0, [1, 2, 3])
    assert c.insert(1, [5]) == ([5], [3])  # no active set: plain LIFO
