"""Structured configs of the simulator, registered in Hydra's ConfigStore.

The dataclasses fix the *types and keys* (Hydra rejects an unknown key or a wrong type); the YAML
files under ``conf/`` hold the *values* (``conf/model/*.yaml``, ``conf/hardware/*.yaml``, ...).
``register_configs()`` stores ``sim_schema`` (the root node that ``conf/sim.yaml`` starts from; the
other apps' schemas, in :mod:`sim.app.schemas`, reuse or extend these nodes); call it before composing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.common.errors import ConfigError
from sim.world.offload_config import HostConfig, OffloadConfig
from sim.world.ranges import (
    AT_LEAST_1,
    COUNT_OR_ALL,
    NONNEG,
    OPEN_FRACTION,
    POSITIVE,
    RATE,
    SEED,
    Range,
    ranges,
)


@ranges(
    num_layers=AT_LEAST_1,
    dense_layers=NONNEG,
    num_experts=AT_LEAST_1,
    top_k=AT_LEAST_1,
    shared_experts=NONNEG,
    hidden_size=AT_LEAST_1,
    expert_intermediate_size=AT_LEAST_1,
    dense_intermediate_size=NONNEG,
    vocab_size=AT_LEAST_1,
    num_heads=AT_LEAST_1,
    num_kv_heads=AT_LEAST_1,
    head_dim=AT_LEAST_1,
    kv_lora_rank=NONNEG,
    qk_rope_head_dim=NONNEG,
    qk_nope_head_dim=NONNEG,
    q_lora_rank=NONNEG,
    v_head_dim=NONNEG,
    expert_bits=Range(lo=0, hi=32, note="0: the dtype's"),
    dense_bits=Range(lo=0, hi=32, note="0: the dtype's"),
    dequant_efficiency=OPEN_FRACTION)
@dataclass
class ModelConfig:
    """A MoE model's shape, from its published ``config.json`` (``source`` names it)."""

    name: str = "mixtral-8x7b"
    #: MoE layers (dense layers such as DeepSeek's first_k_dense_replace are in ``dense_layers``)
    num_layers: int = 32
    dense_layers: int = 0
    num_experts: int = 8
    top_k: int = 2
    shared_experts: int = 0
    hidden_size: int = 4096
    #: intermediate size of one routed expert (moe_intermediate_size where the model has one)
    expert_intermediate_size: int = 14336
    #: intermediate size of a dense layer's MLP (0 when every layer is MoE)
    dense_intermediate_size: int = 0
    vocab_size: int = 32000
    dtype: str = "bf16"
    #: "gqa" (multi-head / grouped-query) or "mla" (DeepSeek multi-head latent attention)
    attention: str = "gqa"
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    #: MLA only: compressed KV rank, rope dims, query LoRA rank (0: none), value head dim
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    q_lora_rank: int = 0
    v_head_dim: int = 0
    #: storage of the weights as served (the ``quant=`` group, conf/quant): bits per parameter of
    #: routed experts and of the dense weights (attention, shared experts, embeddings), group
    #: scales included (0: the dtype's); how the kernels use them: "none" (plain GEMM), "unpack"
    #: (dequantised to ``dtype`` in GPU memory, then a plain GEMM: HQQ's PyTorch path), "fused"
    #: (dequantised in the GEMM's registers, Marlin / GGUF kernels) at ``dequant_efficiency`` of
    #: the memory-bound rate
    quant: str = "none"
    expert_bits: float = 0.0
    dense_bits: float = 0.0
    dequant: str = "none"
    dequant_efficiency: float = 1.0
    source: str = ""


@ranges(
    memory_bytes=POSITIVE,
    hbm_bytes_per_s=RATE,
    bf16_flops=RATE,
    flops_efficiency=OPEN_FRACTION,
    hbm_efficiency=OPEN_FRACTION,
    kernel_latency_s=NONNEG,
    pcie_gen=AT_LEAST_1,
    host_link_bytes_per_s=RATE,
    host_link_latency_s=NONNEG,
    nvlink_bytes_per_s=RATE,
    nvlink_latency_s=NONNEG,
    network_bytes_per_s=RATE,
    network_latency_s=NONNEG,
    host_copy_overhead_s=NONNEG,
    iteration_overhead_s=NONNEG)
