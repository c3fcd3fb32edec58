"""CachePolicy.counts: what the one serve routine and insert did, tallied by the base class."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies import CACHE
from sim.world.facts import CacheCounts

ops_st = st.lists(st.one_of(
    st.tuples(st.just("access"), st.sets(st.integers(0, 9), max_size=4), st.sets(st.integers(0, 9))),
    st.tuples(st.just("insert"), st.sets(st.integers(0, 9), max_size=4), st.sets(st.integers(0, 9))),
), max_size=40)


@pytest.mark.parametrize("name", CACHE.names())
@settings(max_examples=50, deadline=None)
@given(ops=ops_st, cap=st.integers(0, 5))
def test_counts_tally_what_access_and_insert_returned(name, ops, cap):
    c = CACHE.make(name, capacity=cap, num_keys=10)
    if c.requires_future:
        c.set_future([np.array(sorted(keys)) for _, keys, _ in ops])
    want = CacheCounts()
    for step, (op, keys, other) in enumerate(ops):
        if op == "access":
            misses, evicted = c.access(step, keys, other)
            want.hits += len(keys) - len(misses)
            want.misses += len(misses)
            want.streamed += sum(1 for k in misses if k not in c.resident)
        else:
            todo = set(keys) - c.resident
            loaded, evicted = c.insert(step, keys, protect=other)
            assert not set(evicted) & other
            want.prefetched += len(loaded)
            want.prefetch_skipped += len(todo) - len(loaded)  # no victim it may evict
        want.evictions += len(evicted)
        assert c.counts == want, (step, op)
        assert len(c.resident) <= cap


def test_counts_of_a_replay_and_of_access_steps():
    keys = np.array([[1, 2], [2, 3], [1, 4], [5, 6], [1, 2]])
    c = CACHE.make("lru", capacity=3, num_keys=8)
    assert c.replay(keys) == c.counts.misses == 8
    assert (c.counts.hits, c.counts.streamed, c.counts.evictions) == (2, 0, 5)
    assert c.counts.accesses == 10 and c.counts.hit_rate == 0.2
    s = CACHE.make("fifo", capacity=1, num_keys=8)
    # step 0: 1 fills the slot, 2 streams through; step 1 is empty; step 2: 2 evicts 1
    assert s.access_steps(0, [frozenset({1, 2}), frozenset(), frozenset({2})]) == ([2, 0, 1], 1)
    assert (s.counts.hits, s.counts.misses, s.counts.streamed, s.counts.evictions) == (0, 3, 1, 1)
    assert s.insert(3, [4, 5], protect=[2]) == ([], [])  # nothing but 2 could go
    assert s.counts.prefetched == 0
