"""Shared machinery for caches whose victim is found by scanning one ordered list (LRU, FIFO, LIFO,
keep_predicted).

State: ``self.resident`` (the set the base class documents) plus ``self._order``, an OrderedDict of
the resident keys, oldest first; loads are appended in load order (a step's misses in increasing
key order). Each subclass says how a served step reorders it (``_touch_hits``: LRU moves every key
the step used to the end in increasing id order; FIFO and LIFO leave hits alone) and from which
end victims are taken (``_from_back``: LIFO). With an ``active`` set, victims outside it go first
(Huang et al.'s buffering), then the active ones, each pass in list order.

The base class serves every step (``access``, ``access_steps``, ``replay``, ``insert``) through
``_victims`` and the touch hooks below, so all paths share one state and one rule.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from sim.policies.base import CachePolicy


class OrderedCache(CachePolicy):
    _touch_hits: ClassVar[bool] = False
    _from_back: ClassVar[bool] = False

    def __init__(self, capacity: int, num_keys: int, cfg: Any = None) -> None:
        super().__init__(capacity, num_keys, cfg)
        self._order: OrderedDict[int, None] = OrderedDict()

    def _victims(self, step: int, n: int, exclude: Collection[int], active: Collection[int]
                 ) -> list[int]:
        od = self._order
        if n == 1 and not active:  # the usual step: the key at the victim end, unless excluded
            k = next(reversed(od)) if self._from_back else next(iter(od))
            if k not in exclude:
                return [k]
        # one pass in list order: keys outside the active set go first (Huang et al.), the
        # active ones (kept apart, n at most) only when those run out
        out: list[int] = []
        inside: list[int] | None = None
        for k in (reversed(od) if self._from_back else od):
            if k not in exclude:
                if k not in active:
                    out.append(k)
                    if len(out) == n:
                        return out
                elif inside is None:
                    inside = [k]
                elif len(inside) < n:
                    inside.append(k)
        return out + (inside or [])[:n - len(out)]

    def _on_step(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                 ) -> None:
        od = self._order
        for k in evicted:
            del od[k]
        for k in loaded:
            od[k] = None
        if self._touch_hits and len(loaded) < len(row):  # loads already sit in row order
            res = self.resident
            move = od.move_to_end
            for k in row:
                if k in res:
                    move(k)

    def _on_insert(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                   ) -> None:
        self._on_step(step, [], loaded, evicted)  # a prefetch touches no key of its own

    def access_steps(self, first_step: int, rows: Sequence[Any], active: Any = None
                     ) -> tuple[list[int], int]:
        """The base ``access_steps`` with the simulator's usual step taken without a call: one key,
        no active set in play (an expert-parallel GPU holds one expert of a layer). Its rule is
        read from the same two flags as :meth:`_victims` and :meth:`_on_step` (which end victims
        leave from, whether a hit moves to the recent end): a missing key is never resident, so
        the victim is the end key. Other steps go through the base routine. The bench that
        needs it: ``moesim sim experiment=bench_azure_mixtral`` (tests/sim/
        test_policy_access_steps.py holds it equal to ``access``)."""
        if type(self)._victims is not OrderedCache._victims or self._active(active):
            return super().access_steps(first_step, rows, active)
        res, od, cap = self.resident, self._order, self.capacity
        back, touch = self._from_back, self._touch_hits
        out: list[int] = []
        hits = misses = streamed = evictions = 0
        streamed_base = 0  # streamed in steps the base routine served (it counted them)
        for i, row in enumerate(rows):
            if len(row) != 1:
                if row:
                    nm, st = super().access_steps(first_step + i, [row])
                    out.append(nm[0])
                    streamed_base += st
                else:
                    out.append(0)
                continue
            (k,) = row
            if k in res:
                hits += 1
                if touch:
                    od.move_to_end(k)
                out.append(0)
                continue
            misses += 1
            out.append(1)
            if len(res) >= cap:
                if not res:  # no slot at all: streams through
                    streamed += 1
                    continue
                res.discard(od.popitem(last=back)[0])
                evictions += 1
            res.add(k)
            od[k] = None
        c = self.counts
        c.hits += hits
        c.misses += misses
        c.streamed += streamed
        c.evictions += evictions
        return out, streamed + streamed_base
