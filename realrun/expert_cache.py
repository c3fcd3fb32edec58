"""A real device-side expert cache driven by the simulator's own CachePolicy objects.

Expert weights live in host memory (pinned when the device is CUDA); the device holds ``capacity``
slots per weight tensor. The :class:`~sim.policies.base.CachePolicy` decides residency exactly as
in the simulator and the replay; this class turns its decisions into real host-to-device copies
into slots and keeps the expert-to-slot table that the grouped FFN kernel reads (-1: no slot, the
kernel must never read that expert).

Shapes (E experts of one MoE layer, hidden H, intermediate I, C slots)::

    host  w1, w3  (E, I, H)   w2 (E, H, I)
    slots w1, w3  (C, I, H)   w2 (C, H, I)
    slot_of       (E,) int32  slot index or -1
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from realrun.slot_table import SlotTable
from sim.common.errors import ConfigError
from sim.policies.base import CachePolicy


@dataclass
class CopyStats:
    copies: int = 0
    bytes: int = 0
    time_s: float = 0.0
    #: (bytes, seconds) of every copy, for calibration
    samples: list[tuple[int, float]] = field(default_factory=list)


class ExpertCache:
    """Device slots for one MoE layer's experts; residency decided by ``policy``."""

    def __init__(self, host_weights: dict[str, torch.Tensor], policy: CachePolicy,
                 device: torch.device | str) -> None:
        self.device = torch.device(device)
        names = sorted(host_weights)
        E = {int(w.shape[0]) for w in host_weights.values()}
        if len(E) != 1:
            raise ConfigError(f"expert weights disagree on the number of experts: {E}")
        self.num_experts = E.pop()
        if policy.num_keys != self.num_experts:
            raise ConfigError(
                f"cache policy has {policy.num_keys} keys, layer has {self.num_experts} experts")
        self.policy = policy
        self.capacity = min(policy.capacity, self.num_experts)
        pin = self.device.type == "cuda"
        self.host = {n: (host_weights[n].pin_memory() if pin else host_weights[n]) for n in names}
        # the cache's slots and one staging slot (index ``capacity``) for an expert that streams
        # through (a miss the policy does not keep: a static set, no cache, a pinned one)
        self.slots = {n: torch.empty((self.capacity + 1, *w.shape[1:]), dtype=w.dtype,
                                     device=self.device) for n, w in self.host.items()}
        self.slot_of = torch.full((self.num_experts,), -1, dtype=torch.int32)
        #: the slots (realrun/slot_table.py, shared with realrun/serve.py); ``slot_of`` mirrors it
        self.table = SlotTable(self.capacity, self._copy_in, self._freed)
        self.expert_bytes = sum(w[0].numel() * w.element_size() for w in self.host.values())
        self.stats = CopyStats()
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def hits(self) -> int:
        return self.policy.counts.hits

    @property
    def misses(self) -> int:
        return self.policy.counts.misses

    def ensure(self, step: int, experts: list[int], active: list[int] | None = None) -> list[int]:
        """Make ``experts`` resident (policy decides victims); returns the experts copied in."""
        misses, evicted = self.policy.access(step, experts, active)
        loaded = [e for e in misses if e in self.policy.resident]  # the rest streamed through
        self.apply(evicted, loaded)
        return loaded

    def prefetch(self, step: int, experts: list[int], protect: list[int] = ()) -> list[int]:
        loaded, evicted = self.policy.insert(step, experts, protect)
        self.apply(evicted, loaded)
        return loaded

    def apply(self, evicted: list[int], loaded: list[int]) -> None:
        """Carry out a policy decision: free the evicted experts' slots, then copy the loaded
        ones in."""
        self.table.apply(evicted, loaded)

    def stage(self, e: int) -> int:
        """Copy ``e`` into the staging slot for one launch (it streams through: not resident);
        returns the slot. Counted as a copy, as the policy counts the miss a load."""
        self._copy_in(e, self.capacity)
        self.slot_of[e] = -1  # not resident: only this launch reads it
        return self.capacity

    def _freed(self, e: int) -> None:
        self.slot_of[e] = -1

    def _copy_in(self, e: int, slot: int) -> None:
        if self._stream is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self._stream):
                start.record()
                for n, w in self.host.items():
                    self.slots[n][slot].copy_(w[e], non_blocking=True)
                end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for n, w in self.host.items():
                self.slots[n][slot].copy_(w[e])
            dt = time.perf_counter() - t0
        self.slot_of[e] = slot
        self.stats.copies += 1
        self.stats.bytes += self.expert_bytes
        self.stats.time_s += dt
        self.stats.samples.append((self.expert_bytes, dt))

    def check(self) -> None:
        """Residency of the policy and slot table agree; resident slots are distinct."""
        resident = {e for e in range(self.num_experts) if int(self.slot_of[e]) >= 0}
        assert resident == self.policy.resident, (resident, self.policy.resident)
        slots = [int(self.slot_of[e]) for e in resident]
        assert len(set(slots)) == len(slots)
