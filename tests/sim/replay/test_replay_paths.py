"""The plain replay's per-request path and the cache-log replay, by hand (sim/replay/cache.py):
a kept predicted set is not a prefetch, a zero-slot cache takes no prefetch, an insert's active
set and the cache's arguments reach the cache."""

from __future__ import annotations

import pytest

from sim.common.errors import ConfigError
from sim.replay.cache import replay_log, replay_plain
from sim.serving.testing import routing_trace


def test_a_kept_predicted_set_is_not_loaded_ahead_without_a_prefetcher():
    """keep_predicted, 2 slots, no prefetcher: eMoE-A (period 1) predicts request b from a's
    experts 0, 1, 2 (one token each; the two that fit: 0 and 1). The cache keeps them when
    resident but loads nothing ahead: 4 cold misses, 2 evictions, nothing prefetched (a
    prefetch of the prediction would load 0 before b)."""
    tr = routing_trace([[[0]], [[1]], [[2]], [[3]]], num_experts=4,
                       request_of=["a", "a", "a", "b"])
    rec = replay_plain(tr, "keep_predicted", 0.5, prefetch_kwargs={"period": 1}).record(1)
    assert (rec["misses"], rec["evictions"], rec["prefetched"], rec["loads"]) == (4, 2, 0, 4)


def test_a_cache_without_slots_is_offered_no_prefetch():
    """0 slots: every access streams through (8 of 8), and perfect_request's plans are cut to
    the slots, nothing: no prefetch is loaded or skipped."""
    tr = routing_trace([[[0], [1]], [[1], [2]], [[0], [1]], [[3], [2]]], num_experts=4,
                       request_of=["a", "a", "b", "b"])
    rec = replay_plain(tr, "lru", 0.0, prefetch="perfect_request").record(1)
    assert (rec["misses"], rec["streamed"], rec["prefetched"], rec["prefetch_skipped"]) == \
        (8, 8, 0, 0)


def test_replay_log_gives_an_insert_its_active_set():
    """LIFO, 2 slots: 0 then 1 loaded; an insert of 2 under the active set {1} evicts 0 (LIFO
    alone would evict 1, the newest); 1 then hits. The active set holds for that insert only:
    the next insert (3) evicts the newest, 2, and 1 hits again."""
    events = [("access", 0, (0,), ()), ("access", 1, (1,), ()),
              ("active", 2, (1,), ()), ("insert", 2, (2,), ()),
              ("access", 3, (1,), ()),
              ("insert", 4, (3,), ()), ("access", 5, (1,), ())]
    c = replay_log(events, "lifo", 2, 4)
    assert (c.hits, c.misses, c.prefetched, c.evictions) == (2, 2, 2, 2)


def test_replay_log_passes_the_cache_arguments():
    with pytest.raises(ConfigError, match="fill='nope'"):
        replay_log([("access", 0, (0,), ())], "static", 2, 4, cache_args={"fill": "nope"})
    c = replay_log([("access", 0, (0,), ())], "static", 2, 4, cache_args={"fill": "frequency"})
    assert (c.misses, c.loads) == (1, 1)


def test_the_per_request_path_numbers_steps_across_requests():
    """LFU, 2 slots, served request by request (beside eMoE-A, which plans nothing before its
    first rerun): a = expert 2 (step 0); b = 1, 0, 1 (steps 1-3). At step 2 expert 0 evicts one
    of 2 and 1 (one use each): the older last use, 2 (step 0); 1 then hits: 3 misses, 1
    eviction. (Steps restarted at each request would date 1 to step 0 as well: the tie to the
    smaller id, 1, evicted, then missed.)"""
    tr = routing_trace([[[2]], [[1]], [[0]], [[1]]], num_experts=3,
                       request_of=["a", "b", "b", "b"])
    rec = replay_plain(tr, "lfu", 0.7, prefetch="emoe_a").record(1)
    assert (rec["capacity"], rec["misses"], rec["hits"], rec["evictions"]) == (2, 3, 1, 1)


def test_batch_mode_why_figures_add_up_over_layers():
    """Batch mode, batches of 2 tokens, FIFO, 2 slots a layer, 4 batches: layer 0 runs 1, 2, 3
    in each (tokens (1, 2) and (2, 3)): batch 0 loads 1, 2 and 3 evicts 1; each later batch 1
    evicts 2 and 2 evicts 3 (both run later in it: re-used), 3 evicts 1 (ran already): 10
    evictions, 6 re-used, each batch over the slots. Layer 1 runs 0, 1 (exactly the slots: 2
    cold loads, never over). Together: 10 evictions, 6 re-used; 4 of the 8 (batch, layer) pairs
    over the slots; 5 experts a batch; 4 slots."""
    from sim.replay.cache import replay_batch

    tr = routing_trace([[[1, 2], [0, 1]], [[2, 3], [1, 0]]] * 4, num_experts=4)
    rec = replay_batch(tr, "fifo", 0.5, batch_size=2).record(1)
    assert (rec["evictions"], rec["evictions_reused"], rec["iterations_over_slots"]) == \
        (10, 6, 0.5)
    assert rec["distinct_experts_per_iteration"] == {"mean": 5.0, "max": 5}
    assert rec["cache_slots"] == 4.0
