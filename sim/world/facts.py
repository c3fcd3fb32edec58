"""Facts the three drivers share, each written once: the simulator (``moesim sim``), the cache
replay (``moesim cache``) and realrun import them from here and never re-derive them.

- :func:`cache_slots`: how many experts a cache holds for a fraction of a set of experts.
- :func:`model_for_trace` / :func:`expert_bytes_of_trace`: the model config a routing trace's
  model name stands for (``conf/model/*.yaml``) and the bytes a trace's experts weigh (an
  expert's bytes for a model config: :func:`sim.world.model.expert_bytes`).
- :func:`batch_executions`: how a batch runs its experts through a cache (Huang et al.'s batch
  setting), the one semantics of ``moesim cache mode=batch`` and realrun.
- :class:`CacheCounts`: the one cache-counts record; every driver's ``metrics.json`` carries
  :meth:`CacheCounts.record`'s fields under the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from sim.common.errors import ConfigError
from sim.world.config import ModelConfig
from sim.world.model import expert_bytes

__all__ = ["CacheCounts", "batch_executions", "cache_slots", "expert_bytes_of_trace",
           "known_models", "model_for_trace", "model_named", "stable_float"]


def cache_slots(fraction: float, experts: int, key: str = "capacity fraction") -> int:
    """Slots of a cache given ``fraction`` of ``experts``: ``floor(fraction x experts)``.

    Rounding down keeps a budget a budget: a cache never holds more than the fraction it was
    given (the 1e-9 absorbs binary representation, so 0.29 x 100 is 29, not 28). ``fraction``
    must lie in [0, 1]; ``key`` names the config key in the error."""
    f = float(fraction)
    if not 0.0 <= f <= 1.0 or math.isnan(f):
        raise ConfigError(f"{key}={fraction}; expected a fraction in [0, 1] of the experts")
    if experts < 0:
        raise ConfigError(f"{key}: a negative number of experts ({experts})")
    return min(int(experts), int(math.floor(f * experts + 1e-9)))


def stable_float(x: Any) -> float:
    """Round to 12 significant digits: stable JSON across numpy versions' repr."""
    return float(f"{float(x):.12g}")


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def _model_files() -> dict[str, Any]:
    from importlib.resources import files

    return {p.name[:-5]: p for p in files("conf").joinpath("model").iterdir()
            if p.name.endswith(".yaml")}


def known_models() -> list[str]:
    """Names of the model configs shipped in ``conf/model``."""
    return sorted(_model_files())


def model_named(name: str) -> ModelConfig:
    """The shipped model config ``conf/model/<name>.yaml`` as a :class:`ModelConfig`."""
    from omegaconf import OmegaConf

    paths = _model_files()
    if name not in paths:
        raise ConfigError(f"model={name!r}: no such model config; known: {', '.join(sorted(paths))}")
    node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(str(paths[name])))
    return OmegaConf.to_object(node)  # type: ignore[return-value]


def model_for_trace(trace_model: str) -> ModelConfig:
    """The model config a trace's model name stands for: the shipped config whose name is the
    longest prefix of the trace's (lower case, without an ``org/`` part), so that
    ``deepseek-ai/DeepSeek-V2-Lite-Chat`` is ``deepseek-v2-lite``."""
    name = trace_model.lower().rsplit("/", 1)[-1]
    best = max((m for m in known_models() if name.startswith(m)), key=len, default=None)
    if best is None:
        raise ConfigError(f"no model config matches the trace's model {trace_model!r} (known: "
                          f"{', '.join(known_models())}); give model=NAME or expert_bytes=N")
    return model_named(best)


