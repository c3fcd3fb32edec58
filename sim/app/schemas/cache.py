"""The schema of the ``cache`` command (:mod:`sim.app.cache_cmd`; values: ``conf/cache.yaml``, which
starts its ``defaults`` with ``cache_schema``): the cache replay of a routing trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sim.app.schemas.common import RequestLimitConfig, TraceFileConfig
from sim.world.config import ModelConfig
from sim.world.ranges import AT_LEAST_1, OPEN_FRACTION, POSITIVE, ranges

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@dataclass
class CachePolicyConfig:
    """``policy.*`` of ``moesim cache``: the cache policies compared, the prefetch policy."""

    caches: list[str] = field(default_factory=lambda: [
        "lru", "lfu", "fifo", "lifo", "priority", "keep_predicted", "belady"])
    prefetch: str = "none"
    prefetch_args: dict[str, Any] = field(default_factory=dict)
    #: eMoE: once a layer's cache is full, absent experts are rerouted to resident ones, not loaded
    reroute: bool = False


@ranges(
    expert_budget_fractions=OPEN_FRACTION)
@dataclass
class BudgetSweepConfig:
    """``cluster.expert_budget_fractions``: the expert memories compared (share of a layer's)."""

    expert_budget_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])


@ranges(
    batch_size=AT_LEAST_1,
    expert_bytes=POSITIVE)
@dataclass
class CacheAppConfig:
    """``moesim cache``: the policies x memories compared on one trace's routing."""

    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    workload: RequestLimitConfig = field(default_factory=RequestLimitConfig)
    #: a conf/model config (``model=NAME``) for the expert bytes; null: the trace's model name
    model: Optional[ModelConfig] = None
    policy: CachePolicyConfig = field(default_factory=CachePolicyConfig)
    cluster: BudgetSweepConfig = field(default_factory=BudgetSweepConfig)
    mode: str = "plain"
    batch_size: int = 16
    expert_bytes: Optional[int] = None
    plot: bool = True
