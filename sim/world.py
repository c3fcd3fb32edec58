"""Facts the three drivers share, each written once: the simulator (``moesim sim``), the cache
replay (``moesim cache``) and realrun import them from here and never re-derive them.

- :func:`cache_slots`: how many experts a cache holds for a fraction of a set of experts.
- :func:`expert_bytes` / :func:`model_for_trace`: an expert's bytes for a model config, and the
  model config a routing trace's model name stands for (``conf/model/*.yaml``).
- :class:`CacheCounts`: the one cache-counts record; every driver's ``metrics.json`` carries
  :meth:`CacheCounts.record`'s fields under the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from sim.config import ModelConfig, expert_bytes
from sim.errors import ConfigError

__all__ = ["CacheCounts", "cache_slots", "expert_bytes", "model_for_trace", "model_named",
           "known_models", "stable_float"]


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


# ------------------------------------------------------------------------------------------------
# the cache-counts record
# ------------------------------------------------------------------------------------------------
@dataclass
class CacheCounts:
    """What a cache did, counted the same way by every driver.

    ``hits + misses + rerouted = accesses``: an access is one expert a step needed. A miss loads
    the expert; ``streamed`` of the misses were not kept (the step needed more experts than the
    cache has slots, so they passed through a staging buffer). ``prefetched`` experts were loaded
    ahead of need. ``rerouted`` choices (eMoE's rerouting) were served by another resident expert
    with no load. Loads = misses + prefetched; ``h2d_bytes`` = loads x expert bytes.
    """

    hits: int = 0
    misses: int = 0
    streamed: int = 0
    evictions: int = 0
    prefetched: int = 0
    rerouted: int = 0

    @property
    def accesses(self) -> int:
        return self.hits + self.misses + self.rerouted

    @property
    def loads(self) -> int:
        return self.misses + self.prefetched

    @property
    def hit_rate(self) -> float:
        """hits / accesses (1.0 when nothing was accessed: nothing missed)."""
        n = self.accesses
        return self.hits / n if n else 1.0

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
            "accesses": int(self.accesses), "hits": int(self.hits), "misses": int(self.misses),
            "hit_rate": stable_float(self.hit_rate), "rerouted": int(self.rerouted),
            "streamed": int(self.streamed), "evictions": int(self.evictions),
            "prefetched": int(self.prefetched), "loads": int(self.loads),
            "h2d_bytes": int(self.loads * int(expert_bytes)),
        }


#: the field names of :meth:`CacheCounts.record`, in order
COUNT_FIELDS = ("accesses", "hits", "misses", "hit_rate", "rerouted", "streamed", "evictions",
                "prefetched", "loads", "h2d_bytes")