@dataclass
class HardwareConfig:
    """One GPU kind and its links; every constant's source is in the YAML beside it."""

    name: str = "h100-sxm"
    memory_bytes: int = 80 * 10**9
    hbm_bytes_per_s: float = 3.35e12
    bf16_flops: float = 989e12
    #: share of peak FLOP/s and HBM bandwidth a well-tuned kernel reaches (an assumption)
    flops_efficiency: float = 0.6
    hbm_efficiency: float = 0.8
    #: fixed cost of one kernel launch / collective / copy setup
    kernel_latency_s: float = 5e-6
    pcie_gen: int = 5
    #: host-to-device bandwidth a pinned cudaMemcpyAsync reaches (measured-typical, per direction)
    host_link_bytes_per_s: float = 55e9
    host_link_latency_s: float = 10e-6
    #: GPU-to-GPU bandwidth inside a node, per GPU per direction
    nvlink_bytes_per_s: float = 450e9
    nvlink_latency_s: float = 8e-6
    #: inter-node network bandwidth of one NIC per direction (one NIC per GPU by default,
    #: cluster.nic; DGX H100: ConnectX-7 400 Gb/s = 50 GB/s)
    network_bytes_per_s: float = 50e9
    network_latency_s: float = 20e-6
    #: setup cost of each expert's host-to-device copy beyond the first of a fetch (one
    #: cudaMemcpyAsync per weight tensor; mixtral-offloading copies expert by expert)
    host_copy_overhead_s: float = 0.0
    #: fixed cost of one serving iteration outside the kernels: scheduling, input preparation,
    #: sampling, detokenisation (an engine-and-host constant; its source is in the YAML)
    iteration_overhead_s: float = 0.0
    source: str = ""


@ranges(
    iteration_overhead_s=NONNEG,
    layer_overhead_s=NONNEG)
@dataclass
class EngineConfig:
    """The serving engine's software: what one iteration costs outside the GPU kernels
    (scheduling, input preparation, the GPU-to-CPU sync of sampled tokens, output processing),
    paid in series with the kernels by an engine that does not overlap them. A constant of the
    engine and its version, never of a row; its source is in ``conf/engine/<name>.yaml``."""

    name: str = "none"
    #: host time per iteration that the GPU waits for (added to every iteration)
    iteration_overhead_s: float = 0.0
    #: host time per layer that the GPU waits for (an eager engine dispatching each op from
    #: Python, without CUDA graphs; added to every MoE layer's attention block)
    layer_overhead_s: float = 0.0
    source: str = ""


@ranges(
    time_s=NONNEG,
    gpu=Range(lo=-1, note='-1: a node fault'),
    node=Range(lo=-1, note='-1: a GPU fault'),
    recovery_s=Range(lo=0, inf_ok=True))
@dataclass
class FaultConfig:
    """A GPU (``gpu`` >= 0, global id) or node (``node`` >= 0) fails at ``time_s``."""

    time_s: float = -1.0
    gpu: int = -1
    node: int = -1
    #: the failed GPUs come back after this long (inf: never)
    recovery_s: float = 60.0


@ranges(
    nodes=AT_LEAST_1,
    gpus_per_node=AT_LEAST_1,
    expert_parallel=AT_LEAST_1,
    tensor_parallel=AT_LEAST_1,
    expert_budget_fraction=OPEN_FRACTION,
    expert_budget_bytes=Range(lo=0, note='0: use expert_budget_fraction'),
    reserved_bytes=NONNEG,
    replicas=NONNEG,
    spine_oversubscription=Range(lo=1, note='1: full bisection'),
    experts_per_layer=Range(lo=0, note='0: off (use the budget)'))
