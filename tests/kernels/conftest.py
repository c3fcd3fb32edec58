"""Kernel tests run Triton's interpreter on the CPU: TRITON_INTERPRET=1 must be set before any
kernel module is imported (triton.jit picks the interpreter at decoration time)."""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

# A kernel module imported earlier in this process without the interpreter (another test package)
# would hold compiled-for-GPU kernels; drop it so that the tests below re-import it interpreted.
for _name in [m for m in sys.modules if m.startswith("kernels.")]:
    del sys.modules[_name]

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def make_logits(gen):
    return lambda T, E: distinct_logits(gen, T, E)


@pytest.fixture
def make_ids(gen):
    return lambda T, E, K, avoid=(): random_topk_ids(gen, T, E, K, avoid)


def distinct_logits(gen: torch.Generator, T: int, E: int) -> torch.Tensor:
    """(T, E) logits whose entries in a row are distinct and far apart (no rounding ties)."""
    return torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).float() / E * 8 - 4


def random_topk_ids(gen: torch.Generator, T: int, E: int, K: int,
                    avoid: tuple[int, ...] = ()) -> torch.Tensor:
    """(T, K) int32, K distinct experts per token, never one of ``avoid``."""
    allowed = torch.tensor([e for e in range(E) if e not in avoid])
    rows = [allowed[torch.randperm(allowed.numel(), generator=gen)[:K]] for _ in range(T)]
    return torch.stack(rows).to(torch.int32)
