"""The accuracy dial: perfect next-layer prediction corrupted to a configured recall and
precision. At ``recall = precision = 1`` it is ``perfect`` exactly; below, it answers "what
accuracy buys what hit rate, stall and bytes" before anyone builds a predictor.

From the true set S of layer l+1's experts (the token's in the replay, the batch's union in the
simulator; see :mod:`sim.policies.prefetch._oracle`), with s = |S| and E experts per layer:

- kept = ``floor(recall * s + u1)`` true experts (stochastic rounding: E[kept] = recall * s):
  the ones with the smallest keys h(expert, "keep");
- false = ``floor(kept * (1 - precision) / precision + u2)`` experts outside S, capped at E - s:
  the ones with the smallest keys h(expert, "add"); so E[false] = kept (1 - p) / p and the
  ratio of sums kept / predicted over many steps tends to the precision (less where the cap
  binds: a precision below s / E cannot be reached);
- returns kept + false, sorted.

u1, u2 and h are a counter-based hash (splitmix64) of (seed, layer, the step's key, expert): the
step's key is the token in the replay, the batch's (first pool row, size) in the simulator. No
generator state is carried between calls, so the output depends only on the seed and the step,
never on the order of calls, and the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext
from sim.policies.prefetch._oracle import TraceOracle

_M1, _M2, _G = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def step_hash(seed: int, layer: int, key: tuple[int, int], slots: np.ndarray) -> np.ndarray:
    """(n,) uint64 hashes of (seed, layer, key, slot) for each slot id."""
    h = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    for part in (layer, key[0] & 0xFFFFFFFFFFFFFFFF, key[1] & 0xFFFFFFFFFFFFFFFF):
        h = _mix(h ^ (np.array([part], dtype=np.uint64) + _G))
    return _mix(h ^ (np.asarray(slots, dtype=np.uint64) * _G))


def corrupt(true_ids: np.ndarray, num_experts: int, recall: float, precision: float, seed: int,
            layer: int, key: tuple[int, int]) -> np.ndarray:
    """A noisy copy of the sorted expert ids ``true_ids`` (see the module doc), sorted int64."""
    S = np.asarray(true_ids, dtype=np.int64)
    s, E = len(S), num_experts
    h = step_hash(seed, layer, key, np.arange(2 * E + 2))  # keep keys, add keys, u1, u2
    u = (h[2 * E:] >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # (2,) in [0, 1)
    kept_n = min(s, int(np.floor(recall * s + u[0])))
    kept = S[np.argsort(h[S], kind="stable")[:kept_n]]
    false_n = 0
    if kept_n and precision < 1.0:
        false_n = min(E - s, int(np.floor(kept_n * (1.0 - precision) / precision + u[1])))
    if false_n:
        others = np.setdiff1d(np.arange(E, dtype=np.int64), S, assume_unique=True)
        false = others[np.argsort(h[E + others], kind="stable")[:false_n]]
        kept = np.concatenate([kept, false])
    return np.sort(kept)


def corrupt_layers(truth: np.ndarray, recall: float, precision: float, seed: int,
                   layers: np.ndarray, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`corrupt` of each row of ``truth`` (n, E) bool (row i: the true set of layer
    ``layers[i]``) at once: ``(ranked, count)``, row i's answer ``ranked[i, :count[i]]``. The
    same hashes (wrapping uint64 arithmetic, elementwise), the same float operations per row,
    and the same picks: the kept true experts are the ones with the smallest keep keys, ties
    by id (``corrupt``'s stable sort of the sorted true ids), as a lexicographic sort by
    (outside the set, key, id); the false ones alike among the others. The false count is
    capped at E - s before it is made an integer (a tiny precision's count is past what an
    int64 holds: cast first, it came out -2**63, no false expert)."""
    t = np.asarray(truth, dtype=bool)
    n, E = t.shape
    h = np.full(n, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    parts = (np.asarray(layers, dtype=np.uint64),
             np.full(n, key[0] & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64),
             np.full(n, key[1] & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
    for part in parts:
        h = _mix(h ^ (part + _G))
    hs = _mix(h[:, None] ^ (np.arange(2 * E + 2, dtype=np.uint64)[None, :] * _G))  # (n, 2E+2)
    u = (hs[:, 2 * E:] >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # (n, 2)
    s = t.sum(axis=1)
    kept_n = np.minimum(s, np.floor(recall * s + u[:, 0]).astype(np.int64))
    ids = np.broadcast_to(np.arange(E), (n, E))
    pick = np.zeros((n, E), dtype=bool)
    rows = np.arange(n)[:, None]
    order = np.lexsort((ids, hs[:, :E], ~t), axis=-1)  # the true ids first, by key then id
    pick[rows, order] = np.arange(E)[None, :] < kept_n[:, None]
    if precision < 1.0:
        false_n = np.where(kept_n > 0, np.minimum(
            E - s, np.floor(kept_n * (1.0 - precision) / precision + u[:, 1])).astype(np.int64), 0)
        order = np.lexsort((ids, hs[:, E:2 * E], t), axis=-1)  # the others first
        pick[rows, order] |= np.arange(E)[None, :] < false_n[:, None]
    return np.argsort(~pick, axis=1, kind="stable"), pick.sum(axis=1)


@dataclass(frozen=True)
class NoisyOracleConfig:
    recall: float = 1.0  # expected share of the true next-layer experts predicted
    precision: float = 1.0  # expected share of the predicted experts that are true
    seed: int = 0


@PREFETCH.register("noisy_oracle")
class NoisyOracle(TraceOracle):
    Config = NoisyOracleConfig
    predicts_next_layer = True
    batch_rows = True

    def setup(self) -> None:
        super().setup()
        r, p = float(self.cfg.recall), float(self.cfg.precision)
        if not 0.0 <= r <= 1.0:
            raise ConfigError(f"noisy_oracle: recall={r}; expected 0 <= recall <= 1")
        if not 0.0 < p <= 1.0:
            raise ConfigError(f"noisy_oracle: precision={p}; expected 0 < precision <= 1")
        self.recall, self.precision, self.seed = r, p, int(self.cfg.seed)

    def next_layers(self, ctx: PrefetchContext, used: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """In a simulator's batch (see the base class): each layer's :meth:`next_layer` from the
        driver's ``used``, the batch's truth (see ``perfect``); no state is read or left (the
        hash depends only on the seed and the step). None outside a simulator's batch."""
        if self._batch is None or "token" in ctx.extra:
            return None
        L, E = self.num_layers, self.num_experts
        u = np.asarray(used, dtype=bool).reshape(L, E)
        ranked = np.zeros((L, E), dtype=np.int64)
        n = np.zeros(L, dtype=np.int64)
        if L > 1:
            if self.recall == 1.0 and self.precision == 1.0:
                ranked[:-1] = np.argsort(~u[1:], axis=1, kind="stable")
                n[:-1] = u[1:].sum(axis=1)
            else:
                rows = self._batch
                key = (int(rows[0]) if len(rows) else 0, len(rows))
                ranked[:-1], n[:-1] = corrupt_layers(u[1:], self.recall, self.precision,
                                                     self.seed, np.arange(1, L), key)
        return ranked, n

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        if layer + 1 >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        truth, key = self._truth_next(ctx, layer)
        if self.recall == 1.0 and self.precision == 1.0:
            return truth
        return corrupt(truth, self.num_experts, self.recall, self.precision, self.seed, layer + 1, key)
