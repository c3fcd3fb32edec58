"""Cache scope ``per_layer``: one cache per MoE layer on a GPU (mixtral-offloading keeps an LRU
per layer), behind the interface the layer walk uses for one cache per GPU.

Keys stay ``layer * E + expert``; layer ``l``'s cache holds only layer ``l``'s keys, with its own
slots (:attr:`sim.serving.plan.ClusterPlan.layer_slots`). For the cross-driver check every call a layer's
cache receives is written to the :class:`sim.serving.cache_log.CacheLog` under the id
``gpu * num_layers + layer`` (:func:`log_id`), so that :func:`sim.replay.cache.replay_log` serves each
layer's cache again with that layer's capacity and must count the same.
"""

from __future__ import annotations

from typing import Any

from sim.policies.base import CACHE, CachePolicy
from sim.world.facts import CacheCounts


def log_id(gpu: int, layer: int, num_layers: int) -> int:
    """The cache-log id of GPU ``gpu``'s layer-``layer`` cache."""
    return gpu * num_layers + layer


class _Resident:
    """The union of the layer caches' resident sets, as far as the walk asks (its size)."""

    __slots__ = ("caches",)

    def __init__(self, caches: list[CachePolicy]) -> None:
        self.caches = caches

    def __len__(self) -> int:
        return sum(len(c.resident) for c in self.caches)

    def __contains__(self, key: object) -> bool:
        return any(key in c.resident for c in self.caches)

    def __iter__(self):
        for c in self.caches:
            yield from c.resident


class LayeredCache:
    """``num_layers`` caches of policy ``name``, layer ``l`` with ``slots[l]`` slots."""

    def __init__(self, name: str, slots: list[int], num_layers: int, num_experts: int,
                 cache_args: dict[str, Any], gpu: int = 0, log: Any = None) -> None:
        self.E, self.L = num_experts, num_layers
        self.caches = [CACHE.make(name, capacity=s, num_keys=num_layers * num_experts, **cache_args)
                       for s in slots]
        self.gpu, self.log = gpu, log
        self.resident = _Resident(self.caches)

    def _log(self, layer: int, kind: str, step: int, keys: Any = (), other: Any = ()) -> None:
        if self.log is not None:
            self.log.add(log_id(self.gpu, layer, self.L), kind, step, keys, other)

    @property
    def counts(self) -> CacheCounts:
        out = CacheCounts()
        for c in self.caches:
            out.add(c.counts)
        return out

    @counts.setter
    def counts(self, value: CacheCounts) -> None:
        if value.accesses or value.loads:
            raise ValueError("only a reset (empty counts) can be assigned to a layered cache")
        for c in self.caches:
            c.counts = CacheCounts()

    def _split(self, keys: Any) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        E = self.E
        for k in keys:
            out.setdefault(int(k) // E, []).append(int(k))
        return out

    def access(self, step: int, keys: Any, active: Any = None) -> tuple[list[int], list[int]]:
        """One layer's keys (the walk serves layer by layer)."""
        misses: list[int] = []
        evicted: list[int] = []
        for layer, ks in sorted(self._split(keys).items()):
            self._log(layer, "access", step, ks, active or ())
            m, ev = self.caches[layer].access(step, ks, active)
            misses += m
            evicted += ev
        return misses, evicted

    def access_steps(self, first_step: int, rows: list[Any], active: Any = None
                     ) -> tuple[list[int], int]:
        """Row ``l`` holds layer ``l``'s keys: served by layer ``l``'s cache at step ``first + l``."""
        nm: list[int] = []
        streamed = 0
        for layer, keys in enumerate(rows):
            if not keys:
                nm.append(0)
                continue
            self._log(layer, "access", first_step + layer, keys, active or ())
            c = self.caches[layer]
            before = c.counts.streamed
            m, _ = c.access(first_step + layer, keys, active)
            nm.append(len(m))
            streamed += c.counts.streamed - before
        return nm, streamed

    def insert(self, step: int, keys: Any, protect: Any = (), active: Any = None
               ) -> tuple[list[int], list[int]]:
        loaded: list[int] = []
        evicted: list[int] = []
        prot = self._split(protect)
        for layer, ks in sorted(self._split(keys).items()):
            p = prot.get(layer, ())
            self._log(layer, "insert", step, ks, p)
            lo, ev = self.caches[layer].insert(step, ks, protect=p, active=active)
            loaded += lo
            evicted += ev
        return loaded, evicted

    def warm(self, keys: Any) -> None:
        """Weights loaded before serving (not loads): each layer's first keys."""
        for layer, ks in sorted(self._split(keys).items()):
            self._log(layer, "warm", 0, ks)
            self.caches[layer].insert(0, ks)
        self.counts = CacheCounts()

    def begin_request(self, index: int) -> None:
        for layer, c in enumerate(self.caches):
            self._log(layer, "begin", index)
            c.begin_request(index)

    def set_predicted(self, keys: Any) -> None:
        split = self._split(keys)
        for layer, c in enumerate(self.caches):
            ks = split.get(layer, [])
            self._log(layer, "predict", 0, ks)
            c.set_predicted(ks)

    def reset_log(self) -> None:
        for layer in range(self.L):
            self._log(layer, "reset", 0)
