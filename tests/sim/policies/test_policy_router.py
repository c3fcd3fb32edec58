"""Request routers: the two the simulator ships, against the rule its route() applied."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies import ROUTER


def test_round_robin_counts_every_pick_over_the_live_replicas():
    r = ROUTER.make("round_robin")
    assert [r.pick([0, 1, 2], [0, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]
    assert r.pick([0, 2], [5, 0]) == 0  # the 5th request: alive[4 % 2]
    assert r.pick([0, 2], [5, 0]) == 2
    assert r.pick([1], [0]) == 1


def test_least_loaded_takes_the_fewest_then_the_smallest_index():
    r = ROUTER.make("least_loaded")
    assert r.pick([0, 1, 2], [3, 1, 1]) == 1
    assert r.pick([2, 5], [0, 0]) == 2
    assert r.pick([4], [9]) == 4


picks_st = st.lists(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5)), min_size=1, max_size=6,
                             unique_by=lambda t: t[0]), max_size=30)


@settings(max_examples=100, deadline=None)
@given(picks=picks_st)
def test_routers_reproduce_the_simulators_rule(picks):
    rr, ll = ROUTER.make("round_robin"), ROUTER.make("least_loaded")
    for n, reps in enumerate(picks):
        reps = sorted(reps)  # (index, load) of the live replicas, increasing index
        alive, loads = [i for i, _ in reps], [x for _, x in reps]
        assert rr.pick(alive, loads) == alive[n % len(alive)]
        assert ll.pick(alive, loads) == min(reps, key=lambda t: (t[1], t[0]))[0]
