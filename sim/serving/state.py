"""The run state of a simulation: requests, replicas, GPUs, and the one tallies object that
:mod:`sim.engine.metrics` reads. Plain data; the rooms that change it are
:mod:`sim.serving.batching` (requests, KV), :mod:`sim.serving.walk` (caches),
:mod:`sim.serving.layer_timing` (links, GPU time),
:mod:`sim.serving.faults` and :mod:`sim.engine.simulation`.

Shape legend: R requests, L MoE layers, E experts per layer, G GPUs of a replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.policies.base import CachePolicy, PrefetchContext
from sim.serving.link import Link
from sim.world.facts import CacheCounts


@dataclass
class Requests:
    """Struct of arrays over the R requests of a run (index = arrival order)."""

    request_id: list[str]
    task: list[str]
    arrival_s: np.ndarray  # (R,) float64
    prompt: np.ndarray  # (R,) int64
    output: np.ndarray  # (R,) int64
    offset: np.ndarray  # (R,) bound routing: first token in the pool
    length: np.ndarray  # (R,) bound routing: tokens
    ctx: np.ndarray = field(init=False)  # tokens whose KV is held
    generated: np.ndarray = field(init=False)
    first_token_s: np.ndarray = field(init=False)
    finish_s: np.ndarray = field(init=False)
    replica: np.ndarray = field(init=False)
    reroutes: np.ndarray = field(init=False)
    preemptions: np.ndarray = field(init=False)
    completions: np.ndarray = field(init=False)
    processed: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        R = len(self.arrival_s)
        self.ctx = np.zeros(R, dtype=np.int64)
        self.generated = np.zeros(R, dtype=np.int64)
        self.first_token_s = np.full(R, np.nan)
        self.finish_s = np.full(R, np.nan)
        self.replica = np.full(R, -1, dtype=np.int64)
        self.reroutes = np.zeros(R, dtype=np.int64)
        self.preemptions = np.zeros(R, dtype=np.int64)
        self.completions = np.zeros(R, dtype=np.int64)
        self.processed = np.zeros(R, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass
class GpuState:
    """One GPU of a replica: its cache (None: every home expert resident), host link and tallies."""

    gpu: int  # global GPU id
    local: int  # index inside its replica
    cache: CachePolicy | None
    capacity: int  # cache slots
    link: Link
    home_mask: np.ndarray  # (L*E,) bool: the keys (layer * E + expert) this GPU holds
    #: (L,) frozenset of the keys it holds at each layer; all of them
    layer_sets: list[frozenset] = field(default_factory=list)
    all_keys: frozenset = frozenset()
    inflight: dict[int, int] = field(default_factory=dict)  # prefetched key -> link transfer id
    #: what the caches this GPU had before its current one did (a fault replaces the cache)
    retired: CacheCounts = field(default_factory=CacheCounts)
    peak_resident: int = 0
    prefetch_used: int = 0  # prefetched keys a layer used (landed or late)
    prefetch_evicted_unused: int = 0  # prefetched keys evicted before any layer used them
    stall_s: float = 0.0
    busy_s: float = 0.0
    #: why (read by sim/engine/metrics.py): iterations of its replica walked while this GPU
    #: had its cache; distinct keys its cache was asked for, summed over them and the most in
    #: one; iterations (per-layer scope: iteration-layer pairs) that asked a cache for more keys
    #: than its slots; misses on keys the same iteration had resident before (each one an
    #: eviction of a key that iteration used later); link time of per-copy overhead (bytes)
    iterations: int = 0
    keys_touched: int = 0
    keys_touched_max: int = 0
    over_slots: int = 0
    evicted_reused: int = 0
    pad_bytes: float = 0.0
    #: offloading (sim/serving/offload.py): experts computed on the host CPU and the time of the
    #: host's part of those layers (transfers + CPU compute); layer-streaming bytes copied
    cpu_experts: int = 0
    cpu_s: float = 0.0
    #: how much longer those layers took than the GPU's own experts there (max(gpu, host) - gpu)
    host_excess_s: float = 0.0
    stream_bytes: float = 0.0

    def counts(self) -> CacheCounts:
        """What this GPU's caches did over the run (the policies count; see CachePolicy)."""
        out = CacheCounts().add(self.retired)
        return out.add(self.cache.counts) if self.cache is not None else out


@dataclass
class ReplicaState:
    index: int
    gpus: list[int]
    states: list[GpuState] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    alive: bool = True
    kv_used: int = 0
    kv_peak: int = 0
    iterations: int = 0
    #: simulated time spent in its iterations (the walk's durations, summed)
    iteration_time_s: float = 0.0
    #: cache step counter (one step per layer of an iteration)
    step: int = 0
    #: the GPUs' LRU caches as arrays (:class:`sim.serving.lru_arrays.StampStore`; None: the
    #: general path)
    stamps: Any = None
    ctx: PrefetchContext = field(default_factory=PrefetchContext)
    wake: Any = None  # simpy event the serving process sleeps on
    proc: Any = None  # its simpy process

    def load(self) -> int:
        return len(self.waiting) + len(self.running)


@dataclass
class Tallies:
    """Everything a run counts besides per-request and per-GPU state; :mod:`sim.engine.metrics` reads it."""

    L: int
    E: int
    replicas: int
    gpus_per_replica: int
    computed_le: np.ndarray = field(init=False)  # (L, E) expert-token computes
    recorded_le: np.ndarray = field(init=False)  # (L, E) trace assignments
    gpu_tokens: np.ndarray = field(init=False)  # (replicas, G) expert tokens per GPU
    tokens_processed: int = 0
    tokens_recomputed: int = 0
    requests_rerouted: int = 0
    preemptions: int = 0
    completed: int = 0
    iter_imbalance_sum: float = 0.0
    iter_layers: int = 0
    last_finish_s: float = 0.0
    fault_log: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.computed_le = np.zeros((self.L, self.E), dtype=np.int64)
        self.recorded_le = np.zeros((self.L, self.E), dtype=np.int64)
        self.gpu_tokens = np.zeros((self.replicas, self.gpus_per_replica))


class Recorder:
    """Exact event log for timeline tests and the Chrome trace: (name, cat, gpu, start, end)."""

    def __init__(self, start_s: float, end_s: float) -> None:
        self.start_s, self.end_s = start_s, end_s
        self.events: list[tuple[str, str, int, float, float]] = []

    def want(self, t0: float) -> bool:
        return self.start_s <= t0 < self.end_s

    def add(self, name: str, cat: str, gpu: int, start: float, end: float) -> None:
        self.events.append((name, cat, gpu, start, end))

