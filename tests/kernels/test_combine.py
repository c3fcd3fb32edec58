from __future__ import annotations

import pytest
import torch

from kernels.combine_op import combine
from kernels.reference import combine_ref
from sim.common.errors import ConfigError


def test_docstring_example():
    y = torch.arange(8, dtype=torch.float32).view(4, 2)  # (P, H)
    inv = torch.tensor([0, 2, 1, 3], dtype=torch.int32)
    w = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    out = combine(y, inv, w)
    expected = torch.stack([0.75 * y[0] + 0.25 * y[2], 0.5 * y[1] + 0.5 * y[3]])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_matches_reference_with_dropped_slots(dtype, tol, gen):
    T, K, H, P = 7, 3, 40, 32
    y = torch.randn(P, H, generator=gen).to(dtype)
    inv = torch.randperm(P, generator=gen)[: T * K].to(torch.int32)
    inv[[2, 5, 11]] = -1  # dropped by static gating
    y[0] = float("nan") if 0 not in inv.tolist() else y[0]  # an unreferenced row is never read
    w = torch.rand(T, K, generator=gen)
    out = combine(y, inv, w, block_h=16)
    ref = combine_ref(y, inv, w)
    assert out.dtype == dtype and not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def test_determinism_rerun(gen):
    y = torch.randn(64, 24, generator=gen)
    inv = torch.randperm(64, generator=gen)[:48].to(torch.int32)
    w = torch.rand(12, 4, generator=gen)
    assert torch.equal(combine(y, inv, w), combine(y.clone(), inv.clone(), w.clone()))


def test_bad_input():
    with pytest.raises(ConfigError, match="T\\*K"):
        combine(torch.zeros(4, 2), torch.zeros(3, dtype=torch.int32), torch.zeros(2, 2))


def test_public_api_names_are_the_functions():
    import kernels
    import kernels.layer  # noqa: F401 - imports every kernel module

    for name in ("combine", "topk_gating", "dynamic_gating", "grouped_swiglu", "moe_layer"):
        assert callable(getattr(kernels, name)), name
