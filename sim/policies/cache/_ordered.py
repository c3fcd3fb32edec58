"""Shared machinery for caches whose victim is found by scanning one ordered list (LRU, FIFO, LIFO,
keep_predicted).

State: ``self.resident`` (the set the base class documents) plus ``self._order``, an OrderedDict of
the resident keys, oldest first; loads are appended in load order (a step's misses in increasing
key order). Each subclass says how a served step reorders it (``_touch_hits``: LRU moves every key
the step used to the end in increasing id order; FIFO and LIFO leave hits alone) and from which
end victims are taken (``_from_back``: LIFO). With an ``active`` set, victims outside it go first
(Huang et al.'s buffering), then the active ones, each pass in list order.

The base class serves every step (``access``, ``access_steps``, ``replay``, ``insert``) through
``_victims`` and the touch hooks below, so all paths share one state and one rule; a one-key step
with no active set (the simulator's expert-parallel hot path) goes through ``_fast_steps``, the
same rule as one OrderedDict operation, held equal to the base plan by a test.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

from sim.policies._cache import CachePolicy


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        #: the rule is this file's (a subclass that picks victims or touches keys its own way,
        #: as keep_predicted does, has no fast one-key form)
        cls._own_rule = cls._victims is OrderedCache._victims and cls._on_step is OrderedCache._on_step

    _own_rule: ClassVar[bool] = True

    def _fast_steps(self, active: Collection[int]
                    ) -> Callable[..., tuple[int, int, int, int, int]] | None:
        """With no active set in play (an expert-parallel GPU holds one expert of a layer), each
        one-key step as one OrderedDict operation: what ``_victims`` picks for one key (the key
        at the end the flags name: a missing key is never resident, so never excluded) and what
        ``_on_step`` does (a hit moves to the recent end where hits touch, a load is appended).
        Held equal to the base plan by tests/sim/policies/test_policy_access_steps.py."""
        if active or not self._own_rule:
            return None
        res, od, cap = self.resident, self._order, self.capacity
        back, touch = self._from_back, self._touch_hits

        def run(rows: Sequence[Any], i: int, step: int, missed: list | None, evicted: list | None,
                counts: bool) -> tuple[int, int, int, int, int]:
            j = i  # the next row
            keys = misses = streamed = evictions = 0
            put = None if missed is None else missed.append
            put_ev = None if evicted is None else evicted.append
            hit_out = 0 if counts else None  # a hit's misses (a new empty list unless counts)
            for row in (rows[i:] if i else rows):
                if len(row) != 1:
                    if row:  # two keys or more: the base plan
                        break
                    j += 1  # an empty row takes no step
                    if put is not None:
                        put([] if hit_out is None else 0)
                    if put_ev is not None:
                        put_ev([])
                    continue
                j += 1
                keys += 1
                (k,) = row
                if k in res:
                    if touch:
                        od.move_to_end(k)
                    if put is not None:
                        put([] if hit_out is None else 0)
                    if put_ev is not None:
                        put_ev([])
                    continue
                misses += 1
                v = -1
                if len(res) < cap:
                    res.add(k)
                    od[k] = None
                elif res:
                    v = od.popitem(last=back)[0]
                    res.discard(v)
                    res.add(k)
                    od[k] = None
                    evictions += 1
                else:  # no slot at all: streams through
                    streamed += 1
                if put is not None:
                    put(1 if counts else row)
                if put_ev is not None:
                    put_ev([v] if v >= 0 else [])
            return j, keys, misses, streamed, evictions

        return run
