"""Calibration: measure the ops the simulator's cost model prices, write a table profile.

Measures, on the device at hand, with the real kernels and real copies:

- ``copy``: host-to-device copies of ``bytes`` from pinned memory (what an expert fetch costs);
- ``expert``: one expert's SwiGLU FFN (the grouped kernel with one resident expert) over
  ``tokens`` tokens at the model's hidden / intermediate sizes;
- ``gate``: top-k gating of ``tokens`` tokens over ``experts`` experts.

Each figure is the median of ``reps`` timed runs after ``warmup`` runs (CUDA events on a GPU,
``perf_counter`` on the CPU). Rows follow the CSV layout of :mod:`sim.cost.table`, so
``moesim sim serving.cost_model=table serving.cost_table=PROFILE.csv`` makes the simulator use
them; ``meta.json`` beside the CSV records the device, the engine and the versions.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sim.cost.table import COLUMNS
from sim.files import atomic_write_bytes

DEVICE_LABELS = (("H200", "h200"), ("H100", "h100-sxm"), ("A100", "a100-40gb"), ("4090", "rtx-4090"))


def device_label(device: torch.device) -> str:
    """The hardware config name (conf/hardware/) that a device's measurements belong to."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for needle, label in DEVICE_LABELS:
        if needle in name:
            return label
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _timeit(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibrate(device: str, dtype: str, hidden: int, intermediate: int, num_experts: int,
              top_k: int, tokens: list[int], copy_bytes: list[int], warmup: int = 2,
              reps: int = 5, block_size: int = 16, label: str | None = None
              ) -> list[dict[str, Any]]:
    from kernels.align import dynamic_gating
    from kernels.gating import topk_gating
    from kernels.grouped_ffn import grouped_swiglu
    from realrun.runner import DTYPES

    dev = torch.device(device)
    dt = DTYPES[dtype]
    label = label or device_label(dev)
    rows: list[dict[str, Any]] = []

    def row(op: str, **kw: Any) -> None:
        base = {c: 0 for c in COLUMNS}
        base.update(op=op, device=label, dtype=dtype, **kw)
        rows.append(base)

    pin = dev.type == "cuda"
    for nbytes in copy_bytes:
        src = torch.empty(nbytes, dtype=torch.uint8)
        src = src.pin_memory() if pin else src
        dst = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        t = _timeit(lambda s=src, d=dst: d.copy_(s, non_blocking=True), dev, warmup, reps)
        row("copy", bytes=nbytes, time_s=t)

    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn((1, 2 * intermediate, hidden), generator=g) / hidden**0.5).to(dt).to(dev)
    w2 = (torch.randn((1, hidden, intermediate), generator=g) / intermediate**0.5).to(dt).to(dev)
    slot = torch.full((num_experts,), -1, dtype=torch.int32, device=dev)
    slot[0] = 0
    for n in tokens:
        x = torch.randn((n, hidden), generator=g).to(dt).to(dev)
        ids = torch.zeros((n, 1), dtype=torch.int32, device=dev)  # every token to expert 0
        align = dynamic_gating(ids, block_size, num_experts)
        t = _timeit(lambda x=x, a=align: grouped_swiglu(x, w13, w2, slot, a, 1, block_size),
                    dev, warmup, reps)
        row("expert", tokens=n, experts=1, hidden=hidden, intermediate=intermediate, time_s=t)
        logits = torch.randn((n, num_experts), generator=g).to(dev)
        t = _timeit(lambda lg=logits: topk_gating(lg, top_k), dev, warmup, reps)
        row("gate", tokens=n, experts=num_experts, hidden=hidden, time_s=t)
    return rows


def write_profile(rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> Path:
    import pandas as pd

    out_dir = Path(out_dir)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    csv = out_dir / "profile.csv"
    atomic_write_bytes(df.to_csv(index=False).encode(), csv)
    import triton

    meta = {**meta, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "engine": "moesim realrun calibrate",
            "cuda": torch.version.cuda}
    atomic_write_bytes((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
                       out_dir / "meta.json")
    return csv
