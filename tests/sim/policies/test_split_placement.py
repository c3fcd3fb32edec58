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
    for kw, msg in (({"num_gpus": 4, "num_redundant": -4}, "split: num_redundant=-4 must be a "
                     "nonnegative multiple of the GPUs (4)"),
                    ({"num_gpus": 1, "num_redundant": 1}, "split: redundant experts need at least 2 GPUs"),
                    ({"num_gpus": 2, "num_redundant": 2, "candidates": 0},
                     "split: candidates must be >= 1, got 0")):
        with pytest.raises(ConfigError) as err:
            PLACEMENT.make("split", **kw)
        assert str(err.value) == msg
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


def test_split_greedy_over_two_rounds_by_hand():
    """G = 2, E = 8, R = 4 (two rounds; (8 + 4) / 2 = 6 slots a GPU). Loads 2, 7, 2, 0, 0, 2, 2, 3:
    order 1 (7), 7 (3), 0, 2, 5, 6 (2 each), 3, 4. Round 0: 1 -> GPU 0, 7 -> GPU 1 (half loads
    3.5, 1.5); round 1: 0 -> GPU 1 (1.5 + 1 = 2.5; expert 0 now holds GPU 1's place in the
    round), 2 -> GPU 0 (4.5); 4 slots used on each. Then 5 -> GPU 1 (4.5), 6 -> GPU 0 (tie 4.5:
    the smaller id; 6.5), 3 -> GPU 1 (its sixth slot), 4 -> GPU 0.

    Loads 4, 4, 8, 5, 3, 0, 2, 0: order 2, 3, 0, 1, 4, 6, 5, 7. Round 0: 2 -> GPU 0 (4), 3 ->
    GPU 1 (2.5); round 1: 0 -> GPU 1 (4.5), 1 -> GPU 0 (6); then 4 -> GPU 1 (7.5), 6 -> GPU 0 (8),
    5 -> GPU 1 (7.5, its sixth slot), 7 -> GPU 0."""
    pol = PLACEMENT.make("split", num_gpus=2, num_redundant=4)
    assert pol._base(np.array([2.0, 7, 2, 0, 0, 2, 2, 3])) == ([1, 0, 0, 1, 0, 1, 0, 1], [[1, 7], [2, 0]])
    assert pol._base(np.array([4.0, 4, 8, 5, 3, 0, 2, 0])) == ([1, 0, 0, 1, 1, 1, 0, 0], [[2, 3], [1, 0]])
    # no load at all: round 0 hands 0, 1, 2 to GPUs 0, 1, 2 in id order, the rest likewise
    assert PLACEMENT.make("split", num_gpus=3, num_redundant=3)._base(np.zeros(6)) == \
        ([0, 1, 2, 0, 1, 2], [[0, 1, 2]])


def test_split_swap_leaves_the_fixed_experts_out_by_hand():
    """Expert 1 is fixed (replicated); the others' per-GPU loads over two batches, owners 0, 1, 0,
    1 and X = (4, 5, 3, 2), (4, 2, 0, 0): GPU 0 has 0 and 2 (7, then 4), GPU 1 has 3 (2, then
    0): 49 + 4 + 16 = 69 (expert 1's 5 and 2 not counted). Swap 0 <-> 3: (5, 4), (0, 4): 57;
    swap 2 <-> 3: (6, 3), (4, 0): 61. The first is made; from there 0 <-> 2 gives (6, 3), (4,
    0): 61 and 0 <-> 3 back 69, both higher: it stops."""
    X = np.array([[4.0, 5, 3, 2], [4, 2, 0, 0]])
    pol = PLACEMENT.make("split", num_gpus=2, num_redundant=0)
    assert pol._swap([0, 1, 0, 1], {1}, X) == [1, 1, 0, 0]
    one = PLACEMENT.make("split", num_gpus=2, num_redundant=0, max_swaps=0)
    assert one._swap([0, 1, 0, 1], {1}, X) == [0, 1, 0, 1]  # no swap allowed


