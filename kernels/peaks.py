"""Peak figures of the devices the bench knows, for the "share of peak" columns.

| device   | matches torch.cuda.get_device_name()      | HBM bandwidth | dense bf16 tensor | source |
|----------|-------------------------------------------|---------------|-------------------|--------|
| H100 SXM | contains "H100" and ("HBM3" or "SXM")     | 3.35 TB/s     | 989 TFLOP/s       | [1]    |
| H200 SXM | contains "H200", not "NVL"                | 4.8 TB/s      | 989 TFLOP/s       | [2]    |

[1] NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column: GPU memory bandwidth 3.35 TB/s;
    BF16 Tensor Core 1,979 TFLOPS "with sparsity", i.e. 989 TFLOPS dense.
    https://www.nvidia.com/en-us/data-center/h100/
[2] NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: GPU memory bandwidth 4.8 TB/s;
    BF16 Tensor Core 1,979 TFLOPS with sparsity, i.e. 989 TFLOPS dense.
    https://www.nvidia.com/en-us/data-center/h200/

TB means 10^12 bytes. Other devices (H100 PCIe/NVL, H200 NVL, ...) are not in the table: the bench
leaves their share-of-peak columns empty rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DevicePeak", "PEAKS", "peak_for_device"]


@dataclass(frozen=True)
class DevicePeak:
    name: str
    hbm_bytes_per_s: float
    bf16_flop_per_s: float
    source: str


PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("H100 SXM", 3.35e12, 989e12, "NVIDIA H100 datasheet (SXM): 3.35 TB/s, 1979/2 TFLOPS bf16"),
    DevicePeak("H200 SXM", 4.8e12, 989e12, "NVIDIA H200 datasheet (SXM): 4.8 TB/s, 1979/2 TFLOPS bf16"),
)


def peak_for_device(device_name: str) -> DevicePeak | None:
    """The table row for a CUDA device name, or None when the device is not in the table."""
    n = device_name.upper()
    if "H100" in n and ("HBM3" in n or "SXM" in n) and "NVL" not in n and "PCIE" not in n:
        return PEAKS[0]
    if "H200" in n and "NVL" not in n:
        return PEAKS[1]
    return None
