"""The host and the offloading set-up: the CPU box a GPU sits in (``host=``, ``conf/host/``) and
how experts that are not resident are served (``offload.*``): copied to the GPU or computed on the
host CPU, from pinned or pageable memory, or every layer streamed (HF accelerate, DeepSpeed
ZeRO-3). Storage formats (bits per parameter of experts and dense weights) are the model's
(``model.expert_bits`` / ``model.dense_bits``, set by the ``quant=`` group).

The pure facts derived from them (the host link's bandwidth, the PCIe table) live here too, so the
simulator, the replay's byte counts and realrun read one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.common.errors import ConfigError
from sim.world.ranges import AT_LEAST_1, NONNEG, OPEN_FRACTION, Range, ranges

#: measured-typical pinned host-to-device bandwidth of a x16 link per PCIe generation (per
#: direction, cudaMemcpyAsync of tens of MB): about 80 % of the link's payload rate after 128b/130b
#: encoding and TLP headers (gen3 15.75, gen4 31.5, gen5 63 GB/s theoretical, PCI-SIG base
#: specifications); gen4 and gen5 as the figures in conf/hardware (A100 / H100), gen3 likewise.
PCIE_X16_BYTES_PER_S = {3: 12.0e9, 4: 25.0e9, 5: 55.0e9, 6: 110.0e9}

EXPERT_EXEC = ("copy", "cpu", "auto", "cost")
HOST_MEMORY = ("pinned", "pageable")
DEQUANT = ("none", "unpack", "fused")
CPU_ISA = ("avx2", "avx512", "amx")


@ranges(
    cores=NONNEG,
    sockets=AT_LEAST_1,
    memory_bytes=Range(lo=0, note="0: not checked"),
    memory_bytes_per_s=Range(lo=0, note="0: no host modelled"),
    memory_efficiency=OPEN_FRACTION,
    flops_efficiency=OPEN_FRACTION,
    pcie_gen=Range(lo=0, hi=6, note="0: the GPU's own link"),
    pcie_lanes=Range(lo=1, hi=16),
    pageable_fraction=OPEN_FRACTION)
@dataclass
class HostConfig:
    """The CPU box a GPU sits in: what an expert computed on the host costs, and the PCIe slot
    that may be slower than the card (an RTX 3060 is a gen4 card; in a gen3 slot it copies at
    gen3's rate). ``name: none``: no host modelled (copies at the GPU's own link rate; computing
    experts on the CPU is refused)."""

    name: str = "none"
    cores: int = 0
    sockets: int = 1
    #: host memory that holds the offloaded weights (0: not checked): the experts a replica's
    #: GPUs do not hold (and, layer streaming, the dense weights) must fit
    memory_bytes: int = 0
    #: DRAM bandwidth of all channels, all sockets (datasheet: channels x MT/s x 8 bytes)
    memory_bytes_per_s: float = 0.0
    #: share of it a CPU expert GEMV reaches (llama.cpp / kTransformers kernels, an assumption)
    memory_efficiency: float = 0.6
    #: peak dense FLOP/s of all cores per instruction set (bf16/fp32 FMA), e.g. {avx2: 1.0e12}
    flops_per_s: dict[str, float] = field(default_factory=dict)
    #: the instruction set the CPU expert kernels use (a key of flops_per_s)
    isa: str = "avx2"
    flops_efficiency: float = 0.5
    #: the GPU slot's PCIe generation and lanes (0: the GPU's own ``hardware.host_link_bytes_per_s``)
    pcie_gen: int = 0
    pcie_lanes: int = 16
    #: pageable host memory's copy bandwidth as a share of pinned (cudaMemcpy stages pageable
    #: memory through a pinned buffer; the figure's source is in the YAML)
    pageable_fraction: float = 0.5
    source: str = ""


@ranges(
    cpu_max_tokens=AT_LEAST_1)
@dataclass
class OffloadConfig:
    """How an expert that is not resident on its GPU is served."""

    #: "copy": copied over the host link and computed on the GPU (mixtral-offloading, MoE-Infinity);
    #: "cpu": computed on the host, its tokens' activations crossing the link both ways (Fiddler,
    #: kTransformers, llama.cpp --n-cpu-moe); "auto": llama.cpp's rule, on the CPU while a layer's
    #: batch has fewer than ``cpu_max_tokens`` tokens, else copied; "cost": per missed expert,
    #: heaviest first, whichever of the link and the CPU finishes it sooner (HybriMoE's split by load).
    #: cpu / auto / cost need ``policy.cache=static`` (a miss does not become resident) and a host.
    expert_exec: str = "copy"
    #: llama.cpp's threshold (ggml-cuda offload_op: a batch of >= 32 tokens copies the weights)
    cpu_max_tokens: int = 32
    #: host memory the experts are copied from: "pinned" or "pageable" (host.pageable_fraction)
    host_memory: str = "pinned"
    #: every layer's weights (attention and every expert) copied to the GPU at every iteration
    #: before the layer runs, no expert cache (HF accelerate's cpu offload, DeepSpeed ZeRO-3
    #: parameter offload); the layers that fit the expert budget stay resident
    layer_streaming: bool = False


def check_offload(offload: OffloadConfig, host: HostConfig, cache: str) -> None:
    """One-line errors for settings that cannot be modelled."""
    if offload.expert_exec not in EXPERT_EXEC:
        raise ConfigError(f"offload.expert_exec={offload.expert_exec!r}; expected one of "
                          f"{', '.join(EXPERT_EXEC)}")
    for isa, v in host.flops_per_s.items():
        if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise ConfigError(f"host.flops_per_s.{isa}={v}; expected a positive finite FLOP/s")
    if offload.host_memory not in HOST_MEMORY:
        raise ConfigError(f"offload.host_memory={offload.host_memory!r}; expected one of "
                          f"{', '.join(HOST_MEMORY)}")
    if offload.expert_exec != "copy":
        if cache != "static":
            raise ConfigError(f"offload.expert_exec={offload.expert_exec} computes missed experts "
                              f"on the host, so they never become resident: it needs "
                              f"policy.cache=static (got {cache!r})")
        if host.name == "none" or host.memory_bytes_per_s <= 0 or not host.flops_per_s:
            raise ConfigError(f"offload.expert_exec={offload.expert_exec} computes experts on the "
                              f"host CPU: choose a host (host=NAME, conf/host/) with memory "
                              f"bandwidth and flops_per_s")
        if host.isa not in host.flops_per_s:
            raise ConfigError(f"host.isa={host.isa!r} has no entry in host.flops_per_s "
                              f"({', '.join(host.flops_per_s) or 'empty'})")
    if offload.layer_streaming and offload.expert_exec != "copy":
        raise ConfigError("offload.layer_streaming=true copies every layer; it takes "
                          "offload.expert_exec=copy")


def check_host_memory(host: HostConfig, expert_total_bytes: float, dense_bytes: float) -> None:
    """The experts the GPUs do not hold, ``expert_total_bytes`` (and, layer streaming, the dense
    weights) in host memory: refused where the host's memory cannot hold them."""
    need = expert_total_bytes + dense_bytes
    if host.memory_bytes and need > host.memory_bytes:
        raise ConfigError(f"host={host.name}: its {host.memory_bytes / 1e9:.0f} GB of memory cannot "
                          f"hold the offloaded weights ({need / 1e9:.1f} GB); choose a host with "
                          f"more memory (host.memory_bytes) or a smaller quant=")


def host_link_bytes_per_s(gpu_link_bytes_per_s: float, host: HostConfig,
                          offload: OffloadConfig) -> float:
    """The host-to-device copy bandwidth: the GPU's own link, capped by the host's PCIe slot
    (its generation's x16 figure scaled by its lanes), times the pageable share when the experts
    sit in pageable memory."""
    bw = gpu_link_bytes_per_s
    if host.pcie_gen:
        bw = min(bw, PCIE_X16_BYTES_PER_S[host.pcie_gen] * host.pcie_lanes / 16)
    if offload.host_memory == "pageable":
        bw *= host.pageable_fraction
    return bw


def weight_bits(dtype_bits: float, bits: float) -> float:
    """Bits per parameter of a weight stored at ``bits`` (0: at the model's dtype)."""
    return bits if bits > 0 else dtype_bits


__all__ = ["CPU_ISA", "DEQUANT", "EXPERT_EXEC", "HOST_MEMORY", "PCIE_X16_BYTES_PER_S", "HostConfig",
           "OffloadConfig", "check_host_memory", "check_offload", "host_link_bytes_per_s", "weight_bits"]
