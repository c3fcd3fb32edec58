"""eMoE's keep_predicted holds its predicted set until the next prediction (issue 21, defect 2):
other experts are served from the slots left, or stream through when none is left; a predicted
expert is never a victim. Before, it evicted predicted experts once no other victim was left,
and on-demand experts pushed the set out (LRU again)."""

from __future__ import annotations

from sim.policies import CACHE


def _cache(cap: int, warm: list[int], predicted: list[int]):
    c = CACHE.make("keep_predicted", capacity=cap, num_keys=16)
    c.access(0, warm)
    c.set_predicted(predicted)
    return c


def test_other_experts_use_the_slots_left():
    # 3 slots holding 1, 2, 3; predicted {1, 2}: one slot left (key 3's)
    c = _cache(3, [1, 2, 3], [1, 2])
    assert c.access(1, [4]) == ([4], [3])  # 4 takes key 3's slot
    # 5 and 6: 5 evicts 4 (the only unpredicted key), 6 has no victim: it streams through
    assert c.access(2, [5, 6]) == ([5, 6], [4])
    assert c.resident == {1, 2, 5}
    # (the 3 cold misses of the warm-up, then 4, 5, 6)
    assert (c.counts.misses, c.counts.streamed, c.counts.evictions) == (6, 1, 2)


def test_a_full_predicted_set_streams_every_other_expert():
    c = _cache(2, [1, 2], [1, 2])
    for step in range(1, 4):
        assert c.access(step, [7]) == ([7], [])  # streamed: not kept, nothing evicted
    assert c.resident == {1, 2} and c.counts.streamed == 3
    # a prefetch finds no victim either: skipped, counted
    assert c.insert(4, [9]) == ([], []) and c.counts.prefetch_skipped == 1
    # the next prediction frees the slots: 7 now evicts the least recently used of 1, 2
    c.set_predicted([2])
    assert c.access(5, [7]) == ([7], [1])


def test_a_predicted_expert_that_misses_evicts_an_unpredicted_one():
    c = _cache(2, [1, 2], [3])
    assert c.access(1, [3]) == ([3], [1])
    assert c.access(2, [4]) == ([4], [2])  # 3 is held
    assert c.access(3, [5]) == ([5], [4])
    assert 3 in c.resident
