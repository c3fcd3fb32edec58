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


@dataclass
class TraceFileConfig:
    """A routing trace to read: ``path`` (``moesim trace import``)."""

    path: str = MISSING


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
