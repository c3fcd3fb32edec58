"""The two caches offloading needs: ``static`` (what is placed stays, nothing else is kept) and
``none`` (nothing is kept), step by step, and their arguments."""

from __future__ import annotations

import pytest

from sim.common.errors import ConfigError
from sim.policies import CACHE


def test_static_keeps_what_was_placed_and_streams_every_other_miss():
    c = CACHE.make("static", capacity=2, num_keys=8)
    c.insert(0, [1, 2])  # the warm start: placed before serving
    assert c.resident == {1, 2} and c.pinned == {1, 2}
    assert c.access(1, [1, 5]) == ([5], [])  # 5 misses, evicts nothing, is not kept
    assert c.access(2, [5]) == ([5], [])
    assert c.resident == {1, 2}
    assert (c.counts.hits, c.counts.misses, c.counts.streamed, c.counts.evictions) == (1, 2, 2, 0)
    assert c.insert(3, [6]) == ([], [])  # a prefetch has no slot either
    assert c.counts.prefetch_skipped == 1


def test_static_without_a_warm_start_keeps_the_first_arrivals():
    c = CACHE.make("static", capacity=2, num_keys=8)
    assert c.access_steps(0, [{3}, {4, 6}, {3, 7}], None) == ([1, 2, 1], 2)
    # key 3 and key 4 filled the two slots (6 streamed), 7 streams; 3 hits
    assert c.resident == {3, 4} and c.pinned == {3, 4}
    assert c.counts.hits == 1


def test_static_never_picks_a_victim():
    c = CACHE.make("static", capacity=1, num_keys=4)
    with pytest.raises(AssertionError) as e:
        c._victims(0, 1, (), ())
    assert str(e.value) == "a static cache evicts nothing (every resident key is pinned)"


def test_static_fill_argument():
    assert CACHE.make("static", capacity=1, num_keys=4).cfg.fill == "first"
    assert CACHE.make("static", capacity=1, num_keys=4, fill="frequency").cfg.fill == "frequency"
    with pytest.raises(ConfigError) as e:
        CACHE.make("static", capacity=1, num_keys=4, fill="popular")
    assert str(e.value) == ("cache policy 'static' argument fill='popular': expected one of "
                            "first, frequency")


def test_none_keeps_nothing_whatever_its_slots():
    c = CACHE.make("none", capacity=4, num_keys=8)
    assert c.capacity == 0 and c.cfg is not None and type(c.cfg).__name__ == "NoArgs"
    c.insert(0, [1, 2])
    assert c.resident == set() and c.counts.prefetch_skipped == 2
    assert c.access(1, [1, 2]) == ([1, 2], [])
    assert c.access(2, [1]) == ([1], [])
    assert (c.counts.hits, c.counts.misses, c.counts.streamed) == (0, 3, 3)
    with pytest.raises(AssertionError) as e:
        c._victims(0, 1, (), ())
    assert str(e.value) == "a cache without slots has no resident key to evict"


def test_a_given_config_object_is_kept():
    for name in ("static", "none"):
        cfg = CACHE.get(name).Config()
        assert CACHE.get(name)(2, 4, cfg).cfg is cfg