@dataclass
class ClusterConfig:
    name: str = "1x8"
    nodes: int = 1
    gpus_per_node: int = 8
    #: GPUs per replica (expert-parallel degree); replicas = nodes * gpus_per_node / ep
    expert_parallel: int = 8
    #: tensor-parallel degree of attention, dense layers and the LM head inside a replica (divides
    #: expert_parallel; the rest is attention data parallelism): two all-reduces per layer
    tensor_parallel: int = 1
    #: how experts are split: "ep" (whole experts placed on the replica's GPUs by the placement
    #: policy) or "tp" (every expert sharded over the tensor-parallel group, as vLLM without
    #: --enable-expert-parallel; needs tensor_parallel == expert_parallel)
    moe_parallel: str = "ep"
    #: "global": one expert cache per GPU over all layers; "per_layer": one cache per MoE layer
    #: per GPU (mixtral-offloading's LRU per layer), each with its share of the slots
    cache_scope: str = "global"
    #: > 0: a per-layer cache of this many experts per layer per GPU (mixtral-offloading's k: 2 on
    #: an RTX 3060, 4 elsewhere); implies cache_scope=per_layer and replaces the budget keys
    experts_per_layer: int = 0
    #: expert cache slots per GPU: ``expert_budget_bytes`` if > 0, else this fraction of the
    #: experts the placement puts on the GPU, i.e. of the model's experts / expert_parallel under
    #: contiguous placement (1.0: all of them, the full-memory baseline; 0.5 on Mixtral EP 8:
    #: 16 of each GPU's 32 experts)
    expert_budget_fraction: float = 1.0
    expert_budget_bytes: int = 0
    #: memory kept free for activations and the runtime, per GPU
    reserved_bytes: int = 4 * 10**9
    #: start with the cache filled with the GPU's first experts (weights loaded before serving)
    warm_start: bool = True
    faults: list[FaultConfig] = field(default_factory=list)
    #: the replicas as explicit lists of GPU ids (each of expert_parallel GPUs, disjoint; GPUs
    #: left out stay idle); empty: consecutive GPUs (sim/world/network.py, README "Network")
    replicas: list[list[int]] = field(default_factory=list)
    #: "gpu": one NIC per GPU (DGX H100); "node": one NIC per node shared by its GPUs; a NIC's
    #: bandwidth is hardware.network_bytes_per_s
    nic: str = "gpu"
    #: leaf-to-spine oversubscription: each node's cross-node traffic shares its NICs' aggregate
    #: bandwidth / this ratio (1: full bisection, no spine bottleneck)
    spine_oversubscription: float = 1.0


@ranges(
    max_requests=COUNT_OR_ALL,
    num_requests=AT_LEAST_1,
    rate_rps=POSITIVE,
    prompt_tokens_mean=AT_LEAST_1,
    output_tokens_mean=AT_LEAST_1,
    time_scale=POSITIVE)
@dataclass
class WorkloadConfig:
    """Requests: from ``path`` (workload Parquet, Azure CSV, Mooncake JSONL) or synthetic Poisson."""

    name: str = "poisson"
    #: a request trace, or a list of them merged by arrival time, each request keeping its
    #: file's task (``'workload.path=[conv.csv,code.csv]'``; traces.request_import.load_workloads).
    #: str or list[str]: OmegaConf 2.3 has no Union, so Any here and checked by workload_paths()
    path: Any = ""
    #: first N requests only (0: all)
    max_requests: int = 0
    #: synthetic arrivals (used when path is empty)
    num_requests: int = 200
    rate_rps: float = 2.0
    prompt_tokens_mean: float = 512.0
    output_tokens_mean: float = 128.0
    task: str = "unknown"
    #: arrival times are multiplied by this (2.0 = half the load)
    time_scale: float = 1.0


def workload_paths(path: Any) -> list[str]:
    """``workload.path`` as a list of files ([] when empty: synthetic arrivals); anything but a
    string or a list of non-empty strings is a one-line error naming the key."""
    if path is None or path == "":
        return []
    if isinstance(path, str):
        return [path]
    if isinstance(path, (list, tuple)) and path and all(isinstance(p, str) and p for p in path):
        return list(path)
    raise ConfigError(f"workload.path={path!r}; expected a file or a non-empty list of files "
                      f"('workload.path=[a.csv,b.csv]')")


