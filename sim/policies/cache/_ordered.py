"""Shared machinery for caches whose victim is found by scanning one ordered list (LRU, FIFO, LIFO).

State: ``self.resident`` (the set the base class documents) plus ``self._order``, an OrderedDict of
the resident keys, oldest first. Each subclass says how a step reorders it (``_touch_hits``: LRU
moves every key the step used to the end in increasing id order; FIFO and LIFO leave hits alone)
and from which end victims are taken (``_from_back``: LIFO).

``access`` and the fast ``replay`` both run :meth:`_serve`, so the two paths share one state and
give identical results; the semantics are the base protocol's (misses loaded in increasing key
order, victims never in the step's set, a key streams through when every resident key is needed).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from sim.policies.base import CachePolicy


class OrderedCache(CachePolicy):
    _touch_hits: ClassVar[bool] = False
    _from_back: ClassVar[bool] = False
    #: whether victims outside the caller's ``active`` set go first (Huang et al.'s buffering)
    _uses_active: ClassVar[bool] = False

    def __init__(self, capacity: int, num_keys: int, **kw: Any) -> None:
        super().__init__(capacity, num_keys, **kw)
        self._order: OrderedDict[int, None] = OrderedDict()

    # -- hooks used by the base class's insert() (prefetch) ------------------------------------
    def _on_insert(self, step: int, key: int) -> None:
        self._order[key] = None

    def _on_evict(self, key: int) -> None:
        del self._order[key]

    def _victim(self, step: int, candidates: Iterable[int], active: Any) -> int:
        cands = candidates if isinstance(candidates, set | frozenset) else set(candidates)
        if not self._uses_active:
            active = ()
        seq = reversed(self._order) if self._from_back else iter(self._order)
        fallback = None
        for k in seq:
            if k in cands:
                if k not in active:
                    return k
                if fallback is None:
                    fallback = k
        assert fallback is not None, "no candidate is resident"
        return fallback

    # -- one step -------------------------------------------------------------------------------
    def _serve(self, row: list[int], active: Any = ()) -> tuple[list[int], list[int]]:
        """``row``: the step's distinct keys in increasing order. Returns (misses, evicted)."""
        res = self.resident
        od = self._order
        miss, n_ev, n_keep = self._plan(row)
        evicted: list[int] = []
        if n_ev:
            # victims in eviction order, outside the step's keys; with an ``active`` set, the
            # keys outside it first (Huang et al.), then the active ones
            passes = ((lambda k: k not in active), (lambda k: k in active)) if active else \
                ((lambda k: True),)
            for wanted in passes:
                for k in (reversed(od) if self._from_back else od):
                    if k not in row and wanted(k):
                        evicted.append(k)
                        if len(evicted) == n_ev:
                            break
                if len(evicted) == n_ev:
                    break
            for k in evicted:
                del od[k]
                res.discard(k)
        for k in miss[:n_keep]:
            res.add(k)
            od[k] = None
        if self._touch_hits:
            for k in row:
                if k in res:
                    od.move_to_end(k)
        return miss, evicted

    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        row = sorted(set(int(k) for k in keys))
        act = () if active is None or not self._uses_active else (
            active if isinstance(active, set | frozenset) else frozenset(int(k) for k in active))
        return self._serve(row, act)

    def access_steps(self, first_step: int, rows: Any, active: Iterable[int] | None = None
                     ) -> tuple[list[int], int]:
        """The base protocol's ``access_steps`` with a fast path for one-key steps (an expert-
        parallel GPU often holds one expert of a layer): same state, same decisions as ``_serve``.
        """
        cls = type(self)
        if cls.access is not OrderedCache.access or cls._serve is not OrderedCache._serve:
            return CachePolicy.access_steps(self, first_step, rows, active)  # subclass decides
        act = () if active is None or not self._uses_active else (
            active if isinstance(active, set | frozenset) else frozenset(int(k) for k in active))
        res, od, cap = self.resident, self._order, self.capacity
        touch, back = self._touch_hits, self._from_back
        serve = self._serve
        counts: list[int] = []
        streamed = 0
        for row in rows:
            n = len(row)
            if n == 0:
                counts.append(0)
            elif n == 1:
                (k,) = row
                if k in res:
                    if touch:
                        od.move_to_end(k)
                    counts.append(0)
                    continue
                counts.append(1)
                if len(res) >= cap:
                    if not res:  # capacity 0: streams through
                        streamed += 1
                        continue
                    v = None
                    if act:
                        for c in (reversed(od) if back else od):
                            if c not in act:
                                v = c
                                break
                    if v is None:
                        v = od.popitem(last=back)[0]  # the oldest (newest for LIFO) goes
                    else:
                        del od[v]
                    res.discard(v)
                res.add(k)
                od[k] = None
            else:
                miss = serve(sorted(row), act)[0]
                counts.append(len(miss))
                if miss:
                    streamed += sum(1 for k in miss if k not in res)
        return counts, streamed

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        rows = np.sort(np.asarray(keys), axis=1).tolist()  # (S, K) rows in increasing id order
        # _serve inlined for the plain case (no active set; counts only): same state and decisions
        res, od, cap = self.resident, self._order, self.capacity
        move = od.move_to_end
        touch, back = self._touch_hits, self._from_back
        misses = 0
        for row in rows:
            miss = [k for k in row if k not in res]
            if miss:
                nm = len(miss)
                misses += nm
                room = cap - len(res)
                if nm > room:
                    n_ev = min(nm - room, len(res) - len(row) + nm)
                    if n_ev > 0:
                        ev = []
                        for k in (reversed(od) if back else od):
                            if k not in row:
                                ev.append(k)
                                if len(ev) == n_ev:
                                    break
                        for k in ev:
                            del od[k]
                            res.discard(k)
                    miss = miss[: room + n_ev]
                for k in miss:
                    res.add(k)
                    od[k] = None
                if touch:
                    for k in row:
                        if k in res:
                            move(k)
            elif touch:
                for k in row:
                    move(k)
        return misses
