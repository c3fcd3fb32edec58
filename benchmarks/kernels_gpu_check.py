"""Compiled (not interpreted) Triton kernels vs the torch reference on a CUDA GPU.

    python benchmarks/kernels_gpu_check.py     # exit 0: all match; 1: a mismatch (printed); 2: no GPU

Run without TRITON_INTERPRET. tests/kernels/test_gpu.py runs it in a subprocess (the kernel tests'
conftest switches the test process to the interpreter). Shapes are larger than the interpreter
tests': Mixtral-like and DeepSeek-V2-Lite-like routing with a reduced hidden size.
"""

from __future__ import annotations

import os
import sys


def check(dev: str = "cuda") -> list[str]:
    import torch

    from kernels import reference as ref
    from kernels.align import dynamic_gating
    from kernels.combine_op import combine
    from kernels.gating import topk_gating
    from kernels.layer import moe_layer
    from kernels.static_gating import static_capacity_gating

    g = torch.Generator(device="cpu").manual_seed(0)
    bad: list[str] = []
    for name, T, E, K, kw in [("mixtral", 300, 8, 2, dict(renormalize=True)),
                              ("ds-v2-lite", 257, 64, 6, dict(renormalize=False)),
                              ("ds-v3", 64, 256, 8, dict(scoring="sigmoid", num_groups=8, topk_group=4,
                                                         group_score="top2_sum", scaling_factor=2.5))]:
        logits = (torch.stack([torch.randperm(E, generator=g) for _ in range(T)]).float() / E * 8 - 4).to(dev)
        ids, w = topk_gating(logits, K, **kw)
        rids, rw = ref.topk_gating_ref(logits, K, **kw)
        if not torch.equal(ids, rids) or not torch.allclose(w, rw, atol=1e-5, rtol=1e-5):
            bad.append(f"{name}: topk_gating differs")
        for B in (16, 64):
            a, b = dynamic_gating(ids, B, E), ref.dynamic_gating_ref(ids, B, E)
            s, sr = static_capacity_gating(ids, E, 1.0, B), ref.static_capacity_gating_ref(ids, E, 1.0, B)
            for f in ref.AlignResult.__dataclass_fields__:
                if not torch.equal(getattr(a, f), getattr(b, f)):
                    bad.append(f"{name} B={B}: dynamic_gating.{f} differs")
                if not torch.equal(getattr(s, f), getattr(sr, f)):
                    bad.append(f"{name} B={B}: static_capacity_gating.{f} differs")
        H, N = 256, 384
        for dtype, tol in [(torch.float32, 2e-3), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]:
            x = torch.randn(T, H, generator=g).to(dtype).to(dev)
            w13 = (torch.randn(E, 2 * N, H, generator=g) / H**0.5).to(dtype).to(dev)
            w2 = (torch.randn(E, H, N, generator=g) / N**0.5).to(dtype).to(dev)
            for gating in ("dynamic", "static"):
                out, al = moe_layer(x, logits, w13, w2, K, gating=gating, return_align=True, **kw)
                y = ref.grouped_swiglu_ref(x, w13, w2, torch.arange(E, device=dev), al, K)
                expected = ref.combine_ref(y, al.inv, w)
                if not torch.allclose(out.float(), expected.float(), atol=tol, rtol=tol):
                    err = (out.float() - expected.float()).abs().max().item()
                    bad.append(f"{name} {dtype} {gating}: layer differs (max abs err {err:.3g})")
            first = moe_layer(x, logits, w13, w2, K, **kw)
            if not torch.equal(first, moe_layer(x, logits, w13, w2, K, **kw)):
                bad.append(f"{name} {dtype}: layer not deterministic")
            y = torch.randn(T * K + 5, H, generator=g).to(dtype).to(dev)
            inv = a.inv % (T * K)
            if not torch.allclose(combine(y, inv, w).float(), ref.combine_ref(y, inv, w).float(),
                                  atol=tol, rtol=tol):
                bad.append(f"{name} {dtype}: combine differs")
        print(f"checked {name}")
    return bad


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels_gpu_check: unset TRITON_INTERPRET (this checks compiled kernels)", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("kernels_gpu_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    bad = check()
    for line in bad:
        print("MISMATCH", line)
    print("OK" if not bad else f"{len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
