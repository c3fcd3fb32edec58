"""The schema of the ``placement`` command (:mod:`sim.app.placement_cmd`; values:
``conf/placement.yaml``, which starts its ``defaults`` with ``placement_schema``): expert placements
compared on one routing trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sim.app.schemas.common import RequestLimitConfig, TraceFileConfig
from sim.world.config import ModelConfig
from sim.world.ranges import AT_LEAST_1, OPEN_UNIT, POSITIVE, ranges

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@dataclass
class PlacementPolicyConfig:
    """``policy.*`` of ``moesim placement``: the placements compared, each one's arguments."""

    placements: list[str] = field(default_factory=lambda: [
        "contiguous", "round_robin", "greedy", "anticorr", "eplb", "rebalance", "exhaustive"])
    #: placement name -> its arguments (e.g. eplb: {num_redundant: 8})
    placement_args: dict[str, Any] = field(default_factory=dict)


@ranges(
    expert_parallel=AT_LEAST_1)
@dataclass
class PlacementClusterConfig:
    """``cluster.expert_parallel``: the GPUs one layer's experts are spread over."""

    expert_parallel: int = 8


@ranges(
    train_frac=OPEN_UNIT,
    batch_tokens=AT_LEAST_1,
    expert_bytes=POSITIVE)
@dataclass
class PlacementAppConfig:
    """``moesim placement``: placements fitted on the trace's first part, scored on the rest."""

    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    workload: RequestLimitConfig = field(default_factory=RequestLimitConfig)
    #: a conf/model config (``model=NAME``) for the expert bytes; null: the trace's model name
    model: Optional[ModelConfig] = None
    policy: PlacementPolicyConfig = field(default_factory=PlacementPolicyConfig)
    cluster: PlacementClusterConfig = field(default_factory=PlacementClusterConfig)
    train_frac: float = 0.5
    batch_tokens: Optional[int] = None
    expert_bytes: Optional[int] = None
    plot: bool = True
