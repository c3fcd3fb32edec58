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
        # one pass in list order: keys outside the active set go first (Huang et al.), the
        # active ones (kept apart, n at most) only when those run out
        out: list[int] = []
        inside: list[int] | None = None
        for k in (reversed(self._order) if self._from_back else self._order):
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