def expert_bytes_of_trace(meta: Any, model: str | ModelConfig | None = None,
                          override: int | None = None) -> int:
    """Bytes of one routed expert of a routing trace's model: ``override`` if given, else the
    model config ``model`` (a name in ``conf/model`` or a config), else what a capture recorded
    (``meta.extra["expert_bytes"]``), else the config the trace's model name stands for."""
    if override is not None:
        if int(override) <= 0:
            raise ConfigError(f"expert_bytes={override}; expected a positive number of bytes")
        return int(override)
    if model is not None:
        return expert_bytes(model_named(model) if isinstance(model, str) else model)
    recorded = (getattr(meta, "extra", None) or {}).get("expert_bytes")
    if recorded:
        return int(recorded)
    return expert_bytes(model_for_trace(meta.model))


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------
def batch_executions(experts: Any, batch_size: int, num_experts: int) -> tuple[Any, Any]:
    """How a batch of tokens runs one layer's experts through a cache: Huang et al.'s batch setting.

    ``experts`` (T, K): the layer's top-k per token. Batches are ``batch_size`` consecutive
    tokens. A batch runs the union of its experts one at a time in increasing id order; each run
    is one cache step needing that one expert, with the batch's whole union as the ``active``
    set (Huang et al.'s buffering evicts experts outside it first). An executor may launch
    several runs in one kernel when none of them evicts another's weights before it ran (realrun
    does); the cache decisions, and so every count, are those of the one-at-a-time order.

    Returns ``(starts, ids)``: ``ids`` (S,) the expert of every run in order, ``starts`` (B+1,)
    where batch b's runs are ``ids[starts[b]:starts[b + 1]]``."""
    import numpy as np

    if batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size}; expected a positive number of tokens")
    ex = np.asarray(experts)
    T = len(ex)
    nb = -(-T // batch_size)
    need = np.zeros((nb * batch_size, num_experts), dtype=bool)  # (B*bs, E)
    need[np.repeat(np.arange(T), ex.shape[1]), ex.reshape(-1)] = True
    need = need.reshape(nb, batch_size, num_experts).any(axis=1)  # (B, E)
    _, ids = np.nonzero(need)  # runs in batch order, increasing id inside a batch
    starts = np.concatenate([[0], np.cumsum(need.sum(axis=1))]).astype(np.int64)
    return starts, ids.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# the cache-counts record
# ------------------------------------------------------------------------------------------------
@dataclass
class CacheCounts:
    """What a cache did, counted the same way by every driver.

    ``hits + late_prefetch_hits + misses + rerouted = accesses``: an access is one expert a step
    needed. A hit was resident and complete when needed; ``late_prefetch_hits`` were resident
    because a prefetch had started their copy, which had not landed when the layer needed them
    (the layer waited: the wait is in the simulator's ``fetch_stall_s``). Only a driver with a
    clock (the simulator) tells the two apart; the cache replay and realrun have none and count
    every resident expert a hit (``late_prefetch_hits`` 0), so their ``hits`` equal the
    simulator's ``hits + late_prefetch_hits`` on the same calls. A miss loads the expert;
    ``streamed`` of the misses were not kept (the step needed more experts than the cache could
    give slots, so they passed through a staging buffer). ``prefetched`` experts were loaded
    ahead of need; ``prefetch_skipped`` were asked for but not loaded (no victim the prefetch
    may evict). ``rerouted`` choices (eMoE's rerouting) were served by another resident expert
    with no load. Loads = misses + prefetched; ``h2d_bytes`` = loads x expert bytes.
    """

    hits: int = 0
    misses: int = 0
    streamed: int = 0
    evictions: int = 0
    prefetched: int = 0
    rerouted: int = 0
    late_prefetch_hits: int = 0
    prefetch_skipped: int = 0

    @property
    def accesses(self) -> int:
        return self.hits + self.late_prefetch_hits + self.misses + self.rerouted

    @property
    def loads(self) -> int:
        return self.misses + self.prefetched

    @property
    def resident_hits(self) -> int:
        """Accesses served by a resident expert, landed or not: the clock-free hits (the
        replay's and realrun's ``hits``)."""
        return self.hits + self.late_prefetch_hits

    @property
    def hit_rate(self) -> float:
        """hits / accesses (1.0 when nothing was accessed: nothing missed); a late prefetch is
        not a hit."""
        n = self.accesses
        return self.hits / n if n else 1.0

    def hit_was_late(self, n: int = 1) -> None:
        """``n`` of the hits counted were prefetched experts still in flight when needed (the
        simulator's timing says so after the cache counted them)."""
        self.hits -= n
        self.late_prefetch_hits += n

    def add(self, other: CacheCounts) -> CacheCounts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @classmethod
    def total(cls, parts: Any) -> CacheCounts:
        out = cls()
        for p in parts:
            out.add(p)
        return out

    def record(self, expert_bytes: int) -> dict[str, Any]:
        """The record every driver writes (same names, same order)."""
        return {
            "accesses": int(self.accesses), "hits": int(self.hits),
            "late_prefetch_hits": int(self.late_prefetch_hits), "misses": int(self.misses),
            "hit_rate": stable_float(self.hit_rate), "rerouted": int(self.rerouted),
            "streamed": int(self.streamed), "evictions": int(self.evictions),
            "prefetched": int(self.prefetched), "prefetch_skipped": int(self.prefetch_skipped),
            "loads": int(self.loads), "h2d_bytes": int(self.loads * int(expert_bytes)),
        }


#: the field names of :meth:`CacheCounts.record`, in order
COUNT_FIELDS = ("accesses", "hits", "late_prefetch_hits", "misses", "hit_rate", "rerouted",
                "streamed", "evictions", "prefetched", "prefetch_skipped", "loads", "h2d_bytes")
