"""access_steps (the simulator's per-GPU, per-iteration call) == one access() per step."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies import CACHE

ONLINE = [n for n in CACHE.names() if not CACHE.get(n).requires_future]

rows_st = st.lists(st.frozensets(st.integers(0, 11), max_size=4), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(rows_st, min_size=1, max_size=4), cap=st.integers(0, 6),
       active_extra=st.frozensets(st.integers(0, 11), max_size=5), no_active=st.booleans())
def test_access_steps_matches_access(rows, cap, active_extra, no_active):
    for name in ONLINE:
        a = CACHE.make(name, capacity=cap, num_keys=12)
        b = CACHE.make(name, capacity=cap, num_keys=12)
        step = 0
        for it in rows:
            active = None if no_active else frozenset().union(*it) | active_extra
            counts, streamed = a.access_steps(step, it, active)
            exp_counts, exp_streamed = [], 0
            for i, row in enumerate(it):
                if not row:
                    exp_counts.append(0)
                    continue
                misses = b.access(step + i, row, active)[0]
                exp_counts.append(len(misses))
                exp_streamed += sum(1 for k in misses if k not in b.resident)
            assert counts == exp_counts, name
            assert streamed == exp_streamed, name
            assert a.resident == b.resident, name
            assert a.counts == b.counts, name
            step += len(it)


# -- the fast one-key form (CachePolicy._fast_steps) against the base plan it stands for ------------
FAST = [n for n in ONLINE if CACHE.make(n, capacity=2, num_keys=4)._fast_steps(frozenset()) is not None]


def test_the_list_ordered_caches_have_a_fast_form_and_their_subclasses_do_not_inherit_it():
    assert set(FAST) == {"fifo", "lifo", "lru"}  # keep_predicted picks its own victims
    assert CACHE.make("lru", capacity=2, num_keys=4)._fast_steps(frozenset({1})) is None  # an active set


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.lists(st.integers(0, 9), min_size=0, max_size=3, unique=True), min_size=1,
                     max_size=40), cap=st.integers(0, 5), prefetch_at=st.integers(0, 40))
def test_fast_steps_key_form_equals_the_base_plan(rows, cap, prefetch_at):
    """Step by step, the fast form and the plan of CachePolicy._serve (the policy's _victims and
    _on_step) leave the same misses, victims, resident keys, order and counts; prefetches between
    steps go through the base plan in both."""
    for name in FAST:
        fast = CACHE.make(name, capacity=cap, num_keys=10)
        ref = CACHE.make(name, capacity=cap, num_keys=10)
        ref._fast_steps = lambda active: None  # the base plan only
        for i, row in enumerate(rows):
            if i == prefetch_at:
                assert fast.insert(i, [0, 5]) == ref.insert(i, [0, 5]), name
            assert fast.access(i, row) == ref.access(i, row), name
            assert list(fast._order) == list(ref._order), name
            assert fast.resident == ref.resident and fast.counts == ref.counts, name
        one_key = [[k] for r in rows for k in r[:1]]
        assert fast.access_steps(len(rows), one_key) == ref.access_steps(len(rows), one_key), name
        assert list(fast._order) == list(ref._order) and fast.counts == ref.counts, name
