"""Policy interfaces and registries.

A policy decides; it never simulates, copies or times anything, and never imports simpy or torch.
The simulator (sim/), the fast cache replay (sim/replay.py) and realrun/ all drive the *same*
policy classes through these interfaces.

Kinds and their interfaces:

- :class:`CachePolicy` -- which keys (experts) stay resident in a cache of ``capacity`` slots.
  A key is an int in ``[0, num_keys)``; the simulator uses ``layer * num_experts + expert`` for a
  GPU's cache across layers, the plain replay uses one cache per layer with key = expert id.
- :class:`PrefetchPolicy` -- which experts to load ahead of need (next layer, next prompt).
- :class:`PlacementPolicy` -- which GPU(s) hold each expert.
- :class:`SchedulerPolicy` -- which waiting requests join the running batch.

Each kind has a registry (``CACHE``, ``PREFETCH``, ``PLACEMENT``, ``SCHEDULER``): ``register``
decorates a class under a name; ``make(name, **kwargs)`` builds one and rejects unknown names with
the list of known ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from sim.errors import ConfigError

P = TypeVar("P")


class Registry(Generic[P]):
    """Maps a name to a policy class; unknown names are a ConfigError listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[P]] = {}

    def register(self, name: str) -> Callable[[type[P]], type[P]]:
        def deco(cls: type[P]) -> type[P]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} policy {name!r} registered twice")
            self._classes[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> type[P]:
        _load_all()
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            raise ConfigError(f"unknown {self.kind} policy {name!r}; known: {known}") from None

    def make(self, name: str, *args: Any, **kwargs: Any) -> P:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        _load_all()
        return sorted(self._classes)


def _load_all() -> None:
    """Import every policy module so that its @register runs (idempotent)."""
    import importlib
    import pkgutil

    import sim.policies as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base",) and not info.name.startswith("_"):
            importlib.import_module(f"sim.policies.{info.name}")


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------
class CachePolicy(ABC):
    """A cache of ``capacity`` slots over keys ``0..num_keys-1``; subclasses pick victims.

    Driving protocol (the simulator, the replay and realrun all use exactly this):

    ``access(step, keys, active=None)`` serves one step that needs ``keys`` (distinct ints) at
    once. Resident keys are hits (``_on_hit``). Missing keys are loaded in increasing key order;
    each load into a full cache first evicts the victim the policy picks (``_victim``) among
    resident keys *not* in ``keys``. If every resident key is needed by the step (capacity <
    len(keys)), the key streams through: it counts as a miss and is not kept. Returns
    ``(misses, evicted)``, both lists in the order they happened.

    ``active`` is the set of keys the surrounding batch still needs (Huang et al.'s "active
    experts"); policies that ignore it behave as if it were empty.

    ``insert(step, keys, protect=())`` loads keys ahead of need (prefetch) with the same eviction
    rule, never evicting a key in ``protect``; it returns ``(loaded, evicted)``.

    Steps are non-decreasing ints. Oracles (``requires_future = True``) are handed the whole
    access sequence first via ``set_future``: ``future[i]`` is the array of keys step ``i`` will
    access.
    """

    name: ClassVar[str] = "?"
    requires_future: ClassVar[bool] = False

    def __init__(self, capacity: int, num_keys: int, **_: Any) -> None:
        if capacity < 0:
            raise ConfigError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.num_keys = int(num_keys)
        self.resident: set[int] = set()

    # -- hooks for subclasses -------------------------------------------------------------------
    def _on_hit(self, step: int, key: int) -> None:  # noqa: B027 - optional hook
        pass

    def _on_insert(self, step: int, key: int) -> None:  # noqa: B027
        pass

    def _on_evict(self, key: int) -> None:  # noqa: B027
        pass

    @abstractmethod
    def _victim(self, step: int, candidates: Iterable[int], active: frozenset[int] | set[int]) -> int:
        """Pick the key to evict among ``candidates`` (resident, not needed by this step)."""

    def _plan(self, row: Sequence[int]) -> tuple[list[int], int, int]:
        """One step of the protocol, before any victim is chosen: the step's missing keys (in
        ``row`` order), how many resident keys must be evicted for them, and how many of the
        missing keys are kept (the first ``n_keep``; the rest stream through because every other
        resident key is needed by the step). Shared by the policies' own ``_serve`` paths."""
        res = self.resident
        miss = [k for k in row if k not in res]
        room = self.capacity - len(res)
        if len(miss) <= room:
            return miss, 0, len(miss)
        n_ev = max(0, min(len(miss) - room, len(res) - (len(row) - len(miss))))
        return miss, n_ev, room + n_ev

    def set_future(self, future: Sequence[np.ndarray]) -> None:
        if self.requires_future:
            raise NotImplementedError

    def begin_request(self, index: int) -> None:  # noqa: B027 - optional hook
        """A new request starts (policies with per-request state, e.g. MoE-Infinity's, reset it)."""

    def replay(self, keys: np.ndarray, first_step: int = 0) -> int:
        """Serve steps ``first_step + i`` needing ``keys[i]`` (S, K) distinct ints; return misses.

        Exactly equivalent to calling :meth:`access` once per row (no ``active`` set); policies
        may override it with a fast path over the same state (the cache replay uses this).
        """
        misses = 0
        for i, row in enumerate(np.asarray(keys).tolist()):
            misses += len(self.access(first_step + i, row)[0])
        return misses

    def access_steps(self, first_step: int, rows: Sequence[Any], active: Iterable[int] | None = None
                     ) -> tuple[list[int], int]:
        """Serve steps ``first_step + i`` needing ``rows[i]`` (a collection of distinct keys, maybe
        empty: no step is taken then, but the step number still advances) under one ``active`` set.

        Returns (misses per row, keys streamed through). Exactly equivalent to calling
        :meth:`access` once per non-empty row; policies may override it with a fast path over the
        same state (the simulator calls this once per GPU and iteration, for all layers).
        """
        counts: list[int] = []
        streamed = 0
        for i, row in enumerate(rows):
            if not row:
                counts.append(0)
                continue
            misses = self.access(first_step + i, row, active)[0]
            counts.append(len(misses))
            if misses:
                res = self.resident
                streamed += sum(1 for k in misses if k not in res)
        return counts, streamed

    # -- protocol -------------------------------------------------------------------------------
    def access(self, step: int, keys: Iterable[int], active: Iterable[int] | None = None
               ) -> tuple[list[int], list[int]]:
        needed = keys if isinstance(keys, set | frozenset) else set(int(k) for k in keys)
        act = frozenset() if active is None else (
            active if isinstance(active, set | frozenset) else frozenset(int(k) for k in active))
        resident = self.resident
        misses: list[int] = []
        for k in needed:
            if k in resident:
                self._on_hit(step, k)
            else:
                misses.append(k)
        evicted: list[int] = []
        if misses:
            misses.sort()
            for k in misses:
                if len(resident) >= self.capacity:
                    cands = resident - needed
                    if not cands:
                        continue  # streams through: every resident key is needed now
                    v = self._victim(step, cands, act)
                    resident.discard(v)
                    self._on_evict(v)
                    evicted.append(v)
                resident.add(k)
                self._on_insert(step, k)
        return misses, evicted

    def insert(self, step: int, keys: Iterable[int], protect: Iterable[int] = ()
               ) -> tuple[list[int], list[int]]:
        prot = set(int(k) for k in protect)
        todo = sorted(set(int(k) for k in keys) - self.resident)
        loaded: list[int] = []
        evicted: list[int] = []
        for k in todo:
            if len(self.resident) >= self.capacity:
                cands = self.resident - prot - set(todo)
                if not cands:
                    break
                v = self._victim(step, cands, frozenset(prot))
                self.resident.discard(v)
                self._on_evict(v)
                evicted.append(v)
            self.resident.add(k)
            self._on_insert(step, k)
            loaded.append(k)
        return loaded, evicted


CACHE: Registry[CachePolicy] = Registry("cache")


# ------------------------------------------------------------------------------------------------
# prefetch / prediction
# ------------------------------------------------------------------------------------------------
@dataclass
class PrefetchContext:
    """What a serving system knows when a prefetch decision is made (nothing from the future)."""

    request_id: str = ""
    task: str = "unknown"
    prompt_tokens: int = 0
    #: index of the request in arrival order (eMoE-A reruns its predictor every p of these)
    request_index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class PrefetchPolicy:
    """Predicts experts ahead of need.

    - ``on_request(ctx)`` -> ``{layer: array of experts}`` to load for a new prompt (eMoE-A,
      task-aware loading); default: nothing.
    - ``next_layer(ctx, layer, experts)`` -> experts to load for ``layer + 1`` given the experts
      ``layer`` just used (eMoE-L, speculative next-layer prefetch); default: nothing.
    - ``observe(ctx, layer, experts)`` -> learn online from what a layer actually used.
    - ``cost_s()`` -> seconds of compute one prediction call costs (charged by the simulator).
    """

    name: ClassVar[str] = "?"
    requires_future: ClassVar[bool] = False

    def __init__(self, num_layers: int, num_experts: int, top_k: int, **_: Any) -> None:
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k

    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        return {}

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:  # noqa: B027
        pass

    def cost_s(self) -> float:
        return 0.0


PREFETCH: Registry[PrefetchPolicy] = Registry("prefetch")


# ------------------------------------------------------------------------------------------------
# placement
# ------------------------------------------------------------------------------------------------
@dataclass
class Placement:
    """``replicas[l][e]`` = tuple of GPU ids holding expert e of MoE layer l (>= 1 each)."""

    num_gpus: int
    replicas: list[list[tuple[int, ...]]]

    def slots_used(self) -> np.ndarray:
        """(num_gpus,) expert slots used per GPU, summed over layers."""
        used = np.zeros(self.num_gpus, dtype=np.int64)
        for layer in self.replicas:
            for gpus in layer:
                for g in gpus:
                    used[g] += 1
        return used

    def gpu_load(self, load: np.ndarray) -> np.ndarray:
        """(L, G) token load per GPU given (L, E) expert loads, replicas sharing equally."""
        L, E = load.shape
        out = np.zeros((L, self.num_gpus))
        for l in range(L):
            for e in range(E):
                gpus = self.replicas[l][e]
                for g in gpus:
                    out[l, g] += load[l, e] / len(gpus)
        return out


class PlacementPolicy(ABC):
    """Assigns experts (and their replicas) to GPUs from a historical load matrix (L, E)."""

    name: ClassVar[str] = "?"

    def __init__(self, num_gpus: int, **_: Any) -> None:
        if num_gpus <= 0:
            raise ConfigError(f"num_gpus must be positive, got {num_gpus}")
        self.num_gpus = num_gpus

    @abstractmethod
    def place(self, load: np.ndarray) -> Placement:
        """``load`` (L, E): tokens routed to each expert in the planning window."""


PLACEMENT: Registry[PlacementPolicy] = Registry("placement")


# ------------------------------------------------------------------------------------------------
# scheduling
# ------------------------------------------------------------------------------------------------
@dataclass
class RequestView:
    """A read-only view of a request as a scheduler sees it."""

    index: int
    arrival_s: float
    prompt_tokens: int
    #: generated so far
    done_tokens: int
    #: the scheduler may use this only through a predictor (eMoE profiles per-task output lengths)
    predicted_output_tokens: float
    task: str
    slo_s: float  # end-to-end latency SLO in seconds (inf when none)


class SchedulerPolicy(ABC):
    """Chooses which waiting requests join the running batch this iteration."""

    name: ClassVar[str] = "?"

    def __init__(self, **_: Any) -> None:  # noqa: B027 - schedulers without parameters
        pass

    @abstractmethod
    def admit(self, now_s: float, waiting: Sequence[RequestView], running: Sequence[RequestView],
              token_budget: int) -> list[int]:
        """Return indices (``RequestView.index``) of waiting requests to admit, in order."""


SCHEDULER: Registry[SchedulerPolicy] = Registry("scheduler")
