"""Structured configs (types and keys) of every Hydra app but ``sim`` (:mod:`sim.world.config`),
registered in Hydra's ConfigStore by :func:`register_app_schemas`.

One vocabulary: the simulator's keys name each idea everywhere (``policy.cache``,
``policy.prefetch``, ``policy.placement``, ``policy.scheduler``, ``cluster.expert_budget_fraction``,
``workload.max_requests``, ``model.dtype`` spelled bf16/fp16/fp32); an app that compares a list
of them in one run takes the plural of the same key (``policy.caches``,
``cluster.expert_budget_fractions``, ``policy.placements``).

Each app's YAML (``conf/<app>.yaml``, the values) starts its ``defaults`` with ``<app>_schema``,
so Hydra rejects an unknown key or a wrong type before anything runs. :data:`APPS` maps each app's
config name to its schema class; a task turns its config node into that class with
:func:`app_config`. ``MISSING`` marks a key the command line must give (``???`` in YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from sim.app.experiments.config import (
    AccuracyExperimentConfig,
    EmoeExperimentConfig,
    HuangExperimentConfig,
    PrefetchExperimentConfig,
)
from sim.common.errors import ConfigError
from sim.world.config import ModelConfig, SimConfig

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


# ------------------------------------------------------------------------------------------------
# the shared vocabulary: the simulator's keys (sim/world/config.py) are the names; an app that sweeps a
# list of them inside one run uses the plural of the same name (policy.caches, ...)
# ------------------------------------------------------------------------------------------------
@dataclass
class TraceFileConfig:
    """A routing trace to read: ``path`` (``moesim trace import``)."""

    path: str = MISSING


@dataclass
class RequestLimitConfig:
    """``workload.max_requests``: the first N requests (prompts) of the trace only (0: all)."""

    max_requests: int = 0


@dataclass
class CachePolicyConfig:
    """``policy.*`` of ``moesim cache``: the cache policies compared, the prefetch policy."""

    caches: list[str] = field(default_factory=lambda: [
        "lru", "lfu", "fifo", "lifo", "priority", "keep_predicted", "belady"])
    prefetch: str = "none"
    prefetch_args: dict[str, Any] = field(default_factory=dict)
    #: eMoE: once a layer's cache is full, absent experts are rerouted to resident ones, not loaded
    reroute: bool = False


@dataclass
class BudgetSweepConfig:
    """``cluster.expert_budget_fractions``: the expert memories compared (share of a layer's)."""

    expert_budget_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])


@dataclass
class CacheAppConfig:
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


@dataclass
class PlacementPolicyConfig:
    """``policy.*`` of ``moesim placement``: the placements compared, each one's arguments."""

    placements: list[str] = field(default_factory=lambda: [
        "contiguous", "round_robin", "greedy", "anticorr", "eplb", "rebalance", "exhaustive"])
    #: placement name -> its arguments (e.g. eplb: {num_redundant: 8})
    placement_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlacementClusterConfig:
    """``cluster.expert_parallel``: the GPUs one layer's experts are spread over."""

    expert_parallel: int = 8


@dataclass
class PlacementAppConfig:
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


# ------------------------------------------------------------------------------------------------
# moesim realrun replay / calibrate / validate (conf/realrun_{replay,calibrate,validate}.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class RealrunTraceConfig:
    """``path`` (a routing trace), or empty: ``workload.num_requests`` x ``tokens_per_request``
    tokens sampled from the fitted generator ``generator`` (as ``moesim sim``'s trace.generator)."""

    path: str = ""
    generator: str = "deepseek-v2-lite"
    tokens_per_request: int = 16


@dataclass
class RealrunWorkloadConfig:
    #: requests sampled from the generator when trace.path is empty
    num_requests: int = 4
    #: the first N requests of the trace only (0: all)
    max_requests: int = 0


@dataclass
class OneCachePolicyConfig:
    cache: str = "lru"


@dataclass
class OneBudgetConfig:
    #: experts resident per layer, as a share of the layer's experts
    expert_budget_fraction: float = 0.5


@dataclass
class RealrunReplayConfig:
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


@dataclass
class RealrunCalibrateConfig:
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


@dataclass
class ValidateCalibrationConfig:
    """What ``moesim realrun validate`` measures when it calibrates first (no ``profile``)."""

    tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    copy_experts: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    contexts: list[int] = field(default_factory=lambda: [16, 128, 512])
    warmup: int = 3
    reps: int = 9


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


# ------------------------------------------------------------------------------------------------
# moesim predictor train / eval (conf/predictor_train.yaml + conf/predictor/, _eval.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class TokenPredictorConfig:
    """The per-token predictor (sim/predictor/model.py); values: conf/predictor/default.yaml."""

    mode: str = "phased"
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    min_count: int = 1
    num_hash: int = 4096
    num_pos_buckets: int = 48
    lookup_prior: bool = True
    prior_alpha: float = 2.0
    layer_d_model: int = 64
    layer_layers: int = 2
    layer_heads: int = 4
    layer_d_ff: int = 128
    prev_token: str = "lower"
    decode_prev_token: str = "same"  # mode phased: the decode head's prev_token
    hidden_states: bool = True  # layer modes: use a capture's .hidden.safetensors when present
    gate_weights: bool = True  # layer modes: use the trace's gate weights when present
    prev_rank: int = 32
    epochs: int = 4
    lr: float = 3.0e-3
    weight_decay: float = 0.01


