from __future__ import annotations

import pytest
import torch

from kernels.layer import moe_layer
from kernels.reference import moe_layer_ref, static_capacity_gating_ref
from kernels.tuning import FfnConfig

CFG = FfnConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2)


def layer_inputs(gen, T, E, H, N, dtype, S=None):
    S = E if S is None else S
    x = torch.randn(T, H, generator=gen).to(dtype)
    logits = torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).float() / E * 8 - 4
    w13 = (torch.randn(S, 2 * N, H, generator=gen) / H**0.5).to(dtype)
    w2 = (torch.randn(S, H, N, generator=gen) / N**0.5).to(dtype)
    return x, logits, w13, w2


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("model", ["mixtral", "deepseek"])
def test_dynamic_layer_matches_reference(dtype, tol, model, gen):
    if model == "mixtral":
        T, E, K, kw = 10, 8, 2, dict(renormalize=True)
    else:
        T, E, K, kw = 6, 16, 6, dict(renormalize=False, num_groups=4, topk_group=2)
    x, logits, w13, w2 = layer_inputs(gen, T, E, 32, 32, dtype)
    out = moe_layer(x, logits, w13, w2, K, config=CFG, **kw)
    ref = moe_layer_ref(x, logits, w13, w2, K, **kw)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def test_static_layer_without_drops_equals_dynamic_and_with_drops_equals_dropped_reference(gen):
    T, E, K = 12, 4, 2
    x, logits, w13, w2 = layer_inputs(gen, T, E, 16, 32, torch.float32)
    dyn = moe_layer(x, logits, w13, w2, K, config=CFG)
    big, a = moe_layer(x, logits, w13, w2, K, gating="static", capacity_factor=4.0, config=CFG,
                       return_align=True)
    assert int(a.num_dropped) == 0
    torch.testing.assert_close(big, dyn, atol=1e-5, rtol=1e-5)
    small, a = moe_layer(x, logits, w13, w2, K, gating="static", capacity_factor=0.5, config=CFG,
                         return_align=True)
    assert int(a.num_dropped) > 0
    # reference: the same layer where dropped (token, choice) pairs get weight 0
    from kernels.reference import _swiglu_rows, topk_gating_ref

    ids, w = topk_gating_ref(logits, K)
    keep = static_capacity_gating_ref(ids, E, 0.5, 16).inv.view(T, K) >= 0
    expected = torch.zeros(T, 16)
    for t in range(T):
        for k in range(K):
            if keep[t, k]:
                e = int(ids[t, k])
                expected[t] += w[t, k] * _swiglu_rows(x[t:t + 1], w13[e], w2[e])[0]
    torch.testing.assert_close(small, expected, atol=1e-4, rtol=1e-4)


def test_expert_cache_slots_and_determinism(gen):
    """Two experts resident in a 3-slot cache, in permuted slots; the layer reruns bit for bit."""
    T, E, K = 8, 4, 2
    x, logits, w13, w2 = layer_inputs(gen, T, E, 16, 32, torch.float32, S=3)
    slot = torch.tensor([-1, 2, 0, -1], dtype=torch.int32)
    w13[1] = float("nan")  # the free slot is never read
    w2[1] = float("nan")
    out = moe_layer(x, logits, w13, w2, K, slot, config=CFG)
    ref = moe_layer_ref(x, logits, w13, w2, K, slot)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    again = moe_layer(x.clone(), logits.clone(), w13.clone(), w2.clone(), K, slot.clone(), config=CFG)
    assert torch.equal(out, again)
