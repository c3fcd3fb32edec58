"""Typed configs of ``moesim experiment emoe`` and ``moesim experiment huang`` (values:
``conf/experiment_emoe.yaml``, ``conf/experiment_huang.yaml``).

Both are the simulator's config (:class:`sim.world.config.SimConfig`: ``model``, ``hardware``,
``cluster``, ``workload``, ``trace``, ``policy``, ``serving``, ``seed``) plus the lists a study
compares, named as the plural of the simulator's key (one vocabulary): ``policy.caches``,
``policy.placements``, ``policy.schedulers``, ``policy.prefetch_periods`` (eMoE's p),
``cluster.expert_budget_fractions``, ``workload.rates_rps``. :func:`sim_base` turns a study config
back into the plain :class:`~sim.world.config.SimConfig` every run starts from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from sim.world.config import ClusterConfig, PolicyConfig, SimConfig, WorkloadConfig
from sim.world.ranges import (
    AT_LEAST_1,
    COUNT_OR_ALL,
    FRACTION,
    NONNEG,
    OPEN_FRACTION,
    OPEN_UNIT,
    POSITIVE,
    SEED,
    Range,
    ranges,
)

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@ranges(
    prefetch_period=AT_LEAST_1,
    prefetch_periods=AT_LEAST_1)
@dataclass
class StudyPolicyConfig(PolicyConfig):
    """The simulator's ``policy.*`` plus the lists a study compares."""

    caches: list[str] = field(default_factory=list)
    placements: list[str] = field(default_factory=list)
    schedulers: list[str] = field(default_factory=list)
    #: eMoE's prediction period p (prompts between predictor runs; theirs: 40), and the list the
    #: period study sweeps
    prefetch_period: int = 40
    prefetch_periods: list[int] = field(default_factory=list)


@ranges(
    expert_budget_fractions=OPEN_FRACTION)
@dataclass
class StudyClusterConfig(ClusterConfig):
    #: the expert memories compared (share of the experts on the GPU)
    expert_budget_fractions: list[float] = field(default_factory=list)


@ranges(
    rates_rps=POSITIVE)
@dataclass
class StudyWorkloadConfig(WorkloadConfig):
    #: the request rates compared (a request file is time-scaled to each rate)
    rates_rps: list[float] = field(default_factory=list)


@ranges(
    capacity_factor=POSITIVE,
    batch_tokens=AT_LEAST_1)
@dataclass
class GatingStudyConfig:
    """Dynamic against static-capacity gating, priced by the cost model (no GPU needed)."""

    capacity_factor: float = 1.25
    batch_tokens: list[int] = field(default_factory=lambda: [16, 64, 256, 1024, 4096])


@ranges(
    replay_requests=COUNT_OR_ALL,
    scheduler_requests=AT_LEAST_1,
    batch_size=AT_LEAST_1,
    train_frac=OPEN_UNIT,
    batch_tokens=AT_LEAST_1,
    synth_requests=AT_LEAST_1,
    synth_tokens=AT_LEAST_1)
@dataclass
class StudyConfig(SimConfig):
    policy: StudyPolicyConfig = field(default_factory=StudyPolicyConfig)
    cluster: StudyClusterConfig = field(default_factory=StudyClusterConfig)
    workload: StudyWorkloadConfig = field(default_factory=StudyWorkloadConfig)
    #: the parts of the study to run (all by default)
    parts: list[str] = field(default_factory=list)
    #: replay only the first N requests of the routing trace (0: all)
    replay_requests: int = 0
    #: requests of each scheduler run (the rising-load part)
    scheduler_requests: int = 300
    #: Huang's batch setting: tokens per batch of the cache replay
    batch_size: int = 16
    #: placement: share of the prompts planned on; tokens per batch (null: one prompt each)
    train_frac: float = 0.5
    batch_tokens: Optional[int] = None
    gating: GatingStudyConfig = field(default_factory=GatingStudyConfig)
    #: the sequence length of the generated routing replayed when no trace.path is given
    synth_requests: int = 200
    synth_tokens: int = 96


@dataclass
class EmoeExperimentConfig(StudyConfig):
    pass


@dataclass
class HuangExperimentConfig(StudyConfig):
    pass


def _plain(obj: Any, cls: type) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(obj).items() if k in names})


def sim_base(cfg: StudyConfig) -> SimConfig:
    """The plain simulator config a study's runs start from."""
    out = _plain(cfg, SimConfig)
    return dataclasses.replace(out, policy=_plain(cfg.policy, PolicyConfig),
                               cluster=_plain(cfg.cluster, ClusterConfig),
                               workload=_plain(cfg.workload, WorkloadConfig))


LEAD = Range(lo=1, hi=4)  # layers ahead (learned_next's MAX_LEAD)


@ranges(
    recalls=FRACTION,
    precisions=OPEN_FRACTION,
    seed=SEED,
    call_s_per_token=NONNEG,
    lead=LEAD,
    leads=LEAD)
@dataclass
class DialConfig:
    """The accuracy dial (``noisy_oracle``) and the learned next-layer prefetcher."""

    #: the recall / precision grid of the accuracy sweep
    recalls: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    precisions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    seed: int = 0  # noisy_oracle's seed
    #: a per-token predictor checkpoint ('moesim predictor train ... predictor=layers'): the
    #: learned next-layer prefetcher ("": none; the accuracy sweep then marks nothing)
    checkpoint: str = ""
    #: with a checkpoint, the prompts replayed: its held-out "test" prompts, "val", "train", or
    #: "all" of the trace (a predictor scored on prompts it trained on looks better than it is)
    split: str = "test"
    #: seconds per token per layer charged for the learned prefetcher (null: measured)
    call_s_per_token: Optional[float] = None
    #: experiment prefetch: layers ahead the learned prefetcher weighs (l+1 .. l+lead) and
    #: perfect prefetch loads (l+lead), in the main comparison
    lead: int = 2
    #: experiment prefetch: the lead times swept (learned_next and perfect at each)
    leads: list[int] = field(default_factory=lambda: [1, 2, 3])
    #: drivers of the accuracy sweep
    replay: bool = True
    sim: bool = True


@ranges(
    replay_requests=COUNT_OR_ALL)
@dataclass
class DialExperimentConfig(SimConfig):
    """``moesim experiment accuracy`` / ``moesim experiment prefetch``: the simulator's keys plus
    the memories compared and the dial."""

    cluster: StudyClusterConfig = field(default_factory=StudyClusterConfig)
    dial: DialConfig = field(default_factory=DialConfig)
    #: replay only the first N prompts of the trace (0: all)
    replay_requests: int = 0


@dataclass
class AccuracyExperimentConfig(DialExperimentConfig):
    pass


@dataclass
class PrefetchExperimentConfig(DialExperimentConfig):
    pass
