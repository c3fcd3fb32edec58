"""The per-batch token split (:func:`sim.world.token_split.split_tokens`) kept over the plan's
holder pairs: (P,) tokens per (key, GPU) holding instead of a dense (L, E, G) array that is zero
off the P pairs (a large replica: 18,560 of 950,272 entries). What depends only on the placement
(each expert's holders, the replicated experts of each layer, each pair's (layer, GPU) group) is
built once per placement (:func:`pair_table`); per batch one compiled call
(:func:`sim.world.compiled_pairs.split_slots`) writes the single holders' tokens, runs
split_tokens' steps 2 and 3 as :func:`sim.world.token_split.split_replicated` does over holder
slots, and scatters the replicated experts' tokens. The pairs are in the dense array's flat
order (``np.argwhere(share > 0)``): the split per pair is the dense split at the pairs, the
same integers, and a sum over pairs in pair order adds the dense array's nonzeros in its index
order (tests/sim/world/test_compiled_pairs.py).

Shape legend: L layers, E experts, G GPUs, P holder pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.world.token_split import DEFAULT_PASSES, replicated_ids

__all__ = ["PairTable", "pair_table", "split_pairs"]


@dataclass
class PairTable:
    """What the split over pairs reads of a placement (see the module doc)."""

    share: np.ndarray  # (L, E, G) the placement's share it was built from (identity checked)
    L: int
    E: int
    G: int
    pair_key: np.ndarray  # (P,) int64 key-sorted
    pair_gpu: np.ndarray  # (P,) int64 ascending within a key
    ptr: np.ndarray  # (L*E + 1,) each key's first pair
    nrep: np.ndarray  # (L, E) int64 holders per expert
    gpus: np.ndarray  # (L, E, H) int64 their GPUs ascending (padded with -1)
    group: np.ndarray  # (P,) int64 each pair's ``layer * G + GPU``
    rep_e: np.ndarray | None  # (L, J) replicated expert ids (None: none replicated)
    rep_ok: np.ndarray | None


def pair_table(plan: Any, kern: Any) -> PairTable:
    """The :class:`PairTable` of ``plan``'s placement (``plan.share`` (L, E, G), its holder pairs
    ``plan.pair_key``, ``plan.pair_gpu``), built once and kept on the plan
    (``plan.pair_split``) while its share is the same array. ``kern``: :mod:`sim.world.compiled`."""
    tab = getattr(plan, "pair_split", None)
    if tab is not None and tab.share is plan.share:
        return tab
    share = plan.share
    L, E, G = share.shape
    hold = share > 0
    pair_key = np.ascontiguousarray(plan.pair_key, dtype=np.int64)
    pair_gpu = np.ascontiguousarray(plan.pair_gpu, dtype=np.int64)
    ref = np.argwhere(hold.reshape(L * E, G))
    if len(ref) != len(pair_key) or not (np.array_equal(ref[:, 0], pair_key)
                                         and np.array_equal(ref[:, 1], pair_gpu)):
        raise ConfigError("pair_table: the plan's pairs (pair_key, pair_gpu) are not the nonzeros "
                          "of its share in (key, GPU) order")
    gpus, nrep = kern.holders(hold)  # (the rows of holders() are the layers)
    if (nrep < 1).any():
        l, e = np.argwhere(nrep < 1)[0]
        raise ConfigError(f"pair_table: layer {l} expert {e} has no GPU")
    rep = nrep > 1
    rep_e, rep_ok = replicated_ids(rep) if rep.any() else (None, None)
    tab = PairTable(share=share, L=L, E=E, G=G, pair_key=pair_key, pair_gpu=pair_gpu,
                    ptr=np.searchsorted(pair_key, np.arange(L * E + 1)).astype(np.int64),
                    nrep=nrep, gpus=gpus, group=(pair_key // E) * G + pair_gpu,
                    rep_e=rep_e, rep_ok=rep_ok)
    plan.pair_split = tab
    return tab


def split_pairs(counts: np.ndarray, tab: PairTable, kern: Any, passes: int = DEFAULT_PASSES
                ) -> np.ndarray:
    """(P,) int64 tokens of each holder pair in a batch of ``counts`` (L, E) (or (L*E,))
    tokens per (layer, expert): ``split_tokens(counts, share > 0, passes)`` at the table's pairs
    (the compiled split's steps over holder slots in one call, the same integers). ``kern``:
    :mod:`sim.world.compiled` (its ``pairs``: :mod:`sim.world.compiled_pairs`)."""
    L, E = tab.L, tab.E
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
    if c.size != L * E:
        raise ConfigError(f"split_pairs: counts of shape {np.shape(counts)}, the placement has "
                          f"{L} layers x {E} experts")
    if passes < 1:
        raise ConfigError(f"split_pairs: passes must be >= 1, got {passes}")
    if c.size and c.min() < 0:
        raise ConfigError("split_pairs: counts must be nonnegative integers")
    kp = kern.pairs
    if tab.rep_e is None:
        return kp.single_pairs(c, tab.nrep.reshape(-1), tab.ptr, tab.pair_gpu, E, tab.G)[0]
    return kp.split_slots(c, tab.nrep, tab.ptr, tab.pair_gpu, tab.gpus, tab.rep_e, tab.rep_ok,
                          E, tab.G, passes)
