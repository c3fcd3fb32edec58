from __future__ import annotations

import pytest
import torch

from kernels.reference import AlignResult, static_capacity, static_capacity_gating_ref
from kernels.static_gating import static_capacity_gating
from sim.common.errors import ConfigError


def assert_same(a: AlignResult, b: AlignResult) -> None:
    for f in AlignResult.__dataclass_fields__:
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_docstring_example():
    ids = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]], dtype=torch.int32)
    r = static_capacity_gating(ids, 4, 1.0, 2)
    assert r.sorted_token_ids.tolist() == [0, 2, 1, 5, 3, 8, 6, 8]
    assert r.inv.tolist() == [0, 2, 1, 4, -1, 3, 6, -1]
    assert int(r.num_dropped) == 2
    assert r.expert_ids.tolist() == [0, 1, 2, 3]
    assert_same(r, static_capacity_gating_ref(ids, 4, 1.0, 2))


@pytest.mark.parametrize("T,E,K,cf,B", [(1, 4, 1, 1.0, 16), (41, 8, 2, 1.25, 16), (30, 64, 6, 0.5, 4),
                                        (12, 256, 8, 2.0, 16)])
def test_matches_reference(T, E, K, cf, B, make_ids):
    ids = make_ids(T, E, K)
    r = static_capacity_gating(ids, E, cf, B)
    assert_same(r, static_capacity_gating_ref(ids, E, cf, B))
    cap = static_capacity(T, K, E, cf)
    counts = torch.bincount(ids.reshape(-1).long(), minlength=E)
    assert int(r.num_dropped) == int((counts - cap).clamp_min(0).sum())
    assert int((r.inv < 0).sum()) == int(r.num_dropped)
    seg = (cap + B - 1) // B * B
    assert r.sorted_token_ids.numel() == E * seg
    kept = r.inv[r.inv >= 0].long()
    assert bool((r.sorted_token_ids[kept] == torch.nonzero(r.inv >= 0).flatten().int()).all())
    assert bool((kept // seg == ids.reshape(-1)[r.inv >= 0].long()).all())  # each kept slot in its expert


def test_all_tokens_to_one_expert_drops_overflow_keeps_first_choices():
    ids = torch.tensor([[1, 0]] * 10, dtype=torch.int32)  # first choice expert 1, second expert 0
    r = static_capacity_gating(ids, 2, 0.5, 4)  # capacity = ceil(0.5 * 20 / 2) = 5
    assert int(r.num_dropped) == 10
    # tokens 0..4 keep both choices (k-major priority within each expert), tokens 5..9 lose both
    assert (r.inv.view(10, 2)[:5] >= 0).all() and (r.inv.view(10, 2)[5:] == -1).all()
    assert_same(r, static_capacity_gating_ref(ids, 2, 0.5, 4))


def test_large_capacity_drops_nothing(make_ids):
    ids = make_ids(25, 8, 2)
    r = static_capacity_gating(ids, 8, 8.0, 16)
    assert int(r.num_dropped) == 0 and bool((r.inv >= 0).all())


def test_bad_capacity_factor():
    with pytest.raises(ConfigError, match="capacity_factor"):
        static_capacity_gating(torch.zeros(2, 1, dtype=torch.int32), 2, 0.0, 16)
