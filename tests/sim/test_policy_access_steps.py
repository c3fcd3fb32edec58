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