@ranges(
    pool_size=AT_LEAST_1,
    pool_tokens=AT_LEAST_1)
@dataclass
class TraceConfig:
    """The routing a request replays: a real trace (``path``) or the fitted generator."""

    name: str = "synthetic"
    path: str = ""
    #: fitted generator parameters: a shipped name (traces/params/<name>.json) or a JSON file from
    #: "moesim trace fit"; default: the model's name
    generator: str = ""
    #: generated traces per task and their length in tokens (deterministic under the seed)
    pool_size: int = 32
    pool_tokens: int = 2048
    #: a request longer than its bound trace: "wrap" (replay it from its start) or "error"
    #: (sim/serving/binding.py); the count is in the metrics
    overflow: str = "wrap"


@dataclass
class PolicyConfig:
    cache: str = "lru"
    prefetch: str = "none"
    placement: str = "contiguous"
    scheduler: str = "fcfs"
    cache_args: dict[str, Any] = field(default_factory=dict)
    prefetch_args: dict[str, Any] = field(default_factory=dict)
    placement_args: dict[str, Any] = field(default_factory=dict)
    scheduler_args: dict[str, Any] = field(default_factory=dict)
    #: serve a cache policy that has an array form (lru: sim/serving/lru_arrays.py) a whole
    #: iteration at once with numpy, and count a batch's tokens per expert from prefix counts over
    #: the routing pool; false: the general path (the reference; the same metrics.json)
    cache_arrays: bool = True


@ranges(
    token_budget=AT_LEAST_1,
    max_batch_requests=AT_LEAST_1,
    scheduler_window=AT_LEAST_1,
    predicted_output_tokens=POSITIVE,
    ttft_slo_s=POSITIVE,
    tpot_slo_s=POSITIVE)
@dataclass
class ServingConfig:
    #: "round_robin" or "least_loaded"
    router: str = "round_robin"
    #: tokens per iteration (decode tokens + prefill chunks)
    token_budget: int = 8192
    max_batch_requests: int = 256
    #: waiting requests shown to the scheduler per iteration (head of the queue)
    scheduler_window: int = 64
    #: output length predicted for a task before any of its requests completed (schedulers see
    #: the running per-task mean afterwards); a request's SLO for schedulers is
    #: ttft_slo_s + tpot_slo_s * predicted output
    predicted_output_tokens: float = 128.0
    #: SLOs used for attainment
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.2
    #: "analytic" or "table"
    cost_model: str = "analytic"
    cost_table: str = ""


@ranges(
    chrome_trace_start_s=NONNEG,
    chrome_trace_end_s=NONNEG)
@dataclass
class OutputConfig:
    #: write a Chrome/Perfetto trace of simulated [start, end) seconds to this file ("" = none)
    chrome_trace: str = ""
    chrome_trace_start_s: float = 0.0
    chrome_trace_end_s: float = 1.0
    #: "auto"/"on": a live bar on a terminal, a line every 30 s otherwise; "off"
    progress: str = "auto"
    requests_parquet: bool = True
    print_summary: bool = True
    #: write every call each GPU's cache received to cache_log.parquet (for the cross-driver
    #: check: sim.replay.cache.replay_log serves it again and must count the same); small runs only
    cache_log: bool = False


@ranges(
    seed=SEED)
@dataclass
class SimConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: HostConfig = field(default_factory=HostConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent: once a process, the node it builds
    from the dataclasses being the cost)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    if "sim_schema.yaml" not in cs.repo:
        cs.store(name="sim_schema", node=SimConfig)


def to_sim_config(cfg: Any) -> SimConfig:
    """An OmegaConf node (or a SimConfig) -> a plain SimConfig dataclass."""
    if isinstance(cfg, SimConfig):
        return cfg
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, SimConfig):
        raise ConfigError(f"expected a sim config, got {type(obj).__name__}")
    return obj
