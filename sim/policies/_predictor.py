"""What a request predictor is and what of its prediction a cache keeps: two facts the simulator
(:mod:`sim.engine.simulation`, :mod:`sim.serving.prediction`) and the cache replay
(:mod:`sim.replay.cache`) both need, written once here.

- :func:`request_predictor`: the policy that names a new request's experts. The prefetch policy
  when it plans requests; else, for a cache that keeps a predicted set (``uses_prediction``:
  eMoE's ``keep_predicted``), eMoE-A, whose predictions eMoE's cache keeps; else none.
- :func:`fit_predicted`: the predicted set that fits a cache's slots: the predicted experts taken
  rank by rank across layers (every layer's first, then every layer's second, ...) up to the
  slots. With one layer (the replay's one cache per layer) it is the layer's first ``slots``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sim.policies.base import CACHE, PREFETCH, PrefetchPolicy

#: the request predictor of a cache that keeps a predicted set when the prefetch policy plans none
FALLBACK_PREDICTOR = "emoe_a"


def request_predictor(cache_name: str, prefetch: PrefetchPolicy | None, dims: Mapping[str, int],
                      **fallback_args: Any) -> PrefetchPolicy | None:
    """The request predictor for cache policy ``cache_name`` beside ``prefetch`` (None: no
    prefetch policy): ``prefetch`` itself when it plans requests, else a new eMoE-A (``dims``:
    ``num_layers``, ``num_experts``, ``top_k``; ``fallback_args`` its arguments) when the cache
    keeps a predicted set, else None."""
    if prefetch is not None and type(prefetch).plans_requests:
        return prefetch
    if CACHE.get(cache_name).uses_prediction:  # eMoE's cache keeps what eMoE-A predicts
        return PREFETCH.make(FALLBACK_PREDICTOR, **dims, **fallback_args)
    return None


def fit_predicted(per_layer: Sequence[Sequence[int]], slots: int) -> list[int]:
    """The predicted keys that fit ``slots``: ``per_layer[i]`` the predicted keys of the i-th
    layer a cache holds (most expected first), taken rank by rank across the layers (every
    layer's first, then every layer's second, ...) until ``slots`` are taken."""
    out: list[int] = []
    depth = max((len(k) for k in per_layer), default=0)
    for rank in range(depth):
        for keys in per_layer:
            if rank < len(keys):
                if len(out) >= slots:
                    return out
                out.append(keys[rank])
    return out
