"""The schema of the ``kernels bench`` command (:mod:`sim.app.kernels_cmd`; values:
``conf/kernels_bench.yaml``, which starts its ``defaults`` with ``kernels_bench_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sim.world.ranges import AT_LEAST_1, NONNEG, POSITIVE, SEED, ranges

# Optional[...] rather than "X | None": OmegaConf reads these annotations at run time.
# ruff: noqa: UP045


@ranges(
    block_m=AT_LEAST_1,
    block_n=AT_LEAST_1,
    block_k=AT_LEAST_1,
    num_warps=AT_LEAST_1,
    num_stages=AT_LEAST_1)
@dataclass
class TuneSpace:
    """The grouped FFN launch configurations tried by ``tune=true``."""

    block_m: list[int] = field(default_factory=lambda: [16, 32, 64])
    block_n: list[int] = field(default_factory=lambda: [32, 64, 128])
    block_k: list[int] = field(default_factory=lambda: [64, 128])
    num_warps: list[int] = field(default_factory=lambda: [4, 8])
    num_stages: list[int] = field(default_factory=lambda: [3, 4])


@ranges(
    sizes=AT_LEAST_1,
    capacity_factor=POSITIVE,
    warmup_ms=NONNEG,
    rep_ms=POSITIVE,
    seed=SEED)
@dataclass
class KernelsBenchConfig:
    """``kernels bench``: the Triton kernels timed against their torch reference per model shape."""

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
