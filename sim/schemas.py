"""Structured configs (types and keys) of every Hydra app but ``sim``/``demo`` (those are in
:mod:`sim.config`), registered in Hydra's ConfigStore by :func:`register_app_schemas`.

Each app's YAML (``conf/<app>.yaml``, the values) starts its ``defaults`` with ``<app>_schema``,
so Hydra rejects an unknown key or a wrong type before anything runs. :data:`APPS` maps each app's
config name to its schema class; a task turns its config node into that class with
:func:`app_config`. ``MISSING`` marks a key the command line must give (``???`` in YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from sim.config import DemoConfig, ModelConfig, SimConfig
from sim.errors import ConfigError

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


# ------------------------------------------------------------------------------------------------
# moesim cache / moesim placement (conf/cache.yaml, conf/placement.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class TraceFileConfig:
    """A routing trace to read: ``path`` (``moesim trace import``), first ``max_requests``."""

    path: str = MISSING
    max_requests: Optional[int] = None


@dataclass
class CacheAppConfig:
    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    #: a conf/model config (``model=NAME``) for the expert bytes; null: the trace's model name
    model: Optional[ModelConfig] = None
    policies: list[str] = field(default_factory=lambda: [
        "lru", "lfu", "fifo", "lifo", "priority", "keep_predicted", "belady"])
    capacity_fracs: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    mode: str = "plain"
    batch_size: int = 16
    prefetch: str = "none"
    prefetch_kwargs: dict[str, Any] = field(default_factory=dict)
    reroute: bool = False
    expert_bytes: Optional[int] = None
    plot: bool = True


@dataclass
class PlacementAppConfig:
    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    #: a conf/model config (``model=NAME``) for the expert bytes; null: the trace's model name
    model: Optional[ModelConfig] = None
    num_gpus: int = 8
    policies: list[str] = field(default_factory=lambda: [
        "contiguous", "round_robin", "greedy", "anticorr", "eplb", "rebalance", "exhaustive"])
    train_frac: float = 0.5
    batch_tokens: Optional[int] = None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    expert_bytes: Optional[int] = None
    plot: bool = True


# ------------------------------------------------------------------------------------------------
# moesim realrun replay / calibrate (conf/realrun_replay.yaml, conf/realrun_calibrate.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class RealrunTraceConfig:
    """``path`` (a routing trace), or null: ``requests`` x ``tokens_per_request`` tokens sampled
    from the fitted generator ``params``."""

    path: Optional[str] = None
    params: str = "deepseek-v2-lite"
    requests: int = 4
    tokens_per_request: int = 16


@dataclass
class RealrunReplayConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    trace: RealrunTraceConfig = field(default_factory=RealrunTraceConfig)
    cache: str = "lru"
    capacity_frac: float = 0.5
    batch_tokens: int = 16
    block_size: int = 16
    device: str = "cpu"
    dtype: str = "fp32"
    shrink: int = 32
    max_tokens: Optional[int] = None
    seed: int = 0


@dataclass
class RealrunCalibrateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    device: str = "cuda"
    dtype: str = "bf16"
    shrink: int = 1
    label: Optional[str] = None
    tokens: list[int] = field(default_factory=lambda: [2**i for i in range(13)])
    copy_bytes: list[int] = field(default_factory=lambda: [
        1048576, 16777216, 67108864, 268435456, 352321536])
    warmup: int = 3
    reps: int = 10
    block_size: int = 64


# ------------------------------------------------------------------------------------------------
# moesim predictor train / eval (conf/predictor_train.yaml + conf/predictor/, _eval.yaml)
# ------------------------------------------------------------------------------------------------
@dataclass
class TokenPredictorConfig:
    """The per-token predictor (sim/predictor/model.py); values: conf/predictor/default.yaml."""

    mode: str = "token"
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
    window: int = 128
    batch_tokens: int = 4096
    token: TokenPredictorConfig = field(default_factory=TokenPredictorConfig)
    prompt: PromptPredictorConfig = field(default_factory=PromptPredictorConfig)


@dataclass
class PredictorTraceConfig:
    path: str = MISSING
    #: keep only the first N prompts of the trace (null: all)
    max_prompts: Optional[int] = None


@dataclass
class PredictorTrainConfig:
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    trace: PredictorTraceConfig = field(default_factory=PredictorTraceConfig)
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
    trace: PredictorTraceConfig = field(default_factory=PredictorTraceConfig)
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
    dtype: str = "bfloat16"
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


#: app config name (conf/<name>.yaml) -> its schema; the ConfigStore name is "<name>_schema"
#: except for sim and demo (sim_schema, demo_schema from sim.config)
APPS: dict[str, type] = {
    "sim": SimConfig, "demo": DemoConfig,
    "cache": CacheAppConfig, "placement": PlacementAppConfig,
    "realrun_replay": RealrunReplayConfig, "realrun_calibrate": RealrunCalibrateConfig,
    "predictor_train": PredictorTrainConfig, "predictor_eval": PredictorEvalConfig,
    "kernels_bench": KernelsBenchConfig,
}


def register_app_schemas() -> None:
    """Store every app's schema in Hydra's ConfigStore as ``<app>_schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from sim.config import register_configs

    register_configs()  # sim_schema, demo_schema
    cs = ConfigStore.instance()
    for name, schema in APPS.items():
        if name not in ("sim", "demo"):
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


def require_file(path: str | None, key: str, what: str = "a routing trace written by "
                 "'moesim trace import'") -> str:
    """``path`` if it names an existing file or folder, else a ConfigError naming ``key``."""
    from pathlib import Path

    if not path:
        raise ConfigError(f"{key} is empty; give {key}=FILE ({what})")
    if not Path(path).exists():
        raise ConfigError(f"{key}={path}: no such file ({what})")
    return path
