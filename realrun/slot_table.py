"""The slot table both realrun executors keep: which key's expert weights sit in which of a
device's ``capacity`` cache slots, and which slots are free.

``moesim realrun replay`` (:class:`realrun.expert_cache.ExpertCache`, one table per MoE layer,
keys are expert ids) and ``moesim realrun validate`` (:class:`realrun.serve.Slots`, one table for
the whole model, keys are ``layer * E + expert``) turn a cache policy's decisions into copies
through it: the evicted keys give their slots back, each loaded key takes a free slot and is
copied in by the executor's ``copy(key, slot, *args)``; ``freed(key)`` hears of a slot given back
(the executor's own mirror of the table: a kernel's slot tensor, pending copy events).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class SlotTable:
    def __init__(self, capacity: int, copy: Callable[..., None],
                 freed: Callable[[int], Any] | None = None) -> None:
        self.capacity = capacity
        self.slot: dict[int, int] = {}  # key -> its slot
        self.free = list(range(capacity - 1, -1, -1))  # popped from the end: slot 0 first
        self._copy, self._freed = copy, freed

    def release(self, keys: Iterable[int]) -> None:
        """Give back the slots of ``keys`` (the policy evicted them); keys without one are skipped."""
        for k in keys:
            s = self.slot.pop(k, None)
            if s is not None:
                self.free.append(s)
                if self._freed is not None:
                    self._freed(k)

    def release_absent(self, resident: Any) -> None:
        """Give back the slots of the keys no longer in ``resident`` (the policy's set)."""
        self.release([k for k in self.slot if k not in resident])

    def load(self, key: int, *args: Any) -> int:
        """Copy ``key`` into a free slot (``args`` go to the executor's copy); returns the slot."""
        s = self.slot[key] = self.free.pop()
        self._copy(key, s, *args)
        return s

    def apply(self, evicted: Iterable[int], loaded: Iterable[int], *args: Any) -> None:
        """One policy decision: free the ``evicted`` keys' slots, then copy the ``loaded`` in."""
        self.release(evicted)
        for k in loaded:
            self.load(k, *args)
