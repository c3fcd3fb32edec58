"""Calibration: measure the ops the simulator's cost model prices, write a table profile.

Measures, on the device at hand, what ``realrun`` serves (:mod:`realrun.serve`), with the very
functions it calls, at the model's (shrunk) shapes:

- ``attention``: one layer's attention and shared experts against tokens, context (the causal
  (query, key) pairs) and sequences: decode batches, prefill chunks, a mixed batch;
- ``gate``: router, top-k and alignment against tokens; ``iteration``: the per-iteration input;
- ``expert``: one routed expert's SwiGLU through the slot table against its tokens (16 experts
  per launch, divided by 16: what one expert adds to a layer);
- ``copy``: whole experts copied from host memory (pinned on a GPU) into slots, one after the
  other, against bytes; ``meta.json`` also records how much of a copy hides behind compute
  (``copy_compute_overlap``: a side stream on a GPU, a thread on the CPU; realrun's CPU copies
  run in line, ``copies_in_line``).

Each figure is the median of ``reps`` timed runs after ``warmup`` runs (CUDA events on a GPU,
``perf_counter`` on the CPU). Rows follow the CSV layout of :mod:`sim.cost.table`, so
``moesim sim serving.cost_model=table serving.cost_table=PROFILE.csv`` makes the simulator use
them; ``meta.json`` beside the CSV records the device, the engine and the versions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realrun.model import DTYPES
from sim.common.files import atomic_write_bytes
from sim.cost.table import COLUMNS, OPTIONAL_COLUMNS

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


#: bytes written before each timed CPU run: more than a last-level cache, so that an op is timed
#: with cold caches, as it runs in serving between other layers' weights
COLD_BYTES = 48 << 20


def _timeit(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int,
            cold: torch.Tensor | None = None, clock: str = "wall") -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cold is not None:
            cold.add_(1.0)
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            now = time.thread_time if clock == "cpu" else time.perf_counter
            t0 = now()
            fn()
            times.append(now() - t0)
    return statistics.median(times)


def calibrate_model(model: Any, device: str, tokens: list[int], copy_experts: list[int],
                    contexts: list[int], warmup: int = 2, reps: int = 5, block_size: int = 16,
                    label: str | None = None, seed: int = 0, clock: str = "wall",
                    cold_bytes: int = COLD_BYTES) -> tuple[list[dict[str, Any]], dict]:
    """Measure what :class:`realrun.serve.RealServer` runs for ``model`` (shrunk already), with
    the very functions it calls (:mod:`realrun.model`, :class:`realrun.serve.Slots`); weights
    cycle over layers and slots so that no measurement reads the same weights twice in a row.
    ``clock`` (CPU only): ``wall`` or ``cpu`` (this thread's CPU time), as realrun serves.
    Returns the profile rows and facts for ``meta.json`` (copy/compute overlap, clock)."""
    from realrun.serve import one_thread

    dev = torch.device(device)
    with one_thread(dev):  # realrun serves on one core
        return _calibrate(model, dev, tokens, copy_experts, contexts, warmup, reps, block_size,
                          label, seed, clock, cold_bytes)


def _calibrate(model: Any, dev: torch.device, tokens: list[int], copy_experts: list[int],
               contexts: list[int], warmup: int, reps: int, block_size: int, label: str | None,
               seed: int, clock: str, cold_bytes: int) -> tuple[list[dict[str, Any]], dict]:
    from dataclasses import replace

    from realrun.model import Routed, Shapes, TinyMoE, expert_ffn
    from realrun.serve import Slots
    from sim.cost.analytic import kv_read_tokens

    # four layers are enough to cycle weights through: a whole model need not fit the host
    sh = Shapes.of(replace(model, num_layers=min(model.num_layers, 4)), block_size)
    moe = TinyMoE(sh, dev, seed)
    cold = torch.zeros(cold_bytes // 4) if dev.type == "cpu" and cold_bytes > 0 else None

    def timeit(fn: Callable[[], Any], warmup: int, reps: int) -> float:
        return _timeit(fn, dev, warmup, reps, cold, clock)

    label = label or device_label(dev)
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed + 7)
    layer = [0]

    def next_layer() -> int:
        layer[0] = (layer[0] + 1) % sh.L
        return layer[0]

    def row(op: str, **kw: Any) -> None:
        base = {c: 0 for c in (*COLUMNS, *OPTIONAL_COLUMNS)}
        base.update(op=op, device=label, dtype=sh.dtype, **kw)
        rows.append(base)

    def x_of(n: int) -> torch.Tensor:
        return torch.randn((n, sh.H), generator=g).to(DTYPES[sh.dtype]).to(dev)

    # attention + shared experts: decode batches, prefill chunks, a mixed batch
    batches = [[(c, 1)] * b for b in (1, 4, 16, 48) for c in contexts]
    batches += [[(0, n)] * k for k in (1, 4) for n in tokens if n <= max(contexts)]
    batches += [[(0, 64)] + [(c, 1)] * 16 for c in contexts]
    for seqs in batches:
        kvs = [(moe.new_kv(st + n), st, n) for st, n in seqs]
        T = sum(n for _, n in seqs)
        ctx = sum(n * st + n * (n + 1) // 2 for st, n in seqs)
        kv = kv_read_tokens(np.array([st for st, _ in seqs]), np.array([n for _, n in seqs]))
        x = x_of(T)
        t = timeit(lambda x=x, kvs=kvs: moe.attention(next_layer(), x, kvs), warmup, reps)
        row("attention", tokens=T, hidden=sh.H, context=ctx, kv_tokens=kv, sequences=len(seqs),
            time_s=t)
    # gating (router, top-k, alignment) and the per-iteration input
    for n in tokens:
        x = x_of(n)
        ex = torch.stack([torch.randperm(sh.E, generator=g)[: sh.K] for _ in range(n)]).to(dev)
        t = timeit(lambda x=x, ex=ex: moe.gate(next_layer(), x, ex), warmup, reps)
        row("gate", tokens=n, experts=sh.E, hidden=sh.H, time_s=t)
        emb = x_of(1024)
        rows_np = np.arange(n)
        t = timeit(lambda emb=emb, rows_np=rows_np: emb[torch.as_tensor(rows_np % 1024).to(dev)],
                   warmup, reps)
        row("iteration", tokens=n, hidden=sh.H, time_s=t)
    # routed experts through the slot table: m experts of n tokens each, per expert
    slots = Slots(moe, min(sh.L * sh.E, 4 * sh.E))  # touched once (zeroed), as realrun's are
    nslots = slots.capacity + sh.E
    m = min(sh.E, 16)
    base = [0]

    def table() -> list[int]:
        base[0] = (base[0] + m) % nslots
        return [(base[0] + e) % nslots for e in range(sh.E)]

    for n in tokens:
        ids = torch.arange(m).repeat_interleave(n)[:, None].to(torch.int32)  # (m*n, 1)
        r = Routed(ids=ids.to(dev), w=torch.ones((m * n, 1), device=dev),
                   order=torch.arange(m * n), counts=[n] * m + [0] * (sh.E - m),
                   starts=[min(e, m) * n for e in range(sh.E + 1)])
        if dev.type == "cuda":
            from kernels.align import dynamic_gating

            r.align = dynamic_gating(r.ids, block_size, sh.E)
        x = x_of(m * n)
        t = timeit(lambda x=x, r=r: expert_ffn(x, r, table(), slots.w13, slots.w2, 1, block_size),
                   warmup, reps)
        row("expert", tokens=n, experts=1, hidden=sh.H, intermediate=sh.I, time_s=t / m)
    # copies of whole experts from host memory into slots, one expert after the other
    key = [0]

    def copy(n: int) -> None:
        for _ in range(n):
            key[0] = (key[0] + 7) % (sh.L * sh.E)
            slots._copy(key[0], key[0] % nslots, None)

    for n in copy_experts:
        t = timeit(lambda n=n: copy(n), warmup, reps)
        row("copy", bytes=n * sh.expert_bytes, time_s=t)
    return rows, {"copy_compute_overlap": _overlap(copy, lambda: expert_ffn(
        x, r, table(), slots.w13, slots.w2, 1, block_size), dev),
        "copies_in_line": dev.type != "cuda", "expert_bytes": sh.expert_bytes,
        "pageable_fraction": pageable_fraction(dev, sh.expert_bytes, timeit, warmup, reps),
        "clock": "cuda events" if dev.type == "cuda" else clock,
        "load_average": [round(v, 2) for v in load_average()], "cpu_count": os.cpu_count()}


def pageable_fraction(dev: torch.device, nbytes: int, timeit: Callable[..., float], warmup: int,
                      reps: int) -> float:
    """Pinned over pageable host-to-device copy time of ``nbytes`` (at least 64 MB): the share of
    the pinned bandwidth a copy from pageable memory reaches, ``host.pageable_fraction``
    (conf/host). 1.0 where the device is the host (no copy crosses a link)."""
    if dev.type != "cuda":
        return 1.0
    n = max(int(nbytes), 64 << 20)
    dst = torch.empty(n, dtype=torch.uint8, device=dev)
    pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    pageable = torch.empty(n, dtype=torch.uint8)
    t_pinned = timeit(lambda: dst.copy_(pinned, non_blocking=True), warmup, reps)
    t_pageable = timeit(lambda: dst.copy_(pageable), warmup, reps)
    return float(t_pinned / t_pageable) if t_pageable > 0 else 1.0


def load_average() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:
        return ()


def _overlap(copy: Callable[[int], None], compute: Callable[[], Any], dev: torch.device) -> float:
    """How much of a copy hides behind compute: (copy + compute - both) / min(copy, compute),
    both run at once (a side stream on a GPU, a thread on the CPU); 0: copies stall compute."""
    import threading

    n = 8
    t_copy = _timeit(lambda: copy(n), dev, 1, 3)
    t_comp = _timeit(compute, dev, 1, 3)

    def both() -> None:
        if dev.type == "cuda":
            s = torch.cuda.Stream(dev)
            with torch.cuda.stream(s):
                copy(n)
            compute()
            torch.cuda.current_stream(dev).wait_stream(s)
        else:
            th = threading.Thread(target=copy, args=(n,))
            th.start()
            compute()
            th.join()

    t_both = _timeit(both, dev, 1, 3)
    return float(max(0.0, min(1.0, (t_copy + t_comp - t_both) / max(1e-12, min(t_copy, t_comp)))))


def _driver() -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        import subprocess

        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except Exception:
        return None


def write_profile(rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> Path:
    import pandas as pd

    out_dir = Path(out_dir)
    df = pd.DataFrame(rows, columns=[*COLUMNS, *OPTIONAL_COLUMNS])
    csv = out_dir / "profile.csv"
    atomic_write_bytes(df.to_csv(index=False).encode(), csv)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {**meta, "torch": torch.__version__, "triton": triton_version,
            "date": time.strftime("%Y-%m-%d"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "driver": _driver(),
            "python": platform.python_version(), "engine": "moesim realrun calibrate",
            "cuda": torch.version.cuda}
    atomic_write_bytes((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
                       out_dir / "meta.json")
    return csv
