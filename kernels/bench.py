"""``moesim kernels bench``: time each kernel and the whole MoE layer; write a CSV.

For each model shape and token count T, times (median of triton.testing.do_bench on a GPU):
    gating      topk_gating (Triton)          vs topk_gating_ref (torch)
    align       dynamic_gating (Triton)       vs dynamic_gating_ref (torch)
    static_align static_capacity_gating       vs static_capacity_gating_ref
    ffn         grouped_swiglu on the dynamic alignment (Triton) and on the static one
                ("static"), vs grouped_swiglu_ref (torch, a loop over experts)
    combine     combine (Triton)              vs combine_ref
    layer       moe_layer dynamic (Triton), moe_layer static ("static"), moe_layer_ref (torch)
and writes one row each: time_us, TFLOP/s, GB/s and the share of the device's peak
(kernels/peaks.py). FLOPs and bytes are the *useful* work of the dynamic layout, the same numbers
for static gating, so the throughput columns compare like with like:
    ffn flops  = 2 * T*K * 3*H*N
    ffn bytes  = (experts hit) * 3*H*N * elem + (T*H + T*K*H + 2*T*K*N) * elem
After the table the bench prints the two acceptance checks of the issue (dynamic layer >= static
layer throughput at T >= 32; grouped FFN >= 70% of HBM bandwidth at T <= 64).

``tune=true`` searches the grouped FFN's tiles per (shape, T) and writes kernels/configs/*.json.
``device=cpu interpret=true`` is a smoke mode (Triton interpreter, tiny shapes) for tests only;
its times mean nothing.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.common.errors import ConfigError

__all__ = ["ModelShape", "SHAPES", "CSV_COLUMNS", "run_bench"]


@dataclass(frozen=True)
class ModelShape:
    """One MoE layer's routed experts. Sources: the models' Hugging Face config.json."""

    name: str
    experts: int
    top_k: int
    hidden: int
    ffn: int
    renormalize: bool
    scaling_factor: float = 1.0


SHAPES: dict[str, ModelShape] = {
    # mistralai/Mixtral-8x7B-v0.1: num_local_experts 8, num_experts_per_tok 2, hidden 4096,
    # intermediate 14336; softmax then top-2, renormalised.
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 8, 2, 4096, 14336, renormalize=True),
    # deepseek-ai/DeepSeek-V2-Lite: n_routed_experts 64, num_experts_per_tok 6, hidden 2048,
    # moe_intermediate_size 1408, n_group 1 (no group limit), norm_topk_prob false,
    # routed_scaling_factor 1.0. Its 2 shared experts are a dense FFN, not timed here.
    "deepseek-v2-lite": ModelShape("deepseek-v2-lite", 64, 6, 2048, 1408, renormalize=False),
    # for the CPU smoke test only
    "tiny": ModelShape("tiny", 8, 2, 32, 64, renormalize=True),
}

CSV_COLUMNS = [
    "device", "shape", "dtype", "tokens", "kernel", "impl", "time_us", "flop", "bytes",
    "tflops", "gbps", "flop_share", "bw_share", "experts_hit", "dropped",
]

_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _timer(device: str, warmup_ms: float, rep_ms: float):
    if device == "cuda":
        import triton.testing

        def cuda_time_us(fn) -> float:
            ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
            return 1e3 * float(ms)

        return cuda_time_us

    def cpu_time_us(fn) -> float:  # smoke mode: one warm call, one timed call
        fn()
        t0 = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t0)

    return cpu_time_us


def _inputs(shape: ModelShape, tokens: int, dtype, device: str, seed: int):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    E, H, N = shape.experts, shape.hidden, shape.ffn
    x = torch.randn(tokens, H, generator=g).to(dtype).to(device)  # (T, H)
    logits = torch.randn(tokens, E, generator=g).to(device)  # (T, E)
    # weights are generated on the device in chunks (Mixtral's are 2.8 GB per layer in bf16)
    dg = torch.Generator(device=device).manual_seed(seed + 1)
    w13 = torch.empty(E, 2 * N, H, dtype=dtype, device=device)  # (S, 2N, H)
    w2 = torch.empty(E, H, N, dtype=dtype, device=device)  # (S, H, N)
    for e in range(E):
        w13[e] = (torch.randn(2 * N, H, generator=dg, device=device) / H**0.5).to(dtype)
        w2[e] = (torch.randn(H, N, generator=dg, device=device) / N**0.5).to(dtype)
    slot = torch.arange(E, dtype=torch.int32, device=device)
    return x, logits, w13, w2, slot


def _row(ctx: dict[str, Any], kernel: str, impl: str, time_us: float, flop: float, nbytes: float,
         peak, **extra) -> dict[str, Any]:
    tflops = flop / time_us / 1e6 if flop and time_us > 0 else None
    gbps = nbytes / time_us / 1e3 if nbytes and time_us > 0 else None
    row = dict(ctx, kernel=kernel, impl=impl, time_us=round(time_us, 3), flop=int(flop), bytes=int(nbytes),
               tflops=None if tflops is None else round(tflops, 4),
               gbps=None if gbps is None else round(gbps, 3), flop_share=None, bw_share=None)
    if peak is not None:
        if tflops is not None:
            row["flop_share"] = round(tflops * 1e12 / peak.bf16_flop_per_s, 4)
        if gbps is not None:
            row["bw_share"] = round(gbps * 1e9 / peak.hbm_bytes_per_s, 4)
    row.update(extra)
    return row


def _bench_one(shape: ModelShape, tokens: int, cfg, timer, peak, device_name: str) -> list[dict]:
    import torch

    from kernels import reference as ref
    from kernels.align import dynamic_gating
    from kernels.combine_op import combine
    from kernels.gating import topk_gating
    from kernels.grouped_ffn import grouped_swiglu
    from kernels.layer import moe_layer
    from kernels.static_gating import static_capacity_gating
    from kernels.tuning import get_ffn_config

    dtype = getattr(torch, cfg.dtype)
    elem = _DTYPES[cfg.dtype]
    dev = "cuda" if cfg.device == "cuda" else "cpu"
    E, K, H, N = shape.experts, shape.top_k, shape.hidden, shape.ffn
    x, logits, w13, w2, slot = _inputs(shape, tokens, dtype, dev, int(cfg.seed))
    fcfg = get_ffn_config(E, H, N, K, cfg.dtype, device_name, tokens,
                          None if cfg.config_dir is None else Path(cfg.config_dir))
    bm = fcfg.block_m
    gkw = dict(renormalize=shape.renormalize, scaling_factor=shape.scaling_factor)
    ids, w = topk_gating(logits, K, **gkw)
    dyn = dynamic_gating(ids, bm, E)
    sta = static_capacity_gating(ids, E, cfg.capacity_factor, bm)
    y = grouped_swiglu(x, w13, w2, slot, dyn, K, bm, fcfg)
    hit = int(torch.unique(ids).numel())
    dropped = int(sta.num_dropped)
    ctx = dict(device=device_name, shape=shape.name, dtype=cfg.dtype, tokens=tokens, experts_hit=hit,
               dropped=0)
    TK = tokens * K
    p_max = dyn.sorted_token_ids.numel()
    ffn_flop = 2.0 * TK * 3 * H * N
    ffn_bytes = hit * 3.0 * H * N * elem + (tokens * H + TK * H + 2 * TK * N) * elem
    gate_bytes = tokens * E * 4 + TK * 8
    align_bytes = TK * 4 * 2 + p_max * 4
    comb_bytes = TK * H * elem + tokens * H * elem + TK * 8
    layer_bytes = gate_bytes + ffn_bytes + tokens * H * elem
    use_ref = bool(cfg.reference)
    rows: list[dict] = []

    def add(kernel, impl, fn, flop, nbytes, **extra):
        rows.append(_row(ctx, kernel, impl, timer(fn), flop, nbytes, peak, **extra))

    add("gating", "triton", lambda: topk_gating(logits, K, **gkw), 0, gate_bytes)
    add("align", "triton", lambda: dynamic_gating(ids, bm, E), 0, align_bytes)
    add("static_align", "triton", lambda: static_capacity_gating(ids, E, cfg.capacity_factor, bm), 0,
        align_bytes, dropped=dropped)
    add("ffn", "triton", lambda: grouped_swiglu(x, w13, w2, slot, dyn, K, bm, fcfg), ffn_flop, ffn_bytes)
    add("ffn", "static", lambda: grouped_swiglu(x, w13, w2, slot, sta, K, bm, fcfg), ffn_flop, ffn_bytes,
        dropped=dropped)
    add("combine", "triton", lambda: combine(y, dyn.inv, w), 0, comb_bytes)
    add("layer", "triton", lambda: moe_layer(x, logits, w13, w2, K, slot, config=fcfg, **gkw),
        ffn_flop, layer_bytes)
    add("layer", "static", lambda: moe_layer(x, logits, w13, w2, K, slot, gating="static",
                                             capacity_factor=cfg.capacity_factor, config=fcfg, **gkw),
        ffn_flop, layer_bytes, dropped=dropped)
    if use_ref:
        add("gating", "torch", lambda: ref.topk_gating_ref(logits, K, **gkw), 0, gate_bytes)
        add("align", "torch", lambda: ref.dynamic_gating_ref(ids, bm, E), 0, align_bytes)
        add("static_align", "torch", lambda: ref.static_capacity_gating_ref(ids, E, cfg.capacity_factor, bm),
            0, align_bytes, dropped=dropped)
        add("ffn", "torch", lambda: ref.grouped_swiglu_ref(x, w13, w2, slot, dyn, K), ffn_flop, ffn_bytes)
        add("combine", "torch", lambda: ref.combine_ref(y, dyn.inv, w), 0, comb_bytes)
        add("layer", "torch", lambda: ref.moe_layer_ref(x, logits, w13, w2, K, slot, **gkw),
            ffn_flop, layer_bytes)
    if dev == "cuda":
        torch.cuda.empty_cache()
    return rows


def _tune(shape: ModelShape, sizes: list[int], cfg, timer, device_name: str) -> Path:
    import torch

    from kernels.align import dynamic_gating
    from kernels.gating import topk_gating
    from kernels.grouped_ffn import grouped_swiglu
    from kernels.tuning import FfnConfig, save_ffn_configs

    dtype = getattr(torch, cfg.dtype)
    E, K, H, N = shape.experts, shape.top_k, shape.hidden, shape.ffn
    space = [FfnConfig(bm, bn, bk, nw, ns) for bm, bn, bk, nw, ns in itertools.product(
        cfg.tune_space.block_m, cfg.tune_space.block_n, cfg.tune_space.block_k,
        cfg.tune_space.num_warps, cfg.tune_space.num_stages)]
    best: dict[int, FfnConfig] = {}
    for tokens in sizes:
        x, logits, w13, w2, slot = _inputs(shape, tokens, dtype, "cuda", int(cfg.seed))
        ids, _ = topk_gating(logits, K, renormalize=shape.renormalize)
        timed = []
        for c in space:
            def fn(c=c, ids=ids, x=x, w13=w13, w2=w2, slot=slot):
                a = dynamic_gating(ids, c.block_m, E)
                return grouped_swiglu(x, w13, w2, slot, a, K, c.block_m, c)
            try:
                timed.append((timer(fn), c))
            except Exception as exc:  # a config that does not compile (shared memory) is skipped
                print(f"tune: {shape.name} T={tokens} {c} skipped: {type(exc).__name__}")
        if not timed:
            raise ConfigError(f"tune: no config of the search space ran for {shape.name} T={tokens}")
        t_us, c = min(timed, key=lambda tc: tc[0])
        best[tokens] = c
        print(f"tune: {shape.name} T={tokens}: {t_us:.1f} us with {c}")
        torch.cuda.empty_cache()
    return save_ffn_configs(best, E, H, N, K, cfg.dtype, device_name,
                            None if cfg.config_dir is None else Path(cfg.config_dir))


def _checks(rows: list[dict]) -> list[str]:
    """The issue's acceptance checks, as lines 'PASS ...' / 'FAIL ...'."""
    out = []
    by = {(r["shape"], r["tokens"], r["kernel"], r["impl"]): r for r in rows}
    for (shape, tokens, kernel, impl), r in sorted(by.items()):
        static_key = (shape, tokens, "layer", "static")
        if kernel == "layer" and impl == "triton" and tokens >= 32 and static_key in by:
            s = by[(shape, tokens, "layer", "static")]
            ok = r["time_us"] <= s["time_us"]
            out.append(f"{'PASS' if ok else 'FAIL'} dynamic>=static {shape} T={tokens}: "
                       f"{r['time_us']:.1f} us vs {s['time_us']:.1f} us")
        if kernel == "ffn" and impl == "triton" and tokens <= 64:
            share = r["bw_share"]
            ok = share is not None and share >= 0.70
            out.append(f"{'PASS' if ok else 'FAIL'} ffn HBM>=70% {shape} T={tokens}: "
                       f"{r['gbps']} GB/s, share {share}")
    return out


