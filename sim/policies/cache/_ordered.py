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
from itertools import chain, islice
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
        if not active:
            out: list[int] = []
            for k in (reversed(od) if self._from_back else od):
                if k not in exclude:
                    out.append(k)
                    if len(out) == n:
                        break
            return out
        # Huang et al.: the keys outside the active set first, then the active ones, each in order
        scan = od.__reversed__ if self._from_back else od.__iter__
        outside = (k for k in scan() if k not in active and k not in exclude)
        inside = (k for k in scan() if k in active and k not in exclude)
        return list(islice(chain(outside, inside), n))

    def _on_step(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                 ) -> None:
        od = self._order
        for k in evicted:
            del od[k]
        for k in loaded:
            od[k] = None
        if self._touch_hits:
            res = self.resident
            move = od.move_to_end
            for k in row:
                if k in res:
                    move(k)

    def _on_insert(self, step: int, row: list[int], loaded: list[int], evicted: Sequence[int]
                   ) -> None:
        self._on_step(step, [], loaded, evicted)  # a prefetch touches no key of its own
