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
from heapq import heapify, heappop, heappush
from typing import Any

import numpy as np

from sim.errors import ConfigError
from sim.policies.base import CACHE, CachePolicy

NEVER = 1 << 62


@CACHE.register("belady")
class BeladyCache(CachePolicy):
    requires_future = True

    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self._nu = [NEVER] * self.num_keys  # next use of each resident key
        self._heap: list[tuple[int, int]] = []
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
    def _serve(self, row: list[int], nus: list[int]) -> tuple[list[int], list[int]]:
        res = self.resident
        nu_of = self._nu
        heap = self._heap
        miss = [k for k in row if k not in res]
        evicted: list[int] = []
        if miss:
            room = self.capacity - len(res)
            kept = miss
            if len(miss) > room:
                n_ev = max(0, min(len(miss) - room, len(res) - (len(row) - len(miss))))
                while len(evicted) < n_ev:
                    negnu, k = heappop(heap)
                    if k in res and -negnu == nu_of[k] and k not in row:
                        evicted.append(k)
                        res.discard(k)
                kept = miss[: room + n_ev]
            for k in kept:
                res.add(k)
        for k, n in zip(row, nus):
            nu_of[k] = n
            if k in res:
                heappush(heap, (-n, k))
        if len(heap) > 4 * self.capacity + 64:
            self._heap = [(-nu_of[k], k) for k in res]
            heapify(self._heap)
        return miss, evicted

    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        offsets = self._need_future()
        row = sorted(set(int(k) for k in keys))
        known: dict[int, int] = {}
        if 0 <= step < len(offsets) - 1:
            a, b = offsets[step], offsets[step + 1]
            known = dict(zip(self._flat[a:b].tolist(), self._nu_flat[a:b].tolist()))
        nus = [known[k] if k in known else self._next_use(k, step, True) for k in row]
        return self._serve(row, nus)

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        offsets = self._need_future()
        keys = np.asarray(keys)
        S, K = keys.shape
        a, b = int(offsets[first_step]), int(offsets[first_step + S])
        if b - a != S * K or not np.array_equal(self._flat[a:b], keys.reshape(-1)):
            raise ConfigError(f"belady.replay: steps {first_step}..{first_step + S - 1} differ from "
                              f"the future given to set_future()")
        nu2 = self._nu_flat[a:b].reshape(S, K)  # (S, K)
        order = np.argsort(keys, axis=1, kind="stable")  # (S, K)
        rows = np.take_along_axis(keys, order, axis=1).tolist()
        nus = np.take_along_axis(nu2, order, axis=1).tolist()
        serve = self._serve
        misses = 0
        for row, nu in zip(rows, nus):
            misses += len(serve(row, nu)[0])
        return misses

    # -- base insert() (prefetch) path ----------------------------------------------------------
    def _on_insert(self, step: int, key: int) -> None:
        self._need_future()
        n = self._next_use(key, step, False)
        self._nu[key] = n
        heappush(self._heap, (-n, key))

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        nu = self._nu
        return max(candidates, key=lambda k: (nu[k], -k))
