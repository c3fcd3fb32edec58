"""No prefetch: experts are fetched on demand when a layer's gate asks for them (the baseline of
mixtral-offloading, Eliseev & Mazur 2023, before its speculative loading)."""

from __future__ import annotations

from sim.policies.base import PREFETCH, PrefetchPolicy


@PREFETCH.register("none")
class NoPrefetch(PrefetchPolicy):
    """Predicts nothing; ``on_request``, ``next_layer`` and ``observe`` are the base no-ops."""