def _chosen_by_hand(pol, hist, load, candidates, seed=0):
    """Step 3 as the module doc states it, on steps 1-2 (``_base``, ``_swap``, tested above): the
    visiting orders are the ring and ``candidates - 1`` permutations of ``seed``; candidate c gives
    round i the cycle of order (c + i) mod candidates; the candidate with the least mean over
    the batches of max / mean GPU load after the split (1 for a batch without tokens) wins, the
    earlier on ties."""
    from sim.policies.placement.split import _cycle
    from sim.world.token_split import split_tokens

    B, L, E = hist.shape
    G = pol.num_gpus
    rng = np.random.default_rng(seed)
    orders = [np.arange(G)] + [rng.permutation(G) for _ in range(candidates - 1)]
    out = []
    for l in range(L):
        owner, rounds = pol._base(load[l])
        owner = pol._swap(owner, {e for r in rounds for e in r}, hist[:, l].astype(np.float64))
        best, best_row = None, None
        for c in range(candidates):
            row = [(g,) for g in owner]
            for i, members in enumerate(rounds):
                sigma = _cycle(orders[(c + i) % candidates])
                for g, e in enumerate(members):
                    row[e] = tuple(sorted((g, int(sigma[g]))))
            hold = np.zeros((1, E, G), dtype=bool)
            for e, gpus in enumerate(row):
                hold[0, e, list(gpus)] = True
            per_gpu = split_tokens(hist[:, l:l + 1, :], hold)[:, 0].sum(axis=1)  # (B, G)
            score = np.mean([b.max() / b.mean() if b.sum() else 1.0 for b in per_gpu])
            if best is None or score < best:
                best, best_row = score, row
        out.append(best_row)
    return out


def test_split_history_search_is_the_documented_one():
    """With a planning history, the placement is the one step 3 picks (``_chosen_by_hand``) for 1,
    2 and 3 candidates, over 2 layers and 2 rounds; the history changes the placement (without
    it, the ring). Batch 0 has no tokens (it scores 1), batch 1 four (a mean of 1); 8 of
    the 12 experts are replicated, the other 4 move in the swaps."""
    rng = np.random.default_rng(4)
    G, E, R, L = 4, 12, 8, 2
    hist = rng.poisson(rng.pareto(1.0, size=(1, L, E)) * 4 + 1, size=(6, L, E))
    hist[0] = 0
    hist[1] = 0
    hist[1, :, :3] = (2, 1, 1)  # one token per GPU on average: its max / mean counts
    load = hist.sum(axis=0).astype(np.float64)
    plain = PLACEMENT.make("split", num_gpus=G, num_redundant=R).place(load).replicas
    chosen = []
    for candidates in (1, 2, 3):
        pol = PLACEMENT.make("split", num_gpus=G, num_redundant=R, candidates=candidates)
        pol.fit_history(hist)
        got = pol.place(load).replicas
        assert got == _chosen_by_hand(pol, hist, load, candidates)
        chosen.append(got)
    assert chosen[1] != plain  # another cycle won
    # a history without tokens: every candidate scores 1 and the first stays, not the last:
    # layer 0's rounds are (0, 2, 9, 7) and (4, 5, 11, 10) by owner GPU 0..3; round 0 takes the
    # ring (0 on GPUs 0 and 1, 2 on 1, 2, ...), round 1 the first permutation drawn, (2, 0, 1,
    # 3): 0 -> 1 -> 3 -> 2 -> 0, so 4 on 0, 1; 5 on 1, 3; 10 on 3, 2; 11 on 2, 0
    assert np.random.default_rng(0).permutation(G).tolist() == [2, 0, 1, 3]
    pol = PLACEMENT.make("split", num_gpus=G, num_redundant=R)
    assert pol._base(load[0])[1] == [[0, 2, 9, 7], [4, 5, 11, 10]]
    pol.fit_history(np.zeros((3, L, E)))
    got = pol.place(load).replicas
    assert [got[0][e] for e in (0, 2, 9, 7, 4, 5, 10, 11)] == [(0, 1), (1, 2), (2, 3), (0, 3), (0, 1),
                                                                (1, 3), (2, 3), (0, 2)]
    assert got == _chosen_by_hand(pol, np.zeros((3, L, E)), load, 16)


def test_split_loads_of_any_numeric_type():
    """Unsigned counts give the float loads' placement (negating them would wrap: the zero-load
    expert 0 first instead of last)."""
    pol = PLACEMENT.make("split", num_gpus=2, num_redundant=2)
    counts = np.array([[0, 3, 2, 1]], dtype=np.uint32)
    assert pol.place(counts).replicas == pol.place(counts.astype(np.float64)).replicas == \
        [[(0,), (0, 1), (0, 1), (1,)]]  # 1 -> GPU 0, 2 -> GPU 1; 3 -> GPU 1 (1 < 1.5), 0 -> GPU 0
