"""The host link serves copies in time order (sim/serving/link.py): a demand copy owns the link
while it runs, prefetch copies go one at a time in the order issued, each from its own start, in
the time the demand copies leave; a copy issued with a start earlier than copies already booked
(a request routed to a replica in the middle of an iteration the walk has already timed) still
starts then. Worked by hand, in GB and GB/s (every figure is exact in binary floating point)."""

from __future__ import annotations

import pytest

from sim.serving.link import Link

GB = 1e9


def test_prefetch_issued_inside_an_iteration_starts_at_its_own_time():
    """Issue 21, defect 5. An iteration, walked at t = 0, books its layer's 25 GB demand copy for
    t = 1.0 s on a 25 GB/s link; a request routed at t = 0.5 s issues a 25 GB prefetch.

    By hand: the prefetch runs alone 0.5-1.0 s (12.5 GB); the demand copy owns the link 1.0-2.0 s
    (25 GB, ending when the walk said: 2.0 s); the prefetch resumes at 2.0 s with 12.5 GB left:
    2.5 s. The link is busy 0.5-2.5 s with 50 GB: 2 s at 25 GB/s, never over its rate.
    Before the fix the prefetch was put at the link's clock (1.0 s) sharing the rate with a
    demand copy still said to end at 2.0 s: it ended at 3.0 s and the link had moved 75 GB-worth
    in 2 s. (Processor sharing in time order, 2.5 s / 2.0 s, would have moved the demand copy's
    end after the walk used it.)"""
    link = Link(25 * GB)
    demand = link.fetch(1.0, 25 * GB)  # the walk, at t = 0, times layer 0's copy
    pf = link.add(0.5, 25 * GB)  # the router, at t = 0.5
    assert demand == 2.0
    assert link.finish(pf) == 2.5
    assert link.bytes_total == 50 * GB


def test_demand_copy_booked_after_a_prefetch_pauses_it():
    """A 25 GB prefetch from 0; a 25 GB demand copy at 0.4 s owns the link 0.4-1.4 s; the
    prefetch has 15 GB left at 0.4 s and runs 1.4-2.0 s."""
    link = Link(25 * GB)
    pf = link.add(0.0, 25 * GB)
    assert link.fetch(0.4, 25 * GB) == 1.4
    assert link.finish(pf) == pytest.approx(2.0, abs=1e-12)


def test_prefetches_queue_across_several_demand_copies():
    """Demand copies (10 GB at 10 GB/s) at 1-2 s and 3-4 s, booked first; prefetches of 15 GB
    and 10 GB issued at 0.5 s and 0.6 s. The first runs 0.5-1 (5 GB), 2-3 (10 GB): ends 3.0 s;
    the second waits for it, pauses 3-4, runs 4-5: ends 5.0 s."""
    link = Link(10 * GB)
    assert link.fetch(1.0, 10 * GB) == 2.0
    assert link.fetch(3.0, 10 * GB) == 4.0
    a = link.add(0.5, 15 * GB)
    b = link.add(0.6, 10 * GB)
    assert link.finish_peek(b) == 5.0  # (peeking changes nothing)
    assert link.finish(a) == 3.0 and link.finish(b) == 5.0


def test_prefetch_evicted_before_it_lands_completes_unwaited():
    """A prefetch whose expert is evicted before it lands is not cancelled: ``forget`` leaves it
    on the link, so the next prefetch still waits for its bytes. 10 GB/s: A (10 GB) issued at 0
    runs 0-1 s; forgotten at 0.2 s; B (10 GB) issued at 0.2 s runs 1-2 s."""
    link = Link(10 * GB)
    a = link.add(0.0, 10 * GB)
    link.forget(a)
    b = link.add(0.2, 10 * GB)
    assert link.finish(b) == 2.0
    assert link.bytes_total == 20 * GB
    with pytest.raises(KeyError):
        link.finish(a)


def test_floor_serves_the_queue_and_the_fast_state_stays():
    """``floor(t)`` (the walk, at an iteration's start) serves prefetches up to t: one done by
    then leaves the queue empty (the fast path's condition) with its end kept for ``finish``."""
    link = Link(10 * GB)
    a = link.add(0.0, 10 * GB)
    link.floor(1.5)
    assert not link.pq and not link.gaps
    assert link.finish(a) == 1.0
    assert link.fetch(2.0, 10 * GB) == 3.0 and link.t == 2.0 and link._solo == 10 * GB


def test_reset_drops_everything():
    link = Link(10 * GB)
    link.add(0.0, 10 * GB)
    link.fetch(0.5, 10 * GB)
    link.reset(0.7)
    assert not link.pq and not link.gaps and not link.done
    assert link.fetch(0.7, 10 * GB) == pytest.approx(1.7)
