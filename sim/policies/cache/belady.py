"""Belady's MIN (Belady, "A study of replacement algorithms for a virtual-storage computer", IBM
Systems Journal 5(2), 1966): the offline-optimal oracle. Evicts the resident key whose next use is
farthest in the future; a key never used again counts as farthest; equal next use: smallest id.

It reads the future: ``set_future(future)`` with ``future[i]`` the keys step ``i`` accesses (a 2-D
array (S, K) or a sequence of 1-D arrays); a step's index in that sequence is the ``step`` passed
to ``access``. Next uses are computed once with numpy (sort by key then step). Victims come from a
lazy max-heap of (next use, -id), an entry being current while the key is resident with that next
use. At step ``s`` the step's own keys have next use ``s``, the smallest of any resident key, so
the heap's top is never one of them unless every resident key is needed (then the key streams
through, as in the base protocol).

With demand loading (every miss is loaded), farthest-next-use is optimal for requests of key sets
too: tests/sim/test_policy_belady.py checks it never misses more than any other registered policy
on random traces (hypothesis) and against brute force on tiny ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from heapq import nlargest
from typing import Any

import numpy as np

from sim.errors import ConfigError
from sim.policies.base import CACHE, CachePolicy

NEVER = 1 << 40  # 'never used again': beyond any step; rank = NEVER * keys + ... fits int64


@CACHE.register("belady")
class BeladyCache(CachePolicy):
    requires_future = True

    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self._nu = [0] * self.num_keys  # eviction rank (_rank) of each resident key
        self._offsets: np.ndarray | None = None

    # -- the future -----------------------------------------------------------------------------
    def set_future(self, future: Sequence[np.ndarray]) -> None:
        if isinstance(future, np.ndarray) and future.ndim == 2:
            S, K = future.shape
            flat = future.reshape(-1).astype(np.int64)  # (S*K,)
            lens = np.full(S, K, dtype=np.int64)
        else:
            arrs = [np.asarray(f, dtype=np.int64).reshape(-1) for f in future]
            lens = np.array([len(a) for a in arrs], dtype=np.int64)
            flat = np.concatenate(arrs) if arrs else np.zeros(0, dtype=np.int64)
            S = len(arrs)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)  # (S+1,)
        step_of = np.repeat(np.arange(S, dtype=np.int64), lens)  # (N,)
        order = np.lexsort((step_of, flat))  # by key, then step
        sk, ss = flat[order], step_of[order]
        nu = np.full(len(flat), NEVER, dtype=np.int64)  # (N,) next step using the same key
        same = sk[1:] == sk[:-1]
        nu[order[:-1][same]] = ss[1:][same]
        self._flat, self._offsets, self._nu_flat = flat, offsets, nu
        self._sorted_keys, self._sorted_steps = sk, ss

    def _need_future(self) -> np.ndarray:
        if self._offsets is None:
            raise ConfigError("belady reads the future: call set_future() before access()")
        return self._offsets

    def _next_use(self, key: int, step: int, strictly_after: bool) -> int:
        """The first step (> step, or >= step) at which ``key`` is used; NEVER if none."""
        sk, ss = self._sorted_keys, self._sorted_steps
        lo, hi = np.searchsorted(sk, key, "left"), np.searchsorted(sk, key, "right")
        i = lo + np.searchsorted(ss[lo:hi], step, "right" if strictly_after else "left")
        return int(ss[i]) if i < hi else NEVER

    # -- one step -------------------------------------------------------------------------------
    def _rank(self, key: int, next_use: int) -> int:
        """Eviction rank: larger next use first, equal next use: smaller id (unique per key)."""
        return next_use * self.num_keys + (self.num_keys - 1 - key)

    def _serve(self, row: list[int], ranks: list[int]) -> tuple[list[int], list[int]]:
        """``ranks``: :meth:`_rank` of each key of ``row`` with its next use after this step."""
        res = self.resident
        rank = self._nu
        miss, n_ev, n_keep = self._plan(row)
        # the step's own resident keys still rank by next use = this step, below every other
        # resident key, so a scan for the maximum never picks them
        evicted = nlargest(n_ev, res, key=rank.__getitem__) if n_ev > 0 else []
        for v in evicted:
            res.discard(v)
        res.update(miss[:n_keep])
        for k, r in zip(row, ranks):
            rank[k] = r
        return miss, evicted

    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        offsets = self._need_future()
        row = sorted(set(int(k) for k in keys))
        known: dict[int, int] = {}
        if 0 <= step < len(offsets) - 1:
            a, b = offsets[step], offsets[step + 1]
            known = dict(zip(self._flat[a:b].tolist(), self._nu_flat[a:b].tolist()))
        ranks = [self._rank(k, known[k] if k in known else self._next_use(k, step, True))
                 for k in row]
        return self._serve(row, ranks)

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        offsets = self._need_future()
        keys = np.asarray(keys)
        S, K = keys.shape
        a, b = int(offsets[first_step]), int(offsets[first_step + S])
        if b - a != S * K or not np.array_equal(self._flat[a:b], keys.reshape(-1)):
            raise ConfigError(f"belady.replay: steps {first_step}..{first_step + S - 1} differ from "
                              f"the future given to set_future()")
        n = self.num_keys
        rank2 = self._nu_flat[a:b].reshape(S, K) * n + (n - 1 - keys)  # (S, K) see _rank
        order = np.argsort(keys, axis=1, kind="stable")  # (S, K)
        rows = np.take_along_axis(keys, order, axis=1).tolist()
        nus = np.take_along_axis(rank2, order, axis=1).tolist()
        # the loop below is _serve inlined (counts only): same state, same decisions
        res, rank, cap = self.resident, self._nu, self.capacity
        by_rank = rank.__getitem__
        misses = 0
        for row, rk in zip(rows, nus):
            miss = [k for k in row if k not in res]
            if miss:
                nm = len(miss)
                misses += nm
                room = cap - len(res)
                if nm > room:
                    n_ev = min(nm - room, len(res) - len(row) + nm)
                    if n_ev == 1:
                        res.discard(max(res, key=by_rank))
                    elif n_ev > 1:
                        for v in nlargest(n_ev, res, key=by_rank):
                            res.discard(v)
                    res.update(miss[: room + n_ev])
                else:
                    res.update(miss)
            for k, r in zip(row, rk):
                rank[k] = r
        return misses

    # -- base insert() (prefetch) path ----------------------------------------------------------
    def _on_insert(self, step: int, key: int) -> None:
        self._need_future()
        self._nu[key] = self._rank(key, self._next_use(key, step, False))

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        return max(candidates, key=self._nu.__getitem__)
