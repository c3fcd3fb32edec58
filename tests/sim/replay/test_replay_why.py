"""The replay's why-figures (sim/replay/why.py) on Huang et al.'s example, worked by hand.

One layer, 4 experts, caches of C = 2, every token needs experts (1, 2, 3); batch mode, one token
per batch: each batch runs 1, 2, 3 in that order.

- FIFO: batch 0 loads 1, 2, then 3 evicts 1 (ran already). Each later batch: 1 evicts 2 (runs
  later: re-used), 2 evicts 3 (re-used), 3 evicts 1 (ran already). 3 batches: 7 evictions, 4
  re-used.
- LIFO (active = the batch's union, all of it): batch 0: 3 evicts 2 (the latest in; ran already).
  Each later batch: 1 hits, 2 evicts 3 (the latest in; runs later: re-used), 3 evicts 2 (ran
  already). 3 batches: 5 evictions, 2 re-used.
"""

from __future__ import annotations

import pytest

from sim.replay.cache import replay_batch, replay_plain
from sim.replay.why import batch_reused
from sim.serving.testing import routing_trace


def _trace(tokens: int = 3):
    return routing_trace([[[1, 2, 3]]] * tokens, num_experts=4)


@pytest.mark.parametrize("policy,evictions,reused", [("fifo", 7, 4), ("lifo", 5, 2)])
def test_batch_mode_reused_evictions_by_hand(policy, evictions, reused):
    r = replay_batch(_trace(), policy, 0.5, batch_size=1).record(10)
    assert (r["evictions"], r["evictions_reused"]) == (evictions, reused)
    assert r["evictions_reused_share"] == pytest.approx(reused / evictions)
    assert r["distinct_experts_per_iteration"] == {"mean": 3.0, "max": 3}
    assert (r["cache_slots"], r["iterations_over_slots"]) == (2.0, 1.0)
    assert (r["cache_scope"], r["iteration_unit"]) == ("per_layer", "batch")


def test_plain_mode_token_is_the_iteration():
    r = replay_plain(_trace(), "lru", 0.5).record(10)
    assert r["distinct_experts_per_iteration"] == {"mean": 3.0, "max": 3}  # L x K = 1 x 3
    assert r["iterations_over_slots"] == 1.0  # K = 3 > C = 2
    assert r["evictions_reused"] == 0  # a step's victims are never its own keys
    assert r["iteration_unit"] == "token"


def test_batch_reused_counts_only_later_runs_of_the_same_batch():
    # runs: batch 0 = [1, 3], batch 1 = [0, 2]; run 0 evicts 3 (later in batch 0: yes), run 1
    # evicts 1 (earlier: no), run 2 evicts 3 (not in batch 1: no), run 2 evicts 2 (later: yes)
    import numpy as np

    starts, ids = np.array([0, 2, 4]), np.array([1, 3, 0, 2])
    assert batch_reused(starts, ids, [[3], [1], [3, 2], []]) == 2
