from __future__ import annotations

import pytest
import torch

from kernels.gating import topk_gating
from kernels.reference import topk_gating_ref
from sim.common.errors import ConfigError

CASES = {
    # name: (E, K, kwargs)
    "mixtral": (8, 2, dict(scoring="softmax", renormalize=True)),
    "deepseek-v2-lite": (64, 6, dict(scoring="softmax", renormalize=False)),
    "deepseek-v2-groups": (64, 6, dict(scoring="softmax", renormalize=False, num_groups=8, topk_group=3)),
    "deepseek-v3": (256, 8, dict(scoring="sigmoid", renormalize=True, num_groups=8, topk_group=4,
                                 group_score="top2_sum", scaling_factor=2.5)),
}


def test_docstring_examples():
    ids, w = topk_gating(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
    assert ids.tolist() == [[1, 2]]
    torch.testing.assert_close(w, torch.tensor([[0.7311, 0.2689]]), atol=1e-4, rtol=0)
    bias = torch.tensor([0.0, 0.1, 0.3, 0.0])
    ids, w = topk_gating(torch.zeros(1, 4), 2, scoring="sigmoid", bias=bias, num_groups=2, topk_group=1,
                         group_score="top2_sum")
    assert ids.tolist() == [[2, 3]]
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5]]))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("T", [1, 13])
def test_matches_reference(name, T, gen, make_logits):
    E, K, kw = CASES[name]
    logits = make_logits(T, E)
    if name == "deepseek-v3":
        kw = dict(kw, bias=torch.randn(E, generator=gen) * 0.05)
    ids, w = topk_gating(logits, K, **kw)
    rids, rw = topk_gating_ref(logits, K, **kw)
    assert ids.dtype == torch.int32 and ids.shape == (T, K)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, atol=1e-6, rtol=1e-5)
    assert (ids[:, :, None] != ids[:, None, :]).sum() == T * K * (K - 1)  # distinct experts per token


def test_group_limit_restricts_choice(make_logits):
    logits = make_logits(5, 64)
    ids, _ = topk_gating(logits, 6, num_groups=8, topk_group=2)
    groups = ids // 8
    assert all(len(set(row)) <= 2 for row in groups.tolist())


def test_ties_go_to_lower_expert_and_half_precision_logits():
    logits = torch.zeros(3, 16, dtype=torch.float16)
    ids, w = topk_gating(logits, 4)
    assert ids.tolist() == [[0, 1, 2, 3]] * 3
    torch.testing.assert_close(w, torch.full((3, 4), 0.25))
    assert torch.equal(ids, topk_gating_ref(logits, 4)[0])


def test_bad_input():
    with pytest.raises(ConfigError, match="top_k"):
        topk_gating(torch.zeros(2, 4), 5)
    with pytest.raises(ConfigError, match="num_groups"):
        topk_gating(torch.zeros(2, 6), 2, num_groups=4, topk_group=1)
    with pytest.raises(ConfigError, match="shape"):
        topk_gating(torch.zeros(4), 1)
    with pytest.raises(ConfigError, match="scoring"):
        topk_gating(torch.zeros(2, 4), 1, scoring="relu")
