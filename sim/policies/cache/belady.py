"""Belady's MIN (Belady, "A study of replacement algorithms for a virtual-storage computer", IBM
Systems Journal 5(2), 1966): the offline-optimal oracle. Evicts the resident key whose next use is
farthest in the future; a key never used again counts as farthest; equal next use: smallest id.

It reads the future: ``set_future(future)`` with ``future[i]`` the keys step ``i`` accesses (a 2-D
array (S, K) or a sequence of 1-D arrays); a step's index in that sequence is the ``step`` passed
to ``access``. Next uses are computed once with numpy (sort by key then step), and with them each
key's eviction rank at each step of the future (larger next use first, equal: smaller id; unique
per key). At step ``s`` the step's own keys have next use ``s``, the smallest of any resident key,
so the largest ranks are never theirs unless a caller strays from the future (then the victims
are searched among the other keys, as the protocol wants).

With demand loading (every miss is loaded), farthest-next-use is optimal for requests of key sets
too: tests/sim/policies/test_policy_cache.py checks it never misses more than any other registered policy
on random traces (hypothesis) and against an exhaustive search on tiny ones.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from heapq import nlargest
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import CACHE, CachePolicy

NEVER = 1 << 40  # 'never used again': beyond any step; rank = NEVER * keys + ... fits int64


@CACHE.register("belady")
class BeladyCache(CachePolicy):
    requires_future = True

    def __init__(self, capacity: int, num_keys: int, cfg: Any = None) -> None:
        super().__init__(capacity, num_keys, cfg)
        self._rank = [0] * self.num_keys  # eviction rank of each resident key (larger goes first)
        self._by_rank = self._rank.__getitem__
        self._offsets: np.ndarray | None = None
        self._rows: list[list[int]] = []  # the future's keys per step, increasing
        self._ranks: list[list[int]] = []  # their ranks after that step (same order)

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
        self._flat, self._offsets = flat, offsets
        self._sorted_keys, self._sorted_steps = sk, ss
        n = self.num_keys
        rank = nu * n + (n - 1 - flat)  # (N,) see _rank_at
        if isinstance(future, np.ndarray) and future.ndim == 2:
            by_key = np.argsort(flat.reshape(S, K), axis=1, kind="stable")  # (S, K)
            self._rows = np.take_along_axis(flat.reshape(S, K), by_key, axis=1).tolist()
            self._ranks = np.take_along_axis(rank.reshape(S, K), by_key, axis=1).tolist()
        else:
            by_step = np.lexsort((flat, step_of))  # by step, then key
            keys_l, rank_l = flat[by_step].tolist(), rank[by_step].tolist()
            bounds = offsets.tolist()
            self._rows = [keys_l[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            self._ranks = [rank_l[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _need_future(self) -> np.ndarray:
        if self._offsets is None:
            raise ConfigError("belady reads the future: call set_future() before access()")
        return self._offsets

    def _rank_at(self, key: int, step: int, strictly_after: bool) -> int:
        """Eviction rank of ``key`` from its first use (> step, or >= step): larger next use
        first, equal next use: smaller id."""
        sk, ss = self._sorted_keys, self._sorted_steps
        lo, hi = np.searchsorted(sk, key, "left"), np.searchsorted(sk, key, "right")
        i = lo + np.searchsorted(ss[lo:hi], step, "right" if strictly_after else "left")
        nxt = int(ss[i]) if i < hi else NEVER
        return nxt * self.num_keys + (self.num_keys - 1 - key)

    # -- the rule -------------------------------------------------------------------------------
    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        res, by_rank = self.resident, self._by_rank
        if n == 1:
            v = max(res, key=by_rank)
            if v not in exclude:
                return [v]
        else:
            out = nlargest(n, res, key=by_rank)
            for k in out:
                if k in exclude:
                    break
            else:
                return out
        # a caller off the future, or protected keys: search among the others
        return nlargest(n, [k for k in res if k not in exclude], key=by_rank)

    def _on_step(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                 ) -> None:
        rows = self._rows
        if 0 <= step < len(rows) and rows[step] == row:
            rank = self._rank
            for k, r in zip(row, self._ranks[step]):
                rank[k] = r
        else:
            self._need_future()
            for k in row:
                self._rank[k] = self._rank_at(k, step, True)

    def _on_insert(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                   ) -> None:
        self._need_future()
        for k in loaded:
            self._rank[k] = self._rank_at(k, step, False)

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        offsets = self._need_future()
        keys = np.asarray(keys)
        S, K = keys.shape
        a, b = int(offsets[first_step]), int(offsets[first_step + S])
        if b - a != S * K or not np.array_equal(self._flat[a:b], keys.reshape(-1)):
            raise ConfigError(f"belady.replay: steps {first_step}..{first_step + S - 1} differ from "
                              f"the future given to set_future()")
        return super().replay(keys, first_step)
