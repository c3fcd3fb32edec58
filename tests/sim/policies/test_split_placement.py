"""The split placement (sim/policies/placement/split.py) step by step, by hand: the greedy base
(replicated experts, owners, ties), the replica rings, the swap search and the argument checks.
The properties over random loads (slots, connected replicas, determinism, balance against EPLB)
are tests/sim/world/test_token_split.py's."""

from __future__ import annotations

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.policies import PLACEMENT


def test_split_cycle_and_greedy_base_by_hand():
    """_cycle visits the GPUs in the given order: (2, 0, 1) -> sigma = 2->0, 0->1, 1->2. Steps 1-2
    for G = 3, E = 6, R = 3 (3 slots a GPU), loads 6..1: round 0 hands 0, 1, 2 to GPUs 0, 1, 2
    (half loads 3, 2.5, 2); then 3 (load 3) to GPU 2 (2), 4 to GPU 1 (2.5), 5 to GPU 0. Without
    history the replicas follow the ring 0->1->2->0."""
    from sim.policies.placement.split import _cycle

    assert _cycle(np.array([2, 0, 1])).tolist() == [1, 2, 0]
    assert _cycle(np.arange(4)).tolist() == [1, 2, 3, 0]
    pol = PLACEMENT.make("split", num_gpus=3, num_redundant=3)
    load = np.array([6.0, 5, 4, 3, 2, 1])
    assert pol._base(load) == ([0, 1, 2, 2, 1, 0], [[0, 1, 2]])
    plan = pol.place(load[None, :])
    assert plan.replicas == [[(0, 1), (1, 2), (0, 2), (2,), (1,), (0,)]]
    # ties: equal loads go by expert id, each to the least-loaded GPU, ties the smaller GPU id
    assert pol._base(np.full(6, 2.0)) == ([0, 1, 2, 0, 1, 2], [[0, 1, 2]])
    # loads 1, 2, 1, 4, 0, 4: order 3, 5 (4 each), 1, 0, 2, 4. Round 0: 3 -> GPU 0, 5 -> 1, 1 -> 2
    # (half loads 2, 2, 1); then 0 -> GPU 2 (1), 2 -> GPU 0 (2, 2: the smaller id), 4 -> GPU 1
    assert pol._base(np.array([1.0, 2, 1, 4, 0, 4])) == ([2, 2, 0, 0, 1, 1], [[3, 5, 1]])


def test_split_two_rounds_and_no_replicas_by_hand():
    """G = 2, E = 4, R = 4 (two rounds; 4 slots a GPU), loads 4, 3, 2, 1: round 0 gives 0 to GPU 0
    and 1 to GPU 1 (half loads 2, 1.5); round 1 hands 2 to GPU 1 (less loaded) first, then 3 to
    GPU 0. Every expert is replicated on both GPUs. With R = 0: the greedy alone, loads 4, 3, 2,
    1 -> GPUs 0, 1, 1, 0 (2 slots a GPU), one copy each."""
    pol = PLACEMENT.make("split", num_gpus=2, num_redundant=4)
    assert pol._base(np.array([4.0, 3, 2, 1])) == ([0, 1, 1, 0], [[0, 1], [3, 2]])
    assert pol.place(np.array([[4.0, 3, 2, 1]])).replicas == [[(0, 1)] * 4]
    none = PLACEMENT.make("split", num_gpus=2, num_redundant=0)
    assert none.place(np.array([[4.0, 3, 2, 1], [1, 2, 3, 4]])).replicas == [
        [(0,), (1,), (1,), (0,)]] * 2  # loads 1, 2, 3, 4: order 3, 2, 1, 0 -> GPUs 0, 1, 1, 0


def test_split_rejects_each_bad_argument():
    for kw, msg in (({"num_gpus": 4, "num_redundant": -4}, "num_redundant=-4 must be a nonnegative "
                     r"multiple of the GPUs \(4\)"),
                    ({"num_gpus": 1, "num_redundant": 1}, "redundant experts need at least 2 GPUs"),
                    ({"num_gpus": 2, "num_redundant": 2, "candidates": 0},
                     "candidates must be >= 1, got 0")):
        with pytest.raises(ConfigError, match=msg):
            PLACEMENT.make("split", **kw)
    assert PLACEMENT.make("split", num_gpus=1, num_redundant=0).place(np.ones((1, 3))).replicas == \
        [[(0,), (0,), (0,)]]
    # more replicas than experts: refused (the rounds past the experts were left empty, and their
    # pairs were written over expert -1, the last one, with fewer slots than (E + R) / G used)
    with pytest.raises(ConfigError, match="split: num_redundant=4 is more than the 2 experts of a layer"):
        PLACEMENT.make("split", num_gpus=2, num_redundant=4).place(np.ones((1, 2)))
    assert PLACEMENT.make("split", num_gpus=2, num_redundant=2).place(np.array([[2.0, 1.0]])).replicas \
        == [[(0, 1), (0, 1)]]  # R = E: every expert on both GPUs


def test_split_swap_search_by_hand():
    """Two batches over 4 experts, 2 GPUs: experts 0, 1 peak together (4, 4, 0, 0), then 2, 3 (0,
    0, 4, 4). Owners 0, 0, 1, 1 put each peak on one GPU (squared loads 64 + 64 per batch); any
    swap of a GPU-0 expert with a GPU-1 one evens both batches (16 + 16 each): the first, 0 <->
    2 (smaller ids), is made, then no swap lowers the sum."""
    X = np.array([[4.0, 4, 0, 0], [0, 0, 4, 4]])
    pol = PLACEMENT.make("split", num_gpus=2, num_redundant=0)
    assert pol._swap([0, 0, 1, 1], set(), X) == [1, 0, 0, 1]
