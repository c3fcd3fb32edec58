"""The replay with a next-layer prefetcher (sim/replay/cache.py, tokens in order, layers in
order) worked by hand, and ``run_replay``'s defaults and progress calls."""

from __future__ import annotations

import pytest

from sim.replay.cache import replay_batch, replay_plain, run_replay
from sim.serving.testing import routing_trace


def _trace():
    """Three tokens of one request, each routed to expert 0, 1, 2 at layers 0, 1, 2 (top-1)."""
    return routing_trace([[[0], [1], [2]]] * 3, num_experts=4)


def test_a_prefetch_two_layers_ahead_evicts_what_the_token_needs_by_hand():
    """One slot per layer (0.25 x 4), LRU, ``perfect`` with lead 2: at layer 0 it names layer
    2's expert (2), inserted into layer 1's cache. Token 0: layer 0 misses 0; 2 is loaded into
    layer 1's empty cache; layer 1 misses 1 (evicting 2); layer 2 misses 2. Tokens 1 and 2:
    layer 0 hits; the insert of 2 evicts 1, which the token needs at layer 1 (a re-used
    eviction); layer 1 misses 1 (evicting 2); layer 2 hits. 9 accesses, 5 misses, 5 evictions
    (all in layer 1's cache), 2 re-used; 3 prefetch loads + 5 demand loads of 10 bytes each."""
    r = replay_plain(_trace(), "lru", 0.25, prefetch="perfect", prefetch_kwargs={"lead": 2})
    rec = r.record(10)
    assert (rec["accesses"], rec["misses"], rec["hits"], rec["evictions"]) == (9, 5, 4, 5)
    assert (rec["prefetched"], rec["loads"], rec["h2d_bytes"]) == (3, 8, 80)
    assert (rec["bytes_moved"], rec["prefetch_loads"]) == (80, 3)  # the older names
    assert (rec["evictions_reused"], rec["evictions_reused_share"]) == (2, 0.4)
    assert rec["per_layer_hit_rate"] == pytest.approx([2 / 3, 0.0, 2 / 3], abs=1e-6)
    assert rec["routing_fidelity"] == 1.0
    assert (rec["cache_scope"], rec["iteration_unit"], rec["cache_slots"]) == \
        ("per_layer", "token", 3.0)
    assert rec["distinct_experts_per_iteration"] == {"mean": 3.0, "max": 3}
    assert rec["iterations_over_slots"] == 0.0  # K = 1 <= C = 1


def test_a_prefetch_of_the_next_layer_evicts_nothing_the_token_needs():
    """The same with lead 1 (the default): at layer l it names the token's own layer l + 1
    expert, loaded into that layer's cache before the token gets there (token 0: 1 and 2, two
    prefetch loads; later tokens find them resident). One miss (token 0 at layer 0), no
    eviction, nothing re-used."""
    rec = replay_plain(_trace(), "lru", 0.25, prefetch="perfect").record(10)
    assert (rec["misses"], rec["evictions"], rec["evictions_reused"]) == (1, 0, 0)
    assert rec["evictions_reused_share"] == 0.0 and rec["prefetched"] == 2


def test_run_replay_batches_16_tokens_by_default_and_reports_each_step():
    """Batch mode without a size replays batches of 16 (40 tokens: 16, 16, 8), as
    ``replay_batch(.., 16)``; ``on_step`` is told each (policy, fraction) in order, Belady
    after the named policies."""
    import numpy as np

    rng = np.random.default_rng(2)
    ex = rng.integers(0, 8, size=(40, 2, 1))
    tr = routing_trace(ex.tolist(), num_experts=8)
    steps = []
    recs = run_replay(tr, ["lifo"], [0.25, 0.5], mode="batch", expert_bytes=10,
                      on_step=lambda name, frac: steps.append((name, frac)))
    assert steps == [("lifo", 0.25), ("belady", 0.25), ("lifo", 0.5), ("belady", 0.5)]
    for rec in recs:
        want = replay_batch(tr, rec["policy"], rec["capacity_frac"], 16).record(10)
        assert {k: rec[k] for k in want} == want
    assert replay_batch(tr, "lifo", 0.25, 16).record(10) != \
        replay_batch(tr, "lifo", 0.25, 17).record(10)  # (the size shows in the figures)


@pytest.mark.parametrize("none", ["", "none"])
def test_an_empty_or_none_prefetch_name_is_no_prefetcher(none):
    """``prefetch=""`` and ``"none"`` replay as no prefetcher: the same record as None (LRU,
    one slot a layer: token 0 misses at each of the 3 layers, tokens 1 and 2 hit; nothing
    prefetched)."""
    want = replay_plain(_trace(), "lru", 0.25).record(10)
    got = replay_plain(_trace(), "lru", 0.25, prefetch=none).record(10)
    assert {k: v for k, v in got.items() if k != "prefetch"} == \
        {k: v for k, v in want.items() if k != "prefetch"}
    assert (got["misses"], got["prefetched"]) == (3, 0)
