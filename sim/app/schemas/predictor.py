"""The schemas of the ``predictor`` commands, train and eval (:mod:`sim.app.predictor_cmd`); values:
``conf/predictor_train.yaml`` with ``conf/predictor/``, and ``conf/predictor_eval.yaml``, starting
their ``defaults`` with ``predictor_train_schema`` and ``predictor_eval_schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from sim.app.schemas.common import RequestLimitConfig, TraceFileConfig
from sim.world.ranges import AT_LEAST_1, FRACTION, NONNEG, POSITIVE, SEED, UNIT_HALF_OPEN, ranges

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@ranges(
    d_model=AT_LEAST_1,
    layers=AT_LEAST_1,
    heads=AT_LEAST_1,
    d_ff=AT_LEAST_1,
    dropout=UNIT_HALF_OPEN,
    min_count=NONNEG,
    num_hash=AT_LEAST_1,
    num_pos_buckets=AT_LEAST_1,
    prior_alpha=NONNEG,
    layer_d_model=AT_LEAST_1,
    layer_layers=AT_LEAST_1,
    layer_heads=AT_LEAST_1,
    layer_d_ff=AT_LEAST_1,
    prev_rank=NONNEG,
    epochs=AT_LEAST_1,
    lr=POSITIVE,
    weight_decay=NONNEG)
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


@ranges(
    set_size=AT_LEAST_1,
    history=AT_LEAST_1,
    d_model=AT_LEAST_1,
    layers=AT_LEAST_1,
    heads=AT_LEAST_1,
    d_ff=AT_LEAST_1,
    dropout=UNIT_HALF_OPEN,
    epochs=AT_LEAST_1,
    batch=AT_LEAST_1,
    lr=POSITIVE,
    weight_decay=NONNEG)
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


@ranges(
    window=AT_LEAST_1,
    batch_tokens=AT_LEAST_1)
@dataclass
class PredictorConfig:
    """``predictor.*``: the per-token and per-prompt predictors and how they read the trace."""

    absent_phase: str = "other"  # mode phased, a phase absent from training: other | refuse
    window: int = 128
    batch_tokens: int = 4096
    token: TokenPredictorConfig = field(default_factory=TokenPredictorConfig)
    prompt: PromptPredictorConfig = field(default_factory=PromptPredictorConfig)


@ranges(
    seed=SEED,
    threads=AT_LEAST_1,
    split=FRACTION)
@dataclass
class PredictorTrainConfig:
    """``predictor train``: train the predictors on a trace's split."""

    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    workload: RequestLimitConfig = field(default_factory=RequestLimitConfig)
    seed: int = 0
    threads: int = 2
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])


@ranges(
    params=POSITIVE,
    bytes_per_param=POSITIVE)
@dataclass
class MoeModelSize:
    """The MoE model the predictor's own memory is reported as a share of (name, parameters, bytes)."""

    name: str = "DeepSeek-V2-Lite"
    params: float = 15.7e9
    bytes_per_param: float = 2.0


@ranges(
    threads=AT_LEAST_1,
    prompt_set_size=AT_LEAST_1,
    staleness_periods=AT_LEAST_1,
    sensitivity_threshold=NONNEG)
@dataclass
class PredictorEvalConfig:
    """``predictor eval``: a checkpoint scored on a trace's split (accuracy, staleness, sensitivity)."""

    checkpoint: str = MISSING
    trace: TraceFileConfig = field(default_factory=TraceFileConfig)
    workload: RequestLimitConfig = field(default_factory=RequestLimitConfig)
    split: str = "test"
    threads: int = 2
    prompt_set_size: Optional[int] = None
    staleness_periods: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 40, 80])
    sensitivity_threshold: float = 0.02
    moe_model: MoeModelSize = field(default_factory=MoeModelSize)
