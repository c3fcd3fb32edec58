"""The replay's figures that say why, under the simulator's names (sim/engine/metrics.py
``why_metrics``) where the notion applies; analysis/explain.py's ``compare_sentence`` reads both.

The replay keeps one cache per MoE layer (``cache_scope = "per_layer"``, ``cache_slots`` = L x C
over the layers together). Its iteration is what it serves at once:

- plain mode: one token (``iteration_unit = "token"``): it touches its K distinct experts at
  each of the L layers, ``L x K`` experts, every token alike; a (token, layer) pair is over the
  slots when K > C. A step's victims are never its own keys and a layer's cache sees a token once,
  so no eviction is re-used within its token, except where a next-layer prefetch, inserted into
  layer l + 1's cache before the token reaches it, evicts an expert the token then needs there
  (counted by the caller).
- batch mode: one batch of B tokens (``iteration_unit = "batch"``): at each layer the union of
  its experts, run one at a time in increasing id order; an eviction is re-used when its victim is
  in the union and runs later in the same batch (a larger id).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.world.facts import stable_float


def why_record(distinct: np.ndarray, slots: int, over: int, pairs: int, reused: int,
               evictions: int, unit: str) -> dict[str, Any]:
    """``distinct`` (iterations,) experts each touched over all layers; ``over`` of ``pairs``
    (iteration, layer) pairs asked a layer's cache for more experts than its slots."""
    n = len(distinct)
    return {
        "cache_scope": "per_layer", "iteration_unit": unit, "cache_slots": stable_float(float(slots)),
        "distinct_experts_per_iteration": {
            "mean": stable_float(float(distinct.mean())) if n else 0.0,
            "max": int(distinct.max()) if n else 0},
        "iterations_over_slots": stable_float(over / pairs) if pairs else 0.0,
        "evictions_reused": int(reused),
        "evictions_reused_share": stable_float(reused / evictions) if evictions else 0.0,
    }


def plain_why(T: int, L: int, K: int, C: int, reused: int, evictions: int) -> dict[str, Any]:
    """Plain mode: T tokens, each touching K experts at each of L layers with C slots per layer."""
    return why_record(np.full(T, L * K), L * C, T * L if K > C else 0, T * L, reused, evictions,
                      "token")


def batch_reused(starts: np.ndarray, ids: np.ndarray, evicted: list[list[int]]) -> int:
    """Of one layer's runs (``starts``, ``ids``: :func:`sim.world.facts.batch_executions`) and the
    victims of each run (``evicted[s]``): how many victims run later in the same batch."""
    hits = [(s, v) for s, ev in enumerate(evicted) if ev for v in ev]
    if not hits:
        return 0
    s, v = np.array(hits, dtype=np.int64).T  # (n,) each: the run that evicted, its victim
    span = int(max(ids.max(), v.max())) + 1
    run_batch = np.repeat(np.arange(len(starts) - 1), np.diff(starts))  # (S,)
    key = run_batch * span + ids  # (S,) increasing: batches in order, ids increasing inside one
    want = run_batch[s] * span + v
    j = np.searchsorted(key, want)
    found = (j < len(key)) & (key[np.minimum(j, len(key) - 1)] == want)
    return int((found & (j > s)).sum())
