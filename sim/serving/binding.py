"""Binding: which recorded (or generated) routing each simulated request replays.

A :class:`RoutingPool` holds ``experts (N, L, K)`` for N tokens, cut into *entries* (one recorded
or generated request each) with a task. Each simulated request is bound to one entry of its task
(an entry of any task when its task has none; counted as ``task_fallback``); its token at
position p (prompt tokens first, then output tokens) takes the routing of the entry's token p.

A request longer than its entry is handled by ``trace.overflow``:

- ``wrap``: position p takes the entry's token ``p mod len`` (replays the entry from its start);
- ``error``: stop with a ConfigError naming the request.

Either way ``metrics.json`` reports how many requests and tokens ran past their entry.

Without ``trace.path`` the pool is generated: ``traces.synth.sample_trace`` with the parameters
fitted to the model's real trace (``traces/params/<model>.json``), ``pool_size`` entries of
``pool_tokens`` tokens per task, from a generator seeded by ``seed`` (same seed, same pool),
cached on disk by its content address (:mod:`sim.serving.pool_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sim.common.errors import ConfigError
from sim.world.config import ModelConfig, TraceConfig
from traces.workload import WorkloadColumns

if TYPE_CHECKING:  # a cached pool and workload need neither pandas nor the trace format
    import pandas as pd

    from traces.format import RoutingTrace

OVERFLOW = ("wrap", "error")


@dataclass
class RoutingPool:
    experts: np.ndarray  # (N, L, K) int16
    offsets: np.ndarray  # (P,) int64 first token of each entry
    lengths: np.ndarray  # (P,) int64 tokens of each entry
    tasks: list[str]  # (P,) task of each entry
    source: str = ""
    by_task: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = np.asarray(self.tasks, dtype=object)
        self.by_task = {t: np.flatnonzero(tasks == t) for t in dict.fromkeys(self.tasks)}

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @classmethod
    def from_trace(cls, trace: RoutingTrace, source: str = "") -> RoutingPool:
        b = trace.request_bounds()
        return cls(experts=np.ascontiguousarray(trace.experts, dtype=np.int16),
                   offsets=b[:-1].copy(), lengths=np.diff(b), tasks=trace.request_tasks(),
                   source=source or trace.meta.source)

    @classmethod
    def concat(cls, traces: list[RoutingTrace], source: str = "") -> RoutingPool:
        pools = [cls.from_trace(t) for t in traces]
        base = np.cumsum([0] + [len(p.experts) for p in pools[:-1]])
        return cls(experts=np.concatenate([p.experts for p in pools]),
                   offsets=np.concatenate([p.offsets + o for p, o in zip(pools, base)]),
                   lengths=np.concatenate([p.lengths for p in pools]),
                   tasks=[t for p in pools for t in p.tasks], source=source)


@dataclass
class Binding:
    """Per request: the entry's first token and length, plus what was reported."""

    offset: np.ndarray  # (R,) int64
    length: np.ndarray  # (R,) int64
    entry: np.ndarray  # (R,) int64
    report: dict


def check_pool(pool: RoutingPool, model: ModelConfig, where: str) -> None:
    L, K = pool.experts.shape[1:]
    if L != model.num_layers or K != model.top_k:
        raise ConfigError(f"{where}: routing has {L} MoE layers, top-{K}; model {model.name} has "
                          f"{model.num_layers} layers, top-{model.top_k}")
    if len(pool.experts) and int(pool.experts.max()) >= model.num_experts:
        raise ConfigError(f"{where}: expert id {int(pool.experts.max())} >= model {model.name}'s "
                          f"{model.num_experts} experts")


def build_pool(model: ModelConfig, trace: TraceConfig, tasks: list[str],
               rng: np.random.Generator) -> RoutingPool:
    """The routing pool of a run: a real trace file, or the fitted generator."""
    if trace.name == "file" and not trace.path:
        raise ConfigError("trace=file needs trace.path=FILE (a routing trace from 'moesim trace "
                          "import' or 'moesim trace capture'); leave trace=synthetic for the "
                          "fitted generator")
    if trace.path:
        from sim.common.files import require_file

        require_file(trace.path, "trace.path")
        from traces.format import read_trace

        pool = RoutingPool.from_trace(read_trace(trace.path), source=trace.path)
        check_pool(pool, model, trace.path)
        return pool
    try:
        from traces.synth import sample_trace
        from traces.synth_params import load_params
    except ImportError as exc:
        raise ConfigError(f"the routing generator (traces.synth) is not available ({exc}); "
                          f"give a real routing trace with trace.path=FILE") from None
    from sim.serving.pool_cache import cached_pool, pool_key

    name = trace.generator or model.name
    params = load_params(name)

    def sample() -> RoutingPool:
        traces, labels = [], []
        for t in tasks:
            # a workload task the generator was fitted on samples that task; any other task draws
            # each entry's task by the fitted shares (the binding still files it under ``t``)
            fitted = t if t in params.tasks else None
            traces.append(sample_trace(params, trace.pool_size, trace.pool_tokens, rng, task=fitted))
            labels += [t] * trace.pool_size
        pool = RoutingPool.concat(traces, source=f"synth:{name}")
        pool.tasks = labels
        pool.__post_init__()
        return pool

    # sampled once per (parameters, tasks, sizes, seed) and read back after (sim/serving/pool_cache.py)
    key = pool_key(name, params.raw, tasks, trace.pool_size, trace.pool_tokens, rng)
    pool = cached_pool(key, rng, sample, RoutingPool)
    check_pool(pool, model, f"generator {name}")
    return pool


def bind(pool: RoutingPool, workload: pd.DataFrame | WorkloadColumns, overflow: str,
         rng: np.random.Generator) -> Binding:
    """Bind every request of ``workload`` (a table or its columns) to an entry of ``pool``
    (vectorized per task)."""
    if overflow not in OVERFLOW:
        raise ConfigError(f"trace.overflow={overflow!r}; expected one of {list(OVERFLOW)}")
    w = WorkloadColumns.of(workload)
    R = len(w)
    tasks = np.array(w.task, dtype=object)
    entry = np.empty(R, dtype=np.int64)
    all_entries = np.arange(len(pool.offsets))
    fallback = 0
    for task in sorted(set(tasks.tolist())):
        idx = np.flatnonzero(tasks == task)
        cand = pool.by_task.get(task)
        if cand is None or len(cand) == 0:
            cand = all_entries
            fallback += len(idx)
        entry[idx] = cand[rng.integers(0, len(cand), size=len(idx))]
    offset, length = pool.offsets[entry], pool.lengths[entry]
    need = w.prompt_tokens + w.output_tokens - 1
    longer = need > length
    if overflow == "error" and longer.any():
        i = int(np.flatnonzero(longer)[0])
        raise ConfigError(f"request {w.request_id[i]!r} (row {i}) needs {need[i]} tokens "
                          f"of routing, its bound trace has {length[i]} (trace.overflow=error)")
    report = {"overflow": overflow, "requests_longer_than_trace": int(longer.sum()),
              "tokens_past_trace": int(np.maximum(need - length, 0).sum()),
              "task_fallback_requests": int(fallback), "pool_entries": int(len(pool.offsets)),
              "source": pool.source}
    return Binding(offset=offset, length=length, entry=entry, report=report)
