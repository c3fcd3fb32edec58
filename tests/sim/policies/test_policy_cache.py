"""Cache policies against a reference model written from the replay's spec, and against sources.

The reference (``Ref``) follows the documented protocol literally: hits first, misses loaded in
increasing id order, each load into a full cache evicting the victim chosen by the spec's
ordering among resident keys not needed by the step; a key streams through when every resident
key is needed. Each policy's fast ``replay`` and its ``access`` must agree with it step by step.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies import CACHE

NEVER = 1 << 62


class Ref:
    def __init__(self, policy: str, capacity: int, future: list[list[int]]):
        self.p, self.C, self.future = policy, capacity, future
        self.res: set[int] = set()
        self.last: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.req: dict[int, int] = {}
        self.ins: dict[int, int] = {}

    def next_use(self, k: int, step: int) -> int:
        for s in range(step + 1, len(self.future)):
            if k in self.future[s]:
                return s
        return NEVER

    def order(self, k: int, step: int):  # the victim is the minimum of this key
        p = self.p
        if p in ("lru", "keep_predicted"):
            return (self.last[k], k)
        if p == "lfu":
            return (self.count[k], self.last[k], k)
        if p == "priority":
            return (self.req.get(k, 0), self.count[k], self.last[k], k)
        if p == "fifo":
            return (self.ins[k], k)
        if p == "lifo":
            return (-self.ins[k], -k)
        if p == "belady":
            return (-self.next_use(k, step), k)
        raise AssertionError(p)

    def begin_request(self) -> None:
        self.req = {}

    def access(self, step: int, keys: list[int]):
        need = set(keys)
        for k in need:
            self.count[k] = self.count.get(k, 0) + 1
            self.req[k] = self.req.get(k, 0) + 1
            if k in self.res:
                self.last[k] = step
        misses = sorted(need - self.res)
        evicted = []
        for k in misses:
            if len(self.res) >= self.C:
                cands = self.res - need
                if not cands:
                    continue
                v = min(cands, key=lambda c: self.order(c, step))
                self.res.discard(v)
                evicted.append(v)
            self.res.add(k)
            self.ins[k] = step
            self.last[k] = step
        for k in need:
            self.last[k] = step
        return misses, evicted


POLICIES = ["lru", "lfu", "fifo", "lifo", "belady", "priority", "keep_predicted"]

traces = st.integers(1, 4).flatmap(lambda k: st.tuples(
    st.just(k),
    st.integers(k, 9),  # num_keys
    st.integers(0, 60),  # steps
    st.integers(0, 8),  # capacity
    st.integers(0, 2**32 - 1),  # seed
))


def _make_trace(k: int, n: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n, 0.5))  # skewed popularity, like real routing
    return np.array([rng.choice(n, k, replace=False, p=p) for _ in range(steps)],
                    dtype=np.int64).reshape(steps, k)  # (S, K)


def _make(policy: str, C: int, n: int, keys: np.ndarray):
    c = CACHE.make(policy, capacity=C, num_keys=n)
    if c.requires_future:
        c.set_future(keys)
    return c


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=60, deadline=None)
@given(spec=traces)
def test_policy_matches_reference_step_by_step(policy, spec):
    k, n, steps, C, seed = spec
    keys = _make_trace(k, n, steps, seed)
    ref = Ref(policy, C, [set(r) for r in keys.tolist()])
    pol = _make(policy, C, n, keys)
    fast = _make(policy, C, n, keys)
    total = 0
    for s, row in enumerate(keys.tolist()):
        if policy == "priority" and s % 7 == 0:
            ref.begin_request()
            pol.begin_request(s)
        want = ref.access(s, row)
        got = pol.access(s, row)
        assert got == want, (s, row)
        assert pol.resident == ref.res
        total += len(want[0])
    if policy == "priority":  # request boundaries every 7 steps, as above
        got = 0
        for a in range(0, steps, 7):
            fast.begin_request(a)
            got += fast.replay(keys[a:a + 7], a)
    else:
        got = fast.replay(keys)
    assert got == total
    assert fast.resident == ref.res


@settings(max_examples=200, deadline=None)
@given(spec=traces)
def test_belady_never_misses_more_than_any_policy(spec):
    k, n, steps, C, seed = spec
    keys = _make_trace(k, n, steps, seed)
    misses = {p: _make(p, C, n, keys).replay(keys) for p in POLICIES}
    assert misses["belady"] == min(misses.values()), misses


def _optimal_misses(keys: list[list[int]], C: int) -> int:
    """Exhaustive search over every victim choice (tiny traces only)."""
    best = {frozenset(): 0}
    for row in keys:
        need = set(row)
        nxt: dict[frozenset, int] = {}
        for res, m in best.items():
            misses = sorted(need - res)
            states = [(set(res), 0)]
            for key in misses:
                new = []
                for r, _ in states:
                    if len(r) < C:
                        new.append((r | {key}, 0))
                    elif not (r - need):
                        new.append((r, 0))
                    else:
                        new.extend(((r - {v}) | {key}, 0) for v in sorted(r - need))
                states = new
            for r, _ in states:
                f = frozenset(r)
                nxt[f] = min(nxt.get(f, 1 << 30), m + len(misses))
        best = nxt
    return min(best.values())


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 2), n=st.integers(2, 5), steps=st.integers(0, 9), C=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_belady_equals_exhaustive_optimum(k, n, steps, C, seed):
    k = min(k, n)
    keys = _make_trace(k, n, steps, seed)
    assert _make("belady", C, n, keys).replay(keys) == _optimal_misses(keys.tolist(), C)


def test_huang_lifo_example():
    """Huang et al. Sec. 5: cache of 2, experts 1, 2, 3 needed in increasing id order, batch after
    batch. LIFO evicts 2 when loading 3 and keeps 1 (reused first by the next batch); FIFO evicts
    1 and then misses on every expert."""
    active = frozenset({1, 2, 3})
    lifo = CACHE.make("lifo", capacity=2, num_keys=4)
    fifo = CACHE.make("fifo", capacity=2, num_keys=4)
    step = itertools.count()
    seq = [1, 2, 3]
    assert [lifo.access(next(step), [e], active) for e in seq] == [([1], []), ([2], []), ([3], [2])]
    assert lifo.resident == {1, 3}
    for _ in range(3):
        assert [lifo.access(next(step), [e], active)[0] for e in seq] == [[], [2], [3]]
    for _ in range(4):
        assert [fifo.access(next(step), [e], active)[0] for e in seq] == [[1], [2], [3]]


def test_lifo_evicts_inactive_experts_first():
    c = CACHE.make("lifo", capacity=3, num_keys=8)
    c.access(0, [1])
    c.access(1, [2])
    c.access(2, [5])
    # batch needs {1, 5, 6}: 2 is inactive, so it goes although 5 is the latest in
    assert c.access(3, [6], active={1, 5, 6}) == ([6], [2])
    # plain (no active set): latest inserted first
    assert c.access(4, [7]) == ([7], [6])


def test_keep_predicted_protects_predicted_set():
    c = CACHE.make("keep_predicted", capacity=2, num_keys=8)
    c.set_predicted([3])
    c.access(0, [3])
    c.access(1, [4])
    assert c.access(2, [5]) == ([5], [4])  # LRU would evict 3
    c.set_predicted([])
    assert c.access(3, [6]) == ([6], [3])


def test_belady_requires_future_and_matching_replay():
    from sim.common.errors import ConfigError

    c = CACHE.make("belady", capacity=1, num_keys=4)
    with pytest.raises(ConfigError, match="set_future"):
        c.access(0, [1])
    c.set_future(np.array([[1], [2]]))
    with pytest.raises(ConfigError, match="differ"):
        c.replay(np.array([[1], [3]]))


def test_prefetch_insert_respects_protect_and_counts():
    c = CACHE.make("lru", capacity=2, num_keys=8)
    c.access(0, [1, 2])
    loaded, evicted = c.insert(1, [3], protect=[1])
    assert loaded == [3] and evicted == [2]
    assert c.access(2, [3]) == ([], [])


def _belady_reference(future, C):
    """Belady's MIN written plainly for one key per step: the resident key used farthest ahead
    (never: farthest) is evicted; equal next use: the smallest id. Resident sets after each step."""
    resident, out = set(), []
    for s, k in enumerate(future):
        if k not in resident:
            if len(resident) >= C:
                def nxt(r, s=s):
                    later = [t for t in range(s + 1, len(future)) if future[t] == r]
                    return later[0] if later else float("inf")
                victim = max(resident, key=lambda r: (nxt(r), -r))
                resident.discard(victim)
            resident.add(k)
        out.append(frozenset(resident))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_belady_victims_equal_a_plain_reference_step_by_step(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(3, 7))
    future = rng.integers(0, N, size=40).tolist()
    for C in (1, 2, 3):
        want = _belady_reference(future, C)
        c = CACHE.make("belady", capacity=C, num_keys=N)
        c.set_future(np.asarray(future, dtype=np.int64)[:, None])
        got = []
        for s, k in enumerate(future):
            c.access(s, [k])
            got.append(frozenset(c.resident))
        assert got == want, (seed, C)
        seq = CACHE.make("belady", capacity=C, num_keys=N)  # the future as a sequence of rows
        seq.set_future([np.array([k]) for k in future])
        seq_got = []
        for s, k in enumerate(future):
            seq.access(s, [k])
            seq_got.append(frozenset(seq.resident))
        assert seq_got == want, (seed, C)
        fast = CACHE.make("belady", capacity=C, num_keys=N)
        fast.set_future(np.asarray(future, dtype=np.int64)[:, None])
        assert fast.replay(np.asarray(future, dtype=np.int64)[:, None]) == c.counts.misses


def test_belady_ties_and_adjacent_next_uses():
    # N = 4, C = 2. s0: 2, s1: 3, s2: 0 -> 2 and 3 are never used again: the smaller id (2) goes
    c = CACHE.make("belady", capacity=2, num_keys=4)
    c.set_future(np.array([[2], [3], [0]]))
    for s, k in enumerate([2, 3, 0]):
        c.access(s, [k])
    assert sorted(c.resident) == [0, 3]
    # next uses one step apart: key 0 at step 3, key 3 at step 4 -> 3 (farther) goes at step 2
    c = CACHE.make("belady", capacity=2, num_keys=4)
    c.set_future(np.array([[0], [3], [1], [0], [3]]))
    for s, k in enumerate([0, 3, 1]):
        c.access(s, [k])
    assert sorted(c.resident) == [0, 1]
    # an expert prefetched (inserted) at step 1 for use at step 1 is not evicted by that step
    c = CACHE.make("belady", capacity=2, num_keys=4)
    c.set_future(np.array([[0], [1], [2], [0]]))
    c.access(0, [0])
    c.insert(1, [1])
    c.access(1, [1])
    assert c.counts.hits == 1 and sorted(c.resident) == [0, 1]
    c.access(2, [2])  # 1 is never used again, 0 at step 3: 1 goes
    assert sorted(c.resident) == [0, 2]
    with pytest.raises(Exception,
                       match="^belady reads the future: call set_future\\(\\) before access\\(\\)$"):
        CACHE.make("belady", capacity=1, num_keys=2).access(0, [0])


def test_belady_replay_from_a_later_step_and_its_consistency_check():
    future = np.array([[0], [1], [2], [0], [1], [3], [0]])
    ref = CACHE.make("belady", capacity=2, num_keys=4)
    ref.set_future(future)
    ref.access(0, [0])
    m_access = sum(len(ref.access(s, [int(future[s, 0])])[0]) for s in range(1, 7))
    fast = CACHE.make("belady", capacity=2, num_keys=4)
    fast.set_future(future)
    fast.access(0, [0])
    assert fast.replay(future[1:], 1) == m_access and fast.resident == ref.resident
    other = CACHE.make("belady", capacity=2, num_keys=4)
    other.set_future(future)
    with pytest.raises(Exception, match=r"^belady.replay: steps 2..4 differ from"):
        other.replay(future[1:4], 2)


def _belady_stale_reference(future, C, N, calls):
    """Belady's MIN as the policy keeps it when callers stray from the future: each key's rank is
    set when it is touched (a step: its first use in ``future`` strictly after the step; a prefetch:
    at or after it; never again: farthest) and kept until its next touch; victims are the resident
    keys outside the row (or outside the protected ones) with the largest (next use, -id), in
    that order. ``calls``: ("access", step, keys) or ("insert", step, keys, protect)."""
    rank: dict[int, tuple[int, int]] = {}
    res: set[int] = set()
    out = []

    def first_use(k, s, strict):
        later = [t for t in range(len(future)) if k in future[t] and (t > s if strict else t >= s)]
        return (later[0] if later else NEVER, -k)

    for call in calls:
        kind, s, keys = call[0], call[1], sorted(set(call[2]))
        if kind == "access":
            row, miss = keys, [k for k in keys if k not in res]
        else:
            miss = [k for k in keys if k not in res]
            row = sorted(set(miss) | ({int(p) for p in call[3]} & res))
        room = C - len(res)
        cand = sorted((k for k in res if k not in row), key=lambda k: rank[k], reverse=True)
        n_ev = min(max(len(miss) - room, 0), len(cand))
        ev = cand[:n_ev]
        res.difference_update(ev)
        kept = miss[:max(room, 0) + n_ev]
        res.update(kept)
        for k in (row if kind == "access" else kept):
            rank[k] = first_use(k, s, kind == "access")
        out.append((kept if kind == "insert" else miss, ev))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_belady_off_the_future_and_prefetches_equal_a_stale_rank_reference(seed):
    # steps that follow the future, steps that do not (other keys: ranks from the first use
    # strictly after the step, searched per key), prefetches (first use at or after the step),
    # several victims at once: each call's misses and victims equal the plain reference
    rng = np.random.default_rng(100 + seed)
    N, S = int(rng.integers(4, 8)), 24
    future = [sorted(rng.choice(N, size=int(rng.integers(1, 4)), replace=False).tolist())
              for _ in range(S)]
    for C in (2, 3):
        calls = []
        for s in range(S):
            if rng.random() < 0.3:
                calls.append(("insert", s, rng.choice(N, size=2, replace=False).tolist(),
                              rng.choice(N, size=1).tolist()))
            if rng.random() < 0.5:
                calls.append(("access", s, future[s]))
            else:
                calls.append(("access", s, rng.choice(N, size=int(rng.integers(1, 4)),
                                                      replace=False).tolist()))
        c = CACHE.make("belady", capacity=C, num_keys=N)
        c.set_future([np.array(r) for r in future])
        got = []
        for call in calls:
            if call[0] == "access":
                got.append(c.access(call[1], call[2]))
            else:
                got.append(c.insert(call[1], call[2], protect=call[3]))
        assert got == _belady_stale_reference(future, C, N, calls), (seed, C)


def test_belady_prefetch_for_its_own_step_ranks_by_that_use():
    # N = 4, C = 2, future 0: [0], 1: [1], 2: [2], 3: [0], 4: [1]. After steps 0 and 1 key 0 is
    # next used at 3, key 1 at 4. A prefetch of 2 at step 2 evicts 1 (farthest); 2's own use is
    # step 2 itself, nearer than 0's (step 3), so a second prefetch (3, never used) at step 2
    # evicts 0, and step 2 hits
    c = CACHE.make("belady", capacity=2, num_keys=4)
    c.set_future(np.array([[0], [1], [2], [0], [1]]))
    c.access(0, [0])
    c.access(1, [1])
    assert c.insert(2, [2]) == ([2], [1])
    assert c.insert(2, [3]) == ([3], [0])
    assert c.access(2, [2]) == ([], [])
    # next uses one step apart, one ranked by a step, the other by a prefetch: N = 3, C = 2,
    # future 0: [0], 1: [1], 2: [0], 3: [2]. Key 0 (step 0) is next used at 2, key 2 (prefetched
    # at step 0) at 3: step 1 evicts 2, the farther, although its id is the larger
    c = CACHE.make("belady", capacity=2, num_keys=3)
    c.set_future(np.array([[0], [1], [0], [2]]))
    c.access(0, [0])
    assert c.insert(0, [2]) == ([2], [])
    assert c.access(1, [1]) == ([1], [2])


def test_belady_victims_outside_a_step_that_holds_the_farthest_keys():
    # N = 8, C = 4, future 0: [0, 1, 2, 3], 1: [2, 3, 4, 5], 2: [0, 1]. After step 0 the ranks,
    # farthest first: 0 (step 2), 1 (step 2, larger id), 2 (step 1), 3. A step off the future
    # needing [0, 1, 6, 7] loads 6 and 7: the two farthest keys (0, 1) are its own, so the
    # victims are the two farthest of the others, 2 then 3
    c = CACHE.make("belady", capacity=4, num_keys=8)
    c.set_future([np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5]), np.array([0, 1])])
    c.access(0, [0, 1, 2, 3])
    assert c.access(1, [0, 1, 6, 7]) == ([6, 7], [2, 3])
    assert sorted(c.resident) == [0, 1, 6, 7]


def test_belady_replay_from_a_later_step_numbers_its_steps_from_there():
    # N = 3, C = 2, future 0: [0], 1: [1], 2: [2], 3: [0]. After step 0, replaying steps 1..3:
    # step 1 loads 1 (never used again), step 2 loads 2 and evicts 1 (0 is used at step 3), step
    # 3 hits 0: two misses (numbered from 0, step "0" would need [1], off the future, and rank
    # 1 by its use at step 1, then evict 0: three misses)
    future = np.array([[0], [1], [2], [0]])
    c = CACHE.make("belady", capacity=2, num_keys=3)
    c.set_future(future)
    c.access(0, [0])
    assert c.replay(future[1:], 1) == 2
    assert sorted(c.resident) == [0, 2]


def test_belady_future_as_one_key_per_step():
    # a 1-D array or a list of ints: one key per step. N = 3, C = 2, future 0: [0], 1: [1],
    # 2: [2], 3: [0]: step 2 evicts 1 (never used again), step 3 hits 0
    for future in (np.array([0, 1, 2, 0]), [0, 1, 2, 0]):
        c = CACHE.make("belady", capacity=2, num_keys=3)
        c.set_future(future)
        assert [c.access(s, [k]) for s, k in enumerate([0, 1, 2, 0])] == [
            ([0], []), ([1], []), ([2], [1]), ([], [])]


def test_belady_next_uses_one_step_apart_from_the_table_and_a_prefetch():
    # N = 3, C = 2, future 0: [2], 1: [1], 2: [0], 3: [2]. Key 2 (step 0) is next used at 3; key
    # 0, prefetched at step 0, first at 2: step 1 evicts 2, the farther, though its id is larger
    c = CACHE.make("belady", capacity=2, num_keys=3)
    c.set_future(np.array([[2], [1], [0], [2]]))
    c.access(0, [2])
    assert c.insert(0, [0]) == ([0], [])
    assert c.access(1, [1]) == ([1], [2])


def test_belady_ties_among_many_keys_go_to_the_smaller_id():
    # 20000 keys: 'never used again' ranks reach 2**40 * 20000 (past 2**53), exact as integers.
    # Keys 19991 and 19992 are never used after steps 0 and 1: step 2 evicts the smaller, 19991
    c = CACHE.make("belady", capacity=2, num_keys=20000)
    c.set_future(np.array([[19991], [19992], [0]]))
    c.access(0, [19991])
    c.access(1, [19992])
    assert c.access(2, [0]) == ([0], [19991])
