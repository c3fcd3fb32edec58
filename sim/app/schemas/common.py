"""What every app's schema shares: the trace file and request-limit nodes, and the two helpers each
command calls, :func:`app_config` (a composed node -> its schema's instance) and
:func:`limit_requests` (``workload.max_requests``).

One vocabulary: the simulator's keys (:mod:`sim.world.config`) name each idea everywhere
(``policy.cache``, ``policy.prefetch``, ``policy.placement``, ``policy.scheduler``,
``cluster.expert_budget_fraction``, ``workload.max_requests``, ``model.dtype`` spelled
bf16/fp16/fp32); an app that compares a list of them in one run takes the plural of the same key
(``policy.caches``, ``cluster.expert_budget_fractions``, ``policy.placements``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from sim.common.errors import ConfigError
from sim.world.ranges import COUNT_OR_ALL, ranges


@dataclass
class TraceFileConfig:
    """A routing trace to read: ``path`` (``moesim trace import``)."""

    path: str = MISSING


@ranges(
    max_requests=COUNT_OR_ALL)
@dataclass
class RequestLimitConfig:
    """``workload.max_requests``: the first N requests (prompts) of the trace only (0: all)."""

    max_requests: int = 0


def app_config(cfg: Any, schema: type) -> Any:
    """A composed config node (or an instance already) -> an instance of ``schema``."""
    if isinstance(cfg, schema):
        return cfg
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        raise ConfigError(f"expected a {schema.__name__} config, got {type(obj).__name__}")
    return obj


def limit_requests(trace: Any, n: int, key: str = "workload.max_requests") -> Any:
    """``trace`` cut to its first ``n`` requests (``n = 0``: all of it); a negative ``n`` is an
    error naming ``key``."""
    if n < 0:
        raise ConfigError(f"{key}={n}; expected N >= 1, or 0 for all requests")
    return trace.select_requests(trace.request_ids()[:n]) if n else trace


def check_budget_slots(fractions: list[float], experts: int, key: str) -> None:
    """Each budget fraction (of a layer's ``experts``) must give the cache at least one slot
    (slots = floor(fraction x experts), :func:`sim.world.facts.cache_slots`)."""
    from sim.world.facts import cache_slots

    for i, f in enumerate(fractions):
        if cache_slots(f, experts, key) == 0:
            where = f"{key}[{i}]" if len(fractions) > 1 or key.endswith("s") else key
            raise ConfigError(f"{where}={f} gives a layer's cache 0 of its {experts} experts; "
                              f"expected a fraction in [1/{experts} = {1 / experts:.6g}, 1] "
                              f"(at least one slot)")


def check_model_matches(model: Any, layers: int, experts: int, top_k: int, path: Any) -> None:
    """``model=NAME`` chooses the expert bytes of a trace's replay; its shape (MoE layers x routed
    experts x top-k) must be the trace's, or every figure would be priced for another model."""
    if model is None:
        return
    mine = (model.num_layers, model.num_experts, model.top_k)
    if mine != (layers, experts, top_k):
        raise ConfigError(
            f"model={model.name} has {mine[0]} layers x {mine[1]} experts x top-{mine[2]}, the trace "
            f"{path} has {layers} x {experts} x top-{top_k}; omit model= (the trace's own model) or "
            f"choose one of the same shape")


def trace_shape(path: Any) -> tuple[int, int, int] | None:
    """(MoE layers, experts, top-k) from a routing trace's or load table's metadata, read before
    the trace itself (checks come before the work); None when the file does not say (the trace
    reader then names what is wrong)."""
    from traces.format import read_meta

    meta = read_meta(path)
    try:
        return int(meta["num_layers"]), int(meta["num_experts"]), int(meta.get("top_k") or 0)
    except (KeyError, TypeError, ValueError):
        return None
