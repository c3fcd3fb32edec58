"""Policy interfaces and registries.

A policy decides; it never simulates, copies or times anything, and never imports simpy or torch.
The simulator (sim/), the fast cache replay (sim/replay/cache.py) and realrun/ all drive the *same*
policy classes through these interfaces.

Kinds and their interfaces (one folder per kind, one file per registered name):

- :class:`CachePolicy` (``cache/``) -- which keys (experts) stay resident in a cache of
  ``capacity`` slots. A key is an int in ``[0, num_keys)``; the simulator uses
  ``layer * num_experts + expert`` for a GPU's cache across layers, the plain replay uses one cache
  per layer with key = expert id.
- :class:`PrefetchPolicy` (``prefetch/``) -- which experts to load ahead of need.
- :class:`PlacementPolicy` (``placement/``) -- which GPU(s) hold each expert.
- :class:`SchedulerPolicy` (``scheduler/``) -- which waiting requests join the running batch.
- :class:`RouterPolicy` (``router/``) -- which replica a new request goes to.

Each kind has a registry (``CACHE``, ``PREFETCH``, ``PLACEMENT``, ``SCHEDULER``, ``ROUTER``):
``register`` decorates a class under a name; ``make(name, **kwargs)`` builds one, rejecting an
unknown name, or an unknown or mistyped argument (each class declares its arguments in a
``Config`` dataclass; see :mod:`sim.policies._registry`). What a policy needs from its driver is
declared in class attributes (``requires_future``, ``uses_active``, ...), never guessed. So is a
policy's fast form: ``CachePolicy.array_form`` names the array form a driver may serve it with
(``LRUCache``: ``"stamps"``); it is not inherited, so a subclass that changes the rule never runs
as its parent's arrays (the forms themselves live in serving, :mod:`sim.serving.lru_arrays`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sim.common.errors import ConfigError
from sim.policies._cache import CACHE, CachePolicy
from sim.policies._registry import NoArgs, Registry

__all__ = ["CACHE", "PLACEMENT", "PREFETCH", "ROUTER", "SCHEDULER", "CachePolicy", "NoArgs",
           "Placement", "PlacementPolicy", "PrefetchContext", "PrefetchPolicy", "Registry",
           "RequestView", "RouterPolicy", "SchedulerPolicy", "max_over_mean"]


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
      task-aware loading); default: nothing. Declared by ``plans_requests``.
    - ``next_layer(ctx, layer, experts)`` -> experts to load for ``layer + 1`` given the experts
      ``layer`` just used (eMoE-L, speculative next-layer prefetch); default: nothing. Declared by
      ``predicts_next_layer``.
    - ``observe(ctx, layer, experts)`` -> learn online from what a layer actually used. Declared
      by ``observes``.
    - ``set_trace(trace)`` -> oracles (``requires_future``) read the whole routing trace first.
    - ``cost_s()`` -> seconds of compute one prediction call costs (charged by the simulator).

    A driver may skip a hook whose flag is False (the base method is a no-op); a test checks
    each registered class's flags against the methods it overrides.
    """

    name: ClassVar[str] = "?"
    Config: ClassVar[type] = NoArgs
    requires_future: ClassVar[bool] = False
    plans_requests: ClassVar[bool] = False
    predicts_next_layer: ClassVar[bool] = False
    observes: ClassVar[bool] = False
    #: a next-layer policy that reads the batch's routing rows in the simulator (the oracles,
    #: ``learned_next``): it defines ``set_routing(experts)`` and ``batch(rows)``
    batch_rows: ClassVar[bool] = False

    def __init__(self, num_layers: int, num_experts: int, top_k: int, cfg: Any = None) -> None:
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.cfg = cfg if cfg is not None else type(self).Config()
        self.setup()

    def setup(self) -> None:  # noqa: B027
        """A policy's own state and the checks of its ``cfg``: called once by the constructor,
        after ``num_layers``, ``num_experts``, ``top_k`` and ``cfg`` are set (so a policy
        overrides this, not ``__init__``)."""

    def set_trace(self, trace: Any) -> None:
        if self.requires_future:
            raise NotImplementedError

    def on_request(self, ctx: PrefetchContext) -> dict[int, np.ndarray]:
        return {}

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def observe(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> None:  # noqa: B027
        pass

    def next_layers(self, ctx: PrefetchContext, used: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """An iteration's calls for every layer at once, ``used`` (L, E) bool the experts each
        layer used: what ``next_layer(ctx, l, experts of l)`` answers when each comes after
        ``observe(ctx, l, experts of l)`` (where ``observes``), l = 0 .. L-1, with the state
        those calls leave, as ``(ranked, n)``: layer l's answer is ``ranked[l, :n[l]]``
        (``ranked`` (L, W) int, ``n`` (L,) int). None (the default): no batched form, the
        driver calls them one by one. The simulator's compiled prefetch walk asks it
        (sim/serving/prefetch_walk.py)."""
        return None

    def cost_s(self) -> float:
        return 0.0


PREFETCH: Registry[PrefetchPolicy] = Registry("prefetch", ("num_layers", "num_experts", "top_k"))


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

    def share(self, num_layers: int | None = None, num_experts: int | None = None,
              name: str = "?") -> np.ndarray:
        """(L, E, G) share of expert e's tokens at layer l that GPU g computes (replicas share
        equally): the one place the share matrix is computed (the simulator's plan, the
        placement app, :meth:`gpu_load`). With ``num_layers`` / ``num_experts`` it also checks
        the placement has that shape (``name``: the policy, for the error)."""
        L = len(self.replicas) if num_layers is None else num_layers
        E = len(self.replicas[0]) if num_experts is None else num_experts
        G = self.num_gpus
        if len(self.replicas) != L or any(len(r) != E for r in self.replicas):
            raise ConfigError(f"placement policy {name!r} returned a placement of the wrong shape "
                              f"(expected {L} layers x {E} experts on {G} GPUs)")
        share = np.zeros((L, E, G))
        for l in range(L):
            for e in range(E):
                gpus = self.replicas[l][e]
                if not gpus or any(not 0 <= g < G for g in gpus):
                    raise ConfigError(f"placement puts layer {l} expert {e} on GPUs {gpus}, "
                                      f"expected 1+ of 0..{G - 1}")
                for g in gpus:
                    share[l, e, g] += 1.0 / len(gpus)
        return share

    def gpu_load(self, load: np.ndarray, share: np.ndarray | None = None) -> np.ndarray:
        """(..., L, G) token load per GPU given (..., L, E) expert loads, replicas sharing
        equally: the one definition (the placement evaluation, :meth:`imbalance`). ``share``:
        this placement's :meth:`share` where the caller already holds it (one share matrix for
        the loads of many batches)."""
        A = self.share(*load.shape[-2:]) if share is None else share
        return np.einsum("...le,leg->...lg", load, A)

    def imbalance(self, load: np.ndarray, share: np.ndarray | None = None) -> np.ndarray:
        """(..., L) max / mean GPU load per layer (:func:`max_over_mean` of :meth:`gpu_load`)."""
        return max_over_mean(self.gpu_load(load, share))


def max_over_mean(gpu_load: np.ndarray) -> np.ndarray:
    """(...,) max / mean over the last axis of per-GPU loads (..., G): a load balance figure; a
    layer with no load counts as 1 (perfectly balanced)."""
    mean = gpu_load.mean(axis=-1)
    return np.divide(gpu_load.max(axis=-1), mean, out=np.ones_like(mean), where=mean > 0)


class PlacementPolicy(ABC):
    """Assigns experts (and their replicas) to GPUs from a historical load matrix (L, E)."""

    name: ClassVar[str] = "?"
    Config: ClassVar[type] = NoArgs

    def __init__(self, num_gpus: int, cfg: Any = None) -> None:
        if num_gpus <= 0:
            raise ConfigError(f"num_gpus must be positive, got {num_gpus}")
        self.num_gpus = num_gpus
        self.cfg = cfg if cfg is not None else type(self).Config()
        self.setup()

    def setup(self) -> None:  # noqa: B027
        """A policy's own state and the checks of its ``cfg``: called once by the constructor,
        after ``num_gpus`` and ``cfg`` are set (so a policy overrides this, not ``__init__``)."""

    def fit_history(self, history: np.ndarray) -> None:  # noqa: B027
        """Per-batch expert loads (B, L, E) of the planning window, given before :meth:`place`; a
        policy that learns from them (``anticorr``, ``split``, ``rebalance``) overrides this, the
        others ignore them."""

    @abstractmethod
    def place(self, load: np.ndarray) -> Placement:
        """``load`` (L, E): tokens routed to each expert in the planning window."""


PLACEMENT: Registry[PlacementPolicy] = Registry("placement", ("num_gpus",))


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
    Config: ClassVar[type] = NoArgs

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else type(self).Config()

    @abstractmethod
    def admit(self, now_s: float, waiting: Sequence[RequestView], running: Sequence[RequestView],
              token_budget: int) -> list[int]:
        """Return indices (``RequestView.index``) of waiting requests to admit, in order."""


def admit_in_order(ordered: Iterable[RequestView], token_budget: int) -> list[int]:
    """Admit requests in the given order while the token budget lasts (each takes its
    ``prompt_tokens + done_tokens``; the last one admitted may overrun it: it is prefilled in
    chunks). The admission walk of FCFS and shortest-predicted-first."""
    out: list[int] = []
    left = token_budget
    for v in ordered:
        if left <= 0:
            break
        out.append(v.index)
        left -= v.prompt_tokens + v.done_tokens
    return out


SCHEDULER: Registry[SchedulerPolicy] = Registry("scheduler")


# ------------------------------------------------------------------------------------------------
# routing of requests to replicas
# ------------------------------------------------------------------------------------------------
class RouterPolicy(ABC):
    """Picks the replica a new request joins."""

    name: ClassVar[str] = "?"
    Config: ClassVar[type] = NoArgs

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else type(self).Config()

    @abstractmethod
    def pick(self, alive: Sequence[int], loads: Sequence[int]) -> int:
        """``alive``: indices of the live replicas, increasing; ``loads[i]``: waiting + running
        requests of replica ``alive[i]``. Returns one of ``alive`` (never called with none)."""


ROUTER: Registry[RouterPolicy] = Registry("router")
