"""The schemas of the ``realrun`` commands, replay, calibrate (:mod:`sim.app.realrun_cmd`) and
validate (:mod:`sim.app.realrun_validate`); values: ``conf/realrun_{replay,calibrate,validate}.yaml``,
each starting its ``defaults`` with ``realrun_<command>_schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sim.world.config import ModelConfig, SimConfig
from sim.world.ranges import AT_LEAST_1, COUNT_OR_ALL, NONNEG, OPEN_FRACTION, SEED, ranges

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@ranges(
    tokens_per_request=AT_LEAST_1)
@dataclass
class RealrunTraceConfig:
    """``path`` (a routing trace), or empty: ``workload.num_requests`` x ``tokens_per_request``
    tokens sampled from the fitted generator ``generator`` (as ``moesim sim``'s trace.generator)."""

    path: str = ""
    generator: str = "deepseek-v2-lite"
    tokens_per_request: int = 16


@ranges(
    num_requests=AT_LEAST_1,
    max_requests=COUNT_OR_ALL)
@dataclass
class RealrunWorkloadConfig:
    """``workload.*`` of the realrun commands: how many requests, from the generator or the trace."""

    #: requests sampled from the generator when trace.path is empty
    num_requests: int = 4
    #: the first N requests of the trace only (0: all)
    max_requests: int = 0


@dataclass
class OneCachePolicyConfig:
    """``policy.cache``: the one cache policy realrun replay serves with."""

    cache: str = "lru"


@ranges(
    expert_budget_fraction=OPEN_FRACTION)
@dataclass
class OneBudgetConfig:
    """``cluster.expert_budget_fraction``: the one expert memory realrun replay uses."""

    #: experts resident per layer, as a share of the layer's experts
    expert_budget_fraction: float = 0.5


@ranges(
    batch_tokens=AT_LEAST_1,
    block_size=AT_LEAST_1,
    shrink=AT_LEAST_1,
    max_tokens=AT_LEAST_1,
    seed=SEED)
@dataclass
class RealrunReplayConfig:
    """``realrun replay``: a routing trace served on a device through real copies and kernels."""

    model: ModelConfig = field(default_factory=ModelConfig)
    trace: RealrunTraceConfig = field(default_factory=RealrunTraceConfig)
    workload: RealrunWorkloadConfig = field(default_factory=RealrunWorkloadConfig)
    policy: OneCachePolicyConfig = field(default_factory=OneCachePolicyConfig)
    cluster: OneBudgetConfig = field(default_factory=OneBudgetConfig)
    batch_tokens: int = 16
    block_size: int = 16
    device: str = "cpu"
    shrink: int = 32
    max_tokens: Optional[int] = None
    seed: int = 0


@ranges(
    shrink=AT_LEAST_1,
    tokens=AT_LEAST_1,
    copy_experts=AT_LEAST_1,
    contexts=AT_LEAST_1,
    warmup=NONNEG,
    reps=AT_LEAST_1,
    block_size=AT_LEAST_1)
@dataclass
class RealrunCalibrateConfig:
    """``realrun calibrate``: the ops timed on a device for the table cost model's profile."""

    model: ModelConfig = field(default_factory=ModelConfig)
    device: str = "cuda"
    shrink: int = 1
    label: Optional[str] = None
    tokens: list[int] = field(default_factory=lambda: [2**i for i in range(13)])
    #: experts copied one after the other, per copy measurement
    copy_experts: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    #: KV lengths of the decode batches measured for attention
    contexts: list[int] = field(default_factory=lambda: [16, 128, 512, 2048])
    warmup: int = 3
    reps: int = 10
    block_size: int = 64
    #: CPU only: "cpu" (this thread's CPU time) or "wall" (perf_counter), as validate's clock
    clock: str = "cpu"


@ranges(
    tokens=AT_LEAST_1,
    copy_experts=AT_LEAST_1,
    contexts=AT_LEAST_1,
    warmup=NONNEG,
    reps=AT_LEAST_1)
@dataclass
class ValidateCalibrationConfig:
    """What ``moesim realrun validate`` measures when it calibrates first (no ``profile``)."""

    tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    copy_experts: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    contexts: list[int] = field(default_factory=lambda: [16, 128, 512])
    warmup: int = 3
    reps: int = 9


@ranges(
    shrink=AT_LEAST_1,
    layers=COUNT_OR_ALL,
    block_size=AT_LEAST_1)
@dataclass
class RealrunValidateConfig(SimConfig):
    """The simulator's keys (one device: cluster=1x1; every arrival at 0), plus the device."""

    device: str = "cpu"
    #: hidden and intermediate sizes and heads divided by this, on both sides
    shrink: int = 8
    #: the model's (and the routing's) first N MoE layers only, as many as fit (0: all)
    layers: int = 0
    #: a profile.csv calibrated on this device for the shrunk model; empty: calibrate first
    profile: str = ""
    calibration: ValidateCalibrationConfig = field(default_factory=ValidateCalibrationConfig)
    #: CPU only: time iterations and the profile by "cpu" (this thread's CPU time, immune to
    #: other jobs on the machine) or "wall" (perf_counter); a GPU is timed by CUDA events
    clock: str = "cpu"
    block_size: int = 16
    plots: bool = True