@dataclass
class PromptPredictorConfig:
    """eMoE-A's per-prompt predictor (sim/predictor/prompt.py)."""

    set_size: int = 16
    history: int = 16
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    d_ff: int = 128
    dropout: float = 0.1
    epochs: int = 20
    batch: int = 32
    lr: float = 1.0e-3
    weight_decay: float = 0.01


@dataclass
class PredictorConfig:
    absent_phase: str = "other"  # mode phased, a phase absent from training: other | refuse
    window: int = 128
    batch_tokens: int = 4096
    token: TokenPredictorConfig = field(default_factory=TokenPredictorConfig)
    prompt: PromptPredictorConfig = field(default_factory=PromptPredictorConfig)




@dataclass
class PredictorTrainConfig:
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    workload: RequestLimitConfig = field(default_factory=RequestLimitConfig)
    seed: int = 0
    threads: int = 2
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])


@dataclass
class MoeModelSize:
    name: str = "DeepSeek-V2-Lite"
    params: float = 15.7e9
    bytes_per_param: float = 2.0


@dataclass
class PredictorEvalConfig:
    checkpoint: str = MISSING
    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    workload: RequestLimitConfig = field(default_factory=RequestLimitConfig)
    split: str = "test"
    threads: int = 2
    prompt_set_size: Optional[int] = None
    staleness_periods: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 40, 80])
    sensitivity_threshold: float = 0.02
    moe_model: MoeModelSize = field(default_factory=MoeModelSize)


# ------------------------------------------------------------------------------------------------
# moesim kernels bench (conf/kernels_bench.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class TuneSpace:
    block_m: list[int] = field(default_factory=lambda: [16, 32, 64])
    block_n: list[int] = field(default_factory=lambda: [32, 64, 128])
    block_k: list[int] = field(default_factory=lambda: [64, 128])
    num_warps: list[int] = field(default_factory=lambda: [4, 8])
    num_stages: list[int] = field(default_factory=lambda: [3, 4])


@dataclass
class KernelsBenchConfig:
    shapes: list[str] = field(default_factory=lambda: ["mixtral-8x7b", "deepseek-v2-lite"])
    sizes: list[int] = field(default_factory=lambda: [2**i for i in range(13)])
    #: one spelling everywhere (model.dtype): bf16 | fp16 | fp32
    dtype: str = "bf16"
    capacity_factor: float = 1.25
    reference: bool = True
    device: str = "cuda"
    interpret: bool = False
    out_dir: Optional[str] = None
    config_dir: Optional[str] = None
    tune: bool = False
    tune_space: TuneSpace = field(default_factory=TuneSpace)
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    seed: int = 0


# ------------------------------------------------------------------------------------------------
# moesim demo (conf/demo.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class DemoAppConfig(SimConfig):
    """The simulator's keys, plus ``runs``: run name -> the simulator keys it sets (dotted), on
    top of the rest of the config; every run sees the same requests and the same routing."""

    runs: dict[str, Any] = field(default_factory=dict)
    #: also replay the runs' routing through ``moesim cache`` (hit rate vs memory, eMoE rerouting)
    replay: bool = True


#: app config name (conf/<name>.yaml) -> its schema; the ConfigStore name is "<name>_schema"
#: except for sim and demo (sim_schema, demo_schema from sim.world.config)
APPS: dict[str, type] = {
    "sim": SimConfig, "demo": DemoAppConfig,
    "cache": CacheAppConfig, "placement": PlacementAppConfig,
    "realrun_replay": RealrunReplayConfig, "realrun_calibrate": RealrunCalibrateConfig,
    "realrun_validate": RealrunValidateConfig,
    "predictor_train": PredictorTrainConfig, "predictor_eval": PredictorEvalConfig,
    "kernels_bench": KernelsBenchConfig,
    "experiment_emoe": EmoeExperimentConfig, "experiment_huang": HuangExperimentConfig,
    "experiment_accuracy": AccuracyExperimentConfig,
    "experiment_prefetch": PrefetchExperimentConfig,
}


def register_app_schemas(only: str | None = None) -> None:
    """Store every app's schema in Hydra's ConfigStore as ``<app>_schema`` (idempotent); with
    ``only``, ``sim_schema`` and that app's (an app's YAML names only its own schema, and Hydra
    copies the whole store at each composition: a run registers what it composes)."""
    from hydra.core.config_store import ConfigStore

    from sim.world.config import register_configs

    register_configs()  # sim_schema (and sim.world.config's old demo_schema, replaced here)
    cs = ConfigStore.instance()
    for name, schema in APPS.items():
        if name != "sim" and (only is None or name == only):
            cs.store(name=f"{name}_schema", node=schema)


def app_config(cfg: Any, schema: type) -> Any:
    """A composed config node (or an instance already) -> an instance of ``schema``."""
    if isinstance(cfg, schema):
        return cfg
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        raise ConfigError(f"expected a {schema.__name__} config, got {type(obj).__name__}")
    return obj


def limit_requests(trace: Any, n: int, key: str = "workload.max_requests") -> Any:
    """``trace`` cut to its first ``n`` requests (``n = 0``: all of it); a negative ``n`` is an
    error naming ``key``."""
    if n < 0:
        raise ConfigError(f"{key}={n}; expected N >= 1, or 0 for all requests")
    return trace.select_requests(trace.request_ids()[:n]) if n else trace
