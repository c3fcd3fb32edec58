from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.align import dynamic_gating, moe_align_block_size
from kernels.reference import AlignResult, dynamic_gating_ref, moe_align_block_size_ref
from sim.common.errors import ConfigError

FIELDS = list(AlignResult.__dataclass_fields__)


def assert_same(a: AlignResult, b: AlignResult) -> None:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, f
        assert torch.equal(x, y), f


def check_vllm_contract(topk_ids: torch.Tensor, block_size: int, E: int, r: AlignResult) -> None:
    """The invariants of vLLM's moe_align_block_size, independent of the reference."""
    T, K = topk_ids.shape
    n = T * K
    flat = topk_ids.reshape(-1).long()
    total = int(r.num_tokens_post_padded[0])
    s = r.sorted_token_ids.long()
    assert s.numel() == n + E * (block_size - 1)
    assert total % block_size == 0 and total <= s.numel()
    assert bool((s[total:] == n).all())
    real = s[:total][s[:total] < n]
    assert sorted(real.tolist()) == list(range(n))  # every slot exactly once, none dropped
    counts = torch.bincount(flat, minlength=E)
    assert total == int(((counts + block_size - 1) // block_size * block_size).sum())  # padding minimal
    blocks = r.expert_ids[: total // block_size].long()
    assert bool((r.expert_ids[total // block_size:] == -1).all())
    for b in range(total // block_size):
        rows = s[b * block_size:(b + 1) * block_size]
        rows = rows[rows < n]
        assert bool((flat[rows] == blocks[b]).all())
    assert torch.equal(s[r.inv.long()], torch.arange(n))


def test_vllm_docstring_example():
    ids = torch.tensor([[1, 2, 3], [0, 1, 3], [0, 2, 3], [0, 1, 2]], dtype=torch.int32)
    sorted_ids, expert_ids, total = moe_align_block_size(ids, 4, 4)
    assert sorted_ids.tolist() == [3, 6, 9, 12, 0, 4, 10, 12, 1, 7, 11, 12, 2, 5, 8, 12] + [12] * 8
    assert expert_ids.tolist() == [0, 1, 2, 3, -1, -1]
    assert total.tolist() == [16] and total.dtype == torch.int32
    r = dynamic_gating(ids, 4, 4)
    assert r.inv.tolist() == [4, 8, 12, 0, 5, 13, 1, 9, 14, 2, 6, 10]
    for a, b in zip(moe_align_block_size(ids, 4, 4), moe_align_block_size_ref(ids, 4, 4)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "T,E,K,B,avoid",
    [
        (1, 4, 1, 16, ()),  # T = 1
        (37, 8, 2, 16, ()),  # Mixtral-like
        (29, 8, 2, 4, (3, 5)),  # experts with no tokens
        (20, 256, 8, 16, ()),  # E = 256, top_k = 8
        (70, 64, 6, 32, ()),  # DeepSeek-V2-Lite-like, more than one chunk
    ],
)
def test_matches_reference(T, E, K, B, avoid, make_ids):
    ids = make_ids(T, E, K, avoid)
    r = dynamic_gating(ids, B, E)
    assert_same(r, dynamic_gating_ref(ids, B, E))
    check_vllm_contract(ids, B, E, r)
    for e in avoid:
        assert int(r.expert_counts[e]) == 0 and not bool((r.expert_ids == e).any())


def test_all_tokens_to_one_expert_int64_ids():
    ids = torch.full((150, 1), 2, dtype=torch.int64)
    r = dynamic_gating(ids, 16, 4)
    assert_same(r, dynamic_gating_ref(ids, 16, 4))
    assert r.expert_counts.tolist() == [0, 0, 150, 0]
    assert int(r.num_tokens_post_padded[0]) == 160
    assert r.sorted_token_ids[:150].tolist() == list(range(150))  # flat order kept inside a segment


def test_determinism_rerun(make_ids):
    ids = make_ids(90, 16, 4)
    a, b = dynamic_gating(ids, 16, 16), dynamic_gating(ids.clone(), 16, 16)
    assert_same(a, b)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 3), st.sampled_from([1, 4, 16]), st.data())
def test_property_random(T, E, K, B, data):
    K = min(K, E)
    flat = data.draw(st.lists(st.integers(0, E - 1), min_size=T * K, max_size=T * K))
    ids = torch.tensor(flat, dtype=torch.int32).view(T, K)  # repeats within a token allowed
    r = dynamic_gating(ids, B, E)
    assert_same(r, dynamic_gating_ref(ids, B, E))
    check_vllm_contract(ids, B, E, r)


def test_bad_input():
    with pytest.raises(ConfigError, match="topk_ids"):
        dynamic_gating(torch.zeros(4, dtype=torch.int32), 16, 4)
    with pytest.raises(ConfigError, match="int32 or int64"):
        dynamic_gating(torch.zeros(2, 2), 16, 4)
    with pytest.raises(ConfigError, match="block_size"):
        dynamic_gating(torch.zeros(2, 2, dtype=torch.int32), 0, 4)


def test_more_than_1024_chunks_matches_reference():
    """Above 65,536 slots (1,024 chunks of 64) the per-expert scan over chunks takes a second
    pass: its running sum must carry over (the largest case above has 420 slots)."""
    from kernels.align import CHUNK

    T, K, E = 16_500, 4, 8
    g = torch.Generator().manual_seed(7)
    ids = torch.argsort(torch.rand(T, E, generator=g), dim=1)[:, :K].to(torch.int32)  # (T, K) distinct
    assert T * K > 1024 * CHUNK
    r = dynamic_gating(ids, 16, E)
    assert_same(r, dynamic_gating_ref(ids, 16, E))
    assert r.expert_counts.tolist() == torch.bincount(ids.reshape(-1).long(), minlength=E).tolist()
    assert torch.equal(r.sorted_token_ids[r.inv.long()], torch.arange(T * K, dtype=torch.int32))


def test_bad_input_messages_and_the_empty_case():
    with pytest.raises(ConfigError, match=r"^dynamic_gating: topk_ids must be \(T, K\), got shape \(4,\)$"):
        dynamic_gating(torch.zeros(4, dtype=torch.int32), 16, 4)
    with pytest.raises(ConfigError, match="^dynamic_gating: topk_ids must be int32 or int64, got "
                                          "torch.float32$"):
        dynamic_gating(torch.zeros(2, 2), 16, 4)
    with pytest.raises(ConfigError, match="^dynamic_gating: num_experts must be >= 1, got 0$"):
        dynamic_gating(torch.zeros(2, 2, dtype=torch.int32), 16, 0)
    with pytest.raises(ConfigError, match="^dynamic_gating: block_size must be >= 1, got 0$"):
        dynamic_gating(torch.zeros(2, 2, dtype=torch.int32), 0, 4)
    r = dynamic_gating(torch.zeros(2, 2, dtype=torch.int32), 1, 1)  # block_size 1: no padding
    assert r.sorted_token_ids.tolist() == [0, 1, 2, 3] and r.expert_ids.tolist() == [0, 0, 0, 0]
    assert int(r.num_tokens_post_padded[0]) == 4
    big = torch.zeros(1, dtype=torch.int32).as_strided((2**31 - 1, 1), (0, 0))  # no memory
    with pytest.raises(ConfigError, match=r"^dynamic_gating: T\*K=2147483647 does not fit int32 slot ids$"):
        dynamic_gating(big, 16, 4)  # 2**31 - 1 itself is the sentinel: refused
    # no tokens: every output empty or sentinel, nothing launched
    e = dynamic_gating(torch.zeros((0, 2), dtype=torch.int64), 4, 3)
    assert e.sorted_token_ids.tolist() == [0] * 9 and e.expert_ids.tolist() == [-1, -1, -1]
    assert e.num_tokens_post_padded.tolist() == [0] and e.expert_counts.tolist() == [0, 0, 0]
    assert e.expert_offsets.tolist() == [0, 0, 0, 0] and e.inv.numel() == 0
    assert int(e.num_dropped) == 0 and e.num_dropped.dtype == torch.int64
    assert_same(e, dynamic_gating_ref(torch.zeros((0, 2), dtype=torch.int64), 4, 3))
