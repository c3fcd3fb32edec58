from __future__ import annotations

import pytest
import torch

from kernels.align import dynamic_gating
from kernels.grouped_ffn import grouped_swiglu
from kernels.reference import grouped_swiglu_ref
from kernels.static_gating import static_capacity_gating
from kernels.tuning import FfnConfig
from sim.common.errors import ConfigError

#: stated tolerances (outputs are O(1)): fp32 IEEE dots; fp16/bf16 one intermediate rounding apart
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 3e-2)}
CFG = FfnConfig(block_m=16, block_n=32, block_k=16, num_warps=4, num_stages=2)


def weights(gen, S, H, N, dtype):
    w13 = (torch.randn(S, 2 * N, H, generator=gen) / H**0.5).to(dtype)  # (S, 2N, H)
    w2 = (torch.randn(S, H, N, generator=gen) / N**0.5).to(dtype)  # (S, H, N)
    return w13, w2


def valid_rows(align, n):
    total = int(align.num_tokens_post_padded[0])
    rows = torch.arange(total)
    return rows[align.sorted_token_ids[:total] < n]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(dtype, gen, make_ids):
    T, E, K, H, N = 11, 4, 2, 32, 48
    x = torch.randn(T, H, generator=gen).to(dtype)
    w13, w2 = weights(gen, E, H, N, dtype)
    ids = make_ids(T, E, K)
    align = dynamic_gating(ids, 16, E)
    slot = torch.arange(E, dtype=torch.int32)
    y = grouped_swiglu(x, w13, w2, slot, align, K, 16, CFG)
    ref = grouped_swiglu_ref(x, w13, w2, slot, align, K)
    rows = valid_rows(align, T * K)
    assert y.dtype == dtype and y.shape == (align.sorted_token_ids.numel(), H)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y[rows].float(), ref[rows].float(), atol=atol, rtol=rtol)
    assert ref[rows].abs().max() > 0.1  # the comparison is not of zeros


def test_slot_table_and_non_resident_expert_never_read(gen, make_ids):
    """Experts live in arbitrary slots; unused slots hold NaN; expert 2 has no slot (-1)."""
    T, E, K, H, N, S = 9, 4, 2, 16, 32, 6
    x = torch.randn(T, H, generator=gen)
    w13, w2 = weights(gen, S, H, N, torch.float32)
    slot = torch.tensor([4, 0, -1, 2], dtype=torch.int32)
    for s in (1, 3, 5):  # slots that no expert maps to
        w13[s] = float("nan")
        w2[s] = float("nan")
    ids = make_ids(T, E, K)
    assert bool((ids == 2).any())
    align = dynamic_gating(ids, 16, E)
    y = grouped_swiglu(x, w13, w2, slot, align, K, 16, CFG)
    rows = valid_rows(align, T * K)
    assert not torch.isnan(y[rows]).any()
    torch.testing.assert_close(y[rows], grouped_swiglu_ref(x, w13, w2, slot, align, K)[rows],
                               atol=1e-4, rtol=1e-4)
    off = align.expert_offsets
    assert bool((y[int(off[2]):int(off[3])] == 0).all())  # non-resident expert's rows are zero


def test_static_alignment_expert_without_tokens_and_single_token(gen):
    H, N, E, K = 16, 32, 4, 2
    w13, w2 = weights(gen, E, H, N, torch.float32)
    slot = torch.arange(E)
    for ids in (torch.tensor([[0, 3]], dtype=torch.int32),  # T = 1; experts 1, 2 get nothing
                torch.tensor([[1, 0]] * 6, dtype=torch.int32)):  # all first choices to one expert
        T = ids.shape[0]
        x = torch.randn(T, H, generator=gen)
        for align in (dynamic_gating(ids, 16, E), static_capacity_gating(ids, E, 1.0, 16)):
            y = grouped_swiglu(x, w13, w2, slot, align, K, 16, CFG)
            rows = valid_rows(align, T * K)
            torch.testing.assert_close(y[rows], grouped_swiglu_ref(x, w13, w2, slot, align, K)[rows],
                                       atol=1e-4, rtol=1e-4)


def test_bad_input(gen):
    x = torch.randn(3, 16)
    w13, w2 = weights(gen, 2, 16, 32, torch.float32)
    align = dynamic_gating(torch.zeros(3, 1, dtype=torch.int32), 16, 2)
    slot = torch.arange(2)
    with pytest.raises(ConfigError, match="w2 must be"):
        grouped_swiglu(x, w13, w2[:, :, :8], slot, align, 1, 16)
    with pytest.raises(ConfigError, match="weights must be"):
        grouped_swiglu(x, w13.half(), w2.half(), slot, align, 1, 16)
    with pytest.raises(ConfigError, match="block_size"):
        grouped_swiglu(x, w13, w2, slot, align, 1, 12)
    with pytest.raises(ConfigError, match="another block_size"):
        grouped_swiglu(x, w13, w2, slot, dynamic_gating(torch.zeros(3, 1, dtype=torch.int32), 64, 2), 1, 16)