def _print_table(rows: list[dict]) -> None:
    cols = ["shape", "tokens", "kernel", "impl", "time_us", "tflops", "gbps", "bw_share", "flop_share"]
    print("  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print("  ".join(f"{'' if r[c] is None else r[c]!s:>12}" for c in cols))


def run_bench(cfg) -> Path:
    """Run the bench described by the Hydra config; returns the CSV path."""
    import torch

    if cfg.device not in ("cuda", "cpu"):
        raise ConfigError(f"kernels bench: device must be 'cuda' or 'cpu', got {cfg.device!r}")
    if cfg.dtype not in _DTYPES:
        raise ConfigError(f"kernels bench: dtype must be one of {sorted(_DTYPES)}, got {cfg.dtype!r}")
    unknown = [s for s in cfg.shapes if s not in SHAPES]
    if unknown:
        raise ConfigError(f"kernels bench: unknown shapes {unknown}; expected some of {sorted(SHAPES)}")
    sizes = [int(t) for t in cfg.sizes]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"kernels bench: sizes must be token counts >= 1, got {sizes}")
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("kernels bench needs a CUDA GPU (none is visible); on a machine without one, "
                              "only the smoke mode 'device=cpu interpret=true out_dir=DIR' runs")
        device_name = torch.cuda.get_device_name()
    else:
        if not cfg.interpret:
            raise ConfigError("kernels bench: device=cpu needs interpret=true (Triton runs on the CPU "
                              "only through its interpreter)")
        if cfg.out_dir is None:
            raise ConfigError("kernels bench: device=cpu is a smoke run; give out_dir=DIR so that it does "
                              "not write under kernels/results/")
        if cfg.tune:
            raise ConfigError("kernels bench: tune=true needs device=cuda")
        device_name = "cpu-interpreter"
    if cfg.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
        from kernels import gating

        if type(gating.topk_gating_kernel).__name__ != "InterpretedFunction":
            raise ConfigError("kernels bench: interpret=true but the kernels were already compiled for the "
                              "GPU in this process; set TRITON_INTERPRET=1 in the environment instead")
    from kernels.peaks import peak_for_device
    from kernels.tuning import device_slug

    peak = peak_for_device(device_name)
    if peak is None and cfg.device == "cuda":
        print(f"kernels bench: {device_name!r} is not in kernels/peaks.py; share-of-peak columns left empty")
    timer = _timer(cfg.device, float(cfg.warmup_ms), float(cfg.rep_ms))
    if cfg.tune:
        for name in cfg.shapes:
            print(f"tune: wrote {_tune(SHAPES[name], sizes, cfg, timer, device_name)}")
    rows: list[dict] = []
    for name in cfg.shapes:
        for tokens in sizes:
            rows.extend(_bench_one(SHAPES[name], tokens, cfg, timer, peak, device_name))
    _print_table(rows)
    if cfg.device == "cuda":
        for line in _checks(rows):
            print(line)
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else (
        Path(__file__).resolve().parent / "results" / device_slug(device_name))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    from sim.common.files import atomic_write_bytes

    path = out_dir / f"kernels_bench_{cfg.dtype}.csv"
    atomic_write_bytes(buf.getvalue().encode(), path)
    print(f"kernels bench: wrote {path} ({len(rows)} rows)")
    return path
