"""The discrete-event simulator: one SimPy process per replica, one event per batch iteration.

Shape legend: T tokens in an iteration's batch, L MoE layers, K experts per token (top-k),
E experts per layer, G GPUs of a replica.

Each replica runs continuous batching: every iteration gives each running request up to its
pending tokens (decode: 1; prefill or recompute: a chunk) out of ``serving.token_budget``, then
admits waiting requests the scheduler policy picks while the budget, ``max_batch_requests`` and
the replica's KV memory allow. A request's tokens take the experts of its bound routing (see
:mod:`sim.binding`). Per iteration, with numpy over all tokens and layers at once, the engine
counts tokens per (layer, expert), the GPU each expert computes on (placement policy), and each
GPU's expert-compute time per layer (cost model). It then walks the L layers: attention, gating,
all-to-all dispatch, each GPU asks its cache policy for the experts it needs at that layer
(``access``; misses are copied over its host link and the layer waits for them), the prefetch
policy may start copies for the next layer, experts compute, all-to-all combine. The iteration is
one ``env.timeout``; a fault interrupts it.

KV accounting: a request holds KV for the tokens it has processed; before an iteration, if the
decode tokens would not fit, the most recently admitted requests are preempted (their KV is freed,
they keep their generated tokens and recompute their context on re-admission, as vLLM's recompute
preemption). Admission requires room for the request's whole pending context plus one token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import simpy

from sim.binding import Binding, RoutingPool
from sim.cluster import Link, Topology
from sim.config import (
    SimConfig,
    dense_weight_bytes,
    expert_bytes,
    kv_bytes_per_token,
)
from sim.cost.base import CostModel
from sim.errors import ConfigError, MoesimError
from sim.policies.base import (
    CACHE,
    PLACEMENT,
    PREFETCH,
    SCHEDULER,
    CachePolicy,
    Placement,
    PrefetchContext,
    PrefetchPolicy,
    RequestView,
)

ROUTERS = ("round_robin", "least_loaded")


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


@dataclass
class GpuState:
    gpu: int
    cache: CachePolicy | None  # None: every home expert resident (capacity >= home experts)
    capacity: int
    link: Link
    #: (L,) per layer: sorted array of the keys this GPU holds (layer * E + expert)
    home_keys: list[np.ndarray]
    home_mask: np.ndarray  # (L*E,) bool
    inflight: dict[int, int] = field(default_factory=dict)  # key -> link transfer id
    peak_resident: int = 0
    hits: int = 0
    misses: int = 0
    prefetched: int = 0
    streamed: int = 0
    #: capacity below the experts it holds in one layer: a step may stream keys through
    #: (L,) frozenset of the keys it holds at each layer; all of them
    layer_sets: list[frozenset] = field(default_factory=list)
    all_keys: frozenset = frozenset()
    prefetch_used: int = 0
    stall_s: float = 0.0
    expert_tokens: int = 0
    busy_s: float = 0.0
    alive: bool = True


class Recorder:
    """Exact event log for timeline tests and the Chrome trace: (name, cat, gpu, start, end)."""

    def __init__(self, start_s: float, end_s: float) -> None:
        self.start_s, self.end_s = start_s, end_s
        self.events: list[tuple[str, str, int, float, float]] = []

    def want(self, t0: float) -> bool:
        return self.start_s <= t0 < self.end_s

    def add(self, name: str, cat: str, gpu: int, start: float, end: float) -> None:
        self.events.append((name, cat, gpu, start, end))


class _LazyViews(Sequence):
    """The running requests as RequestViews, built only when a scheduler looks at them."""

    def __init__(self, indices: list[int], view: Any) -> None:
        self._indices, self._view = list(indices), view

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._view(j) for j in self._indices[i]]
        return self._view(self._indices[i])


class Replica:
    def __init__(self, sim: Simulation, index: int, gpus: list[int]) -> None:
        self.sim, self.index, self.gpus = sim, index, gpus
        self.waiting: list[int] = []
        self.running: list[int] = []
        self.alive = True
        self.wake: simpy.Event | None = None
        self.kv_used = 0
        self.kv_peak = 0
        self.iterations = 0
        self.step = 0
        self.states: list[GpuState] = []
        self.ctx = PrefetchContext(request_id=f"replica{index}")
        self.proc: simpy.Process | None = None

    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    def notify(self) -> None:
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()


class Simulation:
    """Build with a config, a workload table, a routing pool + binding and a cost model; run()."""

    def __init__(self, cfg: SimConfig, workload: pd.DataFrame, pool: RoutingPool, binding: Binding,
                 cost: CostModel, rng: np.random.Generator, recorder: Recorder | None = None,
                 progress: Any = None) -> None:
        self.cfg, self.cost, self.rng, self.recorder, self.progress = cfg, cost, rng, recorder, progress
        m, c, s = cfg.model, cfg.cluster, cfg.serving
        self.model = m
        self.L, self.E, self.K = m.num_layers, m.num_experts, m.top_k
        self.pool = pool
        LE = m.num_layers * m.num_experts
        key_dtype = np.int16 if LE < 2**15 else np.int32
        # (N, L*K) the pool's routing as cache keys (layer * E + expert), computed once
        self.pool_keys = (pool.experts.astype(key_dtype) + (np.arange(m.num_layers, dtype=key_dtype)
                          * m.num_experts)[None, :, None]).reshape(len(pool.experts), -1)
        self.topo = Topology.from_config(c)
        if s.router not in ROUTERS:
            raise ConfigError(f"serving.router={s.router!r}; expected one of {list(ROUTERS)}")
        if s.token_budget < 1 or s.max_batch_requests < 1:
            raise ConfigError("serving.token_budget and serving.max_batch_requests must be >= 1")
        self.req = Requests(
            request_id=workload["request_id"].astype(str).tolist(),
            task=workload["task"].astype(str).tolist(),
            arrival_s=workload["arrival_s"].to_numpy(np.float64) * cfg.workload.time_scale,
            prompt=workload["prompt_tokens"].to_numpy(np.int64),
            output=workload["output_tokens"].to_numpy(np.int64),
            offset=binding.offset, length=binding.length)
        self.binding_report = binding.report
        self.R = len(self.req.arrival_s)
        self.env = simpy.Environment()
        self.expert_bytes = expert_bytes(m)
        self.kv_token_bytes = kv_bytes_per_token(m)
        # policies (the cache policy is only built where a GPU caches, so check its name now)
        CACHE.get(cfg.policy.cache)
        if not 0.0 < c.expert_budget_fraction <= 1.0:
            raise ConfigError(f"cluster.expert_budget_fraction={c.expert_budget_fraction}; expected "
                              f"a fraction in (0, 1] of the experts each GPU holds")
        if c.expert_budget_bytes < 0:
            raise ConfigError(f"cluster.expert_budget_bytes={c.expert_budget_bytes}; expected >= 0")
        self.prefetch: PrefetchPolicy = PREFETCH.make(cfg.policy.prefetch, num_layers=self.L,
                                                      num_experts=self.E, top_k=self.K,
                                                      **cfg.policy.prefetch_args)
        if getattr(self.prefetch, "requires_future", False):
            raise ConfigError(f"prefetch policy {cfg.policy.prefetch!r} is an oracle (needs the future); "
                              f"the simulator runs online policies only")
        base = PrefetchPolicy
        self._pf_next = type(self.prefetch).next_layer is not base.next_layer
        self._pf_obs = type(self.prefetch).observe is not base.observe
        self._pf_req = type(self.prefetch).on_request is not base.on_request
        self.scheduler = SCHEDULER.make(cfg.policy.scheduler, **cfg.policy.scheduler_args)
        self.placement = self._place()
        self.replicas = [Replica(self, r, self.topo.replica_gpus(r))
                         for r in range(self.topo.num_replicas)]
        self._setup_gpus()
        # per-run tallies
        need_kv = self.req.prompt + self.req.output  # (R,) KV tokens a request holds at its end
        if self.R and int(need_kv.max()) > self.kv_capacity_tokens:
            i = int(np.argmax(need_kv))
            raise ConfigError(
                f"request {self.req.request_id[i]!r} needs {int(need_kv[i])} KV tokens (prompt + output), "
                f"a replica holds {self.kv_capacity_tokens} ({cfg.hardware.name}, {c.expert_parallel} "
                f"GPU(s), expert budget); lower the expert budget, add GPUs, or cap the workload")
        self.rr_next = 0
        self.pending: list[int] = []  # requests with no live replica to go to
        self.completed = 0
        self.done = self.env.event()
        self.computed_le = np.zeros((self.L, self.E), dtype=np.int64)  # (L, E) expert-token computes
        self.recorded_le = np.zeros((self.L, self.E), dtype=np.int64)  # (L, E) trace assignments
        self.tokens_processed = 0
        self.tokens_recomputed = 0
        self.requests_rerouted = 0
        self.preemptions = 0
        self.fault_log: list[dict] = []
        self.iter_imbalance_sum = 0.0
        self.iter_layers = 0
        self.last_finish_s = 0.0
        self._views: dict[int, RequestView] = {}
        self._task_outputs: dict[str, tuple[int, int]] = {}  # task -> (completed, output tokens)
        self.gpu_tokens = np.zeros((len(self.replicas), self.topo.expert_parallel))  # (replicas, G)

    # ------------------------------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------------------------------
    def _place(self) -> Placement:
        ep = self.topo.expert_parallel
        policy = PLACEMENT.make(self.cfg.policy.placement, num_gpus=ep, **self.cfg.policy.placement_args)
        # plan on the routing pool's load (the history the operator has)
        flat = (self.pool.experts.astype(np.int64) + (np.arange(self.L) * self.E)[None, :, None]).ravel()
        load = np.bincount(flat, minlength=self.L * self.E).reshape(self.L, self.E)  # (L, E)
        placement = policy.place(load)
        if placement.num_gpus != ep or len(placement.replicas) != self.L or \
                any(len(r) != self.E for r in placement.replicas):
            raise ConfigError(f"placement policy {self.cfg.policy.placement!r} returned a placement of "
                              f"the wrong shape (expected {self.L} layers x {self.E} experts on {ep} GPUs)")
        share = np.zeros((self.L, self.E, ep))  # (L, E, G) share of an expert's tokens per GPU
        for l in range(self.L):
            for e in range(self.E):
                gpus = placement.replicas[l][e]
                if not gpus or any(not 0 <= g < ep for g in gpus):
                    raise ConfigError(f"placement puts layer {l} expert {e} on GPUs {gpus}, "
                                      f"expected 1+ of 0..{ep - 1}")
                for g in gpus:
                    share[l, e, g] += 1.0 / len(gpus)
        self.share = share
        pairs = np.argwhere(share.reshape(self.L * self.E, ep) > 0)  # (P, 2) (key, gpu), key-sorted
        self.pair_key = pairs[:, 0].astype(np.int64)
        self.pair_gpu = pairs[:, 1].astype(np.int64)
        self.single_owner = len(pairs) == self.L * self.E
        self.owner_flat = share.reshape(self.L * self.E, ep).argmax(axis=1)  # (L*E,)
        self.layer_of_key = np.arange(self.L * self.E) // self.E  # (L*E,)
        self.lg_index = self.layer_of_key * ep + self.owner_flat  # (L*E,) flat (layer, gpu)
        self.home_n = np.bincount(self.lg_index, minlength=self.L * ep).reshape(self.L, ep)  # (L, G)
        return placement

    def _setup_gpus(self) -> None:
        m, c, hw = self.model, self.cfg.cluster, self.cfg.hardware
        ep = self.topo.expert_parallel
        dense_share = dense_weight_bytes(m) / ep
        kv_bytes_total = 0.0
        self.capacity_slots: list[int] = []
        for g in range(ep):
            mask = (self.share[:, :, g] > 0).ravel()  # (L*E,)
            keys = np.flatnonzero(mask)
            home = len(keys)
            if c.expert_budget_bytes > 0:
                cap = int(c.expert_budget_bytes // self.expert_bytes)
            else:
                cap = int(math.floor(c.expert_budget_fraction * home + 1e-9))
            cap = min(cap, home)
            self.capacity_slots.append(cap)
            free = hw.memory_bytes - c.reserved_bytes - dense_share - cap * self.expert_bytes
            if free <= 0:
                raise ConfigError(
                    f"cluster: GPU {g} of {hw.name} ({hw.memory_bytes / 1e9:.0f} GB) cannot hold "
                    f"{cap} experts ({cap * self.expert_bytes / 1e9:.1f} GB) + dense weights "
                    f"({dense_share / 1e9:.1f} GB) + reserve; lower the expert budget or add GPUs")
            kv_bytes_total += free
        self.kv_capacity_tokens = int(kv_bytes_total // self.kv_token_bytes)
        if self.kv_capacity_tokens < 1:
            raise ConfigError("cluster: no memory left for the KV cache")
        self.layer_bounds = np.arange(self.L + 1) * self.E
        for rep in self.replicas:
            for local, gpu in enumerate(rep.gpus):
                mask = (self.share[:, :, local] > 0).ravel()
                keys = np.flatnonzero(mask)
                cap = self.capacity_slots[local]
                full = cap >= len(keys)
                cache = None if full else self._make_cache(cap, keys)
                home_keys = [keys[(keys >= l * self.E) & (keys < (l + 1) * self.E)] for l in range(self.L)]
                st = GpuState(gpu=gpu, cache=cache, capacity=cap,
                              link=Link(self.cost.host_link_bytes_per_s, self.cost.host_link_latency_s),
                              home_keys=home_keys, home_mask=mask)
                st.peak_resident = cap if full else len(cache.resident)
                st.layer_sets = [frozenset(k.tolist()) for k in home_keys]
                st.all_keys = frozenset(keys.tolist())
                rep.states.append(st)

    def _make_cache(self, cap: int, keys: np.ndarray) -> CachePolicy:
        """A GPU's cache policy; warm start loads its first ``cap`` experts (before serving)."""
        p = self.cfg.policy
        cache = CACHE.make(p.cache, capacity=cap, num_keys=self.L * self.E, **p.cache_args)
        if getattr(cache, "requires_future", False):
            raise ConfigError(f"cache policy {p.cache!r} is an oracle (needs the future); use the "
                              f"replay (moesim cache) for oracles")
        if self.cfg.cluster.warm_start and cap:
            cache.insert(0, keys[:cap].tolist())
        return cache

    # ------------------------------------------------------------------------------------------
    # routing of requests to replicas
    # ------------------------------------------------------------------------------------------
    def route(self, i: int) -> None:
        alive = [r for r in self.replicas if r.alive]
        if not alive:
            self.pending.append(i)
            return
        if self.cfg.serving.router == "round_robin":
            rep = alive[self.rr_next % len(alive)]
            self.rr_next += 1
        else:
            rep = min(alive, key=lambda r: (r.load(), r.index))
        self.req.replica[i] = rep.index
        rep.waiting.append(i)
        if self._pf_req:
            self._prefetch_request(rep, i)
        rep.notify()

    def _arrivals(self):
        env, arr = self.env, self.req.arrival_s
        for i in range(self.R):
            if arr[i] > env.now:
                yield env.timeout(arr[i] - env.now)
            self.route(i)

    # ------------------------------------------------------------------------------------------
    # faults
    # ------------------------------------------------------------------------------------------
    def _fault(self, f: Any):
        env = self.env
        yield env.timeout(f.time_s)
        if f.gpu >= 0:
            gpus = [f.gpu]
        else:
            gpus = [g for g in range(self.topo.num_gpus) if self.topo.node_of(g) == f.node]
        reps = sorted({self.topo.replica_of(g) for g in gpus})
        moved = 0
        for r in reps:
            rep = self.replicas[r]
            if not rep.alive:
                continue
            rep.alive = False
            if rep.proc is not None and rep.proc.is_alive and rep.proc is not env.active_process:
                rep.proc.interrupt("fault")
            victims = rep.running + rep.waiting
            for i in rep.running:
                self.tokens_recomputed += int(self.req.ctx[i])
                self.req.ctx[i] = 0
            rep.running, rep.waiting, rep.kv_used = [], [], 0
            for st in rep.states:
                st.link.reset(env.now)
                st.inflight.clear()
            for i in victims:
                self.req.reroutes[i] += 1
                moved += 1
                self.route(i)
        self.requests_rerouted += moved
        self.fault_log.append({"time_s": float(f.time_s), "gpus": gpus, "replicas": reps,
                               "requests_rerouted": moved, "recovery_s": float(f.recovery_s)})
        if math.isfinite(f.recovery_s):
            yield env.timeout(f.recovery_s)
            for r in reps:
                rep = self.replicas[r]
                for st in rep.states:  # the GPUs restarted: weights reloaded, caches fresh
                    if st.cache is not None:
                        st.cache = self._make_cache(st.capacity, np.flatnonzero(st.home_mask))
                rep.alive = True
                rep.proc = env.process(self._serve(rep))
            pend, self.pending = self.pending, []
            for i in pend:
                self.route(i)

    # ------------------------------------------------------------------------------------------
    # the serving loop
    # ------------------------------------------------------------------------------------------
    def _view(self, i: int) -> RequestView:
        v = self._views.get(i)
        if v is not None:
            v.done_tokens = int(self.req.generated[i])
            return v
        r = self.req
        v = self._views[i] = RequestView(
            index=i, arrival_s=float(r.arrival_s[i]), prompt_tokens=int(r.prompt[i]),
            done_tokens=int(r.generated[i]), predicted_output_tokens=self._predicted_output(i),
            task=r.task[i], slo_s=0.0)
        s = self.cfg.serving
        v.slo_s = s.ttft_slo_s + s.tpot_slo_s * v.predicted_output_tokens
        return v

    def _predicted_output(self, i: int) -> float:
        """Output length a serving system would predict: the mean over completed requests of the
        same task so far (eMoE's per-task profile), ``serving.predicted_output_tokens`` before any."""
        n, total = self._task_outputs.get(self.req.task[i], (0, 0))
        return total / n if n else float(self.cfg.serving.predicted_output_tokens)

    def _serve(self, rep: Replica):
        env, r = self.env, self.req
        while rep.alive:
            if not rep.running and not rep.waiting:
                rep.wake = env.event()
                try:
                    yield rep.wake
                except simpy.Interrupt:
                    return
                rep.wake = None
                continue
            batch, alloc = self._form_batch(rep)
            if len(batch) == 0 or int(alloc.sum()) == 0:
                # nothing fits (KV full with nothing running cannot happen; guard anyway)
                raise MoesimError(f"replica {rep.index}: cannot admit request {rep.waiting[0]} "
                                  f"({int(r.prompt[rep.waiting[0]])} prompt tokens) into "
                                  f"{self.kv_capacity_tokens} KV tokens")
            t0 = env.now
            dur = self._iteration(rep, batch, alloc, t0)
            try:
                yield env.timeout(dur)
            except simpy.Interrupt:
                return
            self._finish_iteration(rep, batch, alloc)

    def _form_batch(self, rep: Replica) -> tuple[np.ndarray, np.ndarray]:
        r, s = self.req, self.cfg.serving
        # preempt (newest first) until the running requests' next tokens fit in KV
        alloc = np.zeros(0, dtype=np.int64)
        while rep.running:
            run = np.asarray(rep.running)
            pend = r.prompt[run] + r.generated[run] - r.ctx[run]  # (B,) pending tokens
            alloc = self._allocate(pend, s.token_budget)
            if rep.kv_used + int(alloc.sum()) <= self.kv_capacity_tokens or len(run) == 1:
                break
            victim = rep.running.pop()
            rep.kv_used -= int(r.ctx[victim])
            self.tokens_recomputed += int(r.ctx[victim])
            r.ctx[victim] = 0
            r.preemptions[victim] += 1
            self.preemptions += 1
            rep.waiting.insert(0, victim)
            alloc = np.zeros(0, dtype=np.int64)
        used = int(alloc.sum())
        budget = s.token_budget - used
        kv_free = self.kv_capacity_tokens - rep.kv_used - used
        if budget > 0 and rep.waiting and len(rep.running) < s.max_batch_requests:
            window = rep.waiting[: s.scheduler_window]
            views = [self._view(i) for i in window]
            running_views = _LazyViews(rep.running, self._view)
            picked = self.scheduler.admit(self.env.now, views, running_views, budget)
            admitted: list[int] = []
            extra: list[int] = []
            in_window = set(window)
            for i in picked:
                if i not in in_window or i in admitted:
                    raise MoesimError(f"scheduler {self.cfg.policy.scheduler!r} admitted request {i}, "
                                      f"which is not waiting (or twice)")
                if budget <= 0 or len(rep.running) + len(admitted) >= s.max_batch_requests:
                    break
                need = int(r.prompt[i] + r.generated[i])  # whole context + the token it generates
                if need + 1 > kv_free:
                    if not rep.running and not admitted and need + 1 > self.kv_capacity_tokens:
                        raise ConfigError(
                            f"request {r.request_id[i]!r} needs {need + 1} KV tokens, the replica holds "
                            f"{self.kv_capacity_tokens}; give the replica more memory")
                    break
                n = min(need, budget)
                admitted.append(i)
                extra.append(n)
                budget -= n
                kv_free -= need + 1
            if admitted:
                adm = set(admitted)
                rep.waiting = [i for i in rep.waiting if i not in adm]
                rep.running.extend(admitted)
                alloc = np.concatenate([alloc, np.asarray(extra, dtype=np.int64)])
        return np.asarray(rep.running, dtype=np.int64), alloc

    @staticmethod
    def _allocate(pending: np.ndarray, budget: int) -> np.ndarray:
        """Tokens per request this iteration: in order, up to its pending tokens, within budget."""
        before = np.cumsum(pending) - pending
        return np.clip(budget - before, 0, pending)

    def _rows(self, batch: np.ndarray, alloc: np.ndarray) -> tuple[np.ndarray, int]:
        """(T,) pool rows of the batch's tokens, and the attention context pairs they read."""
        r = self.req
        start = r.ctx[batch]  # (B,) first position processed
        total = int(alloc.sum())
        rep_start = np.repeat(start, alloc)  # (T,)
        first = np.cumsum(alloc) - alloc
        pos = rep_start + (np.arange(total) - np.repeat(first, alloc))  # (T,) positions
        length = np.repeat(r.length[batch], alloc)
        rows = np.repeat(r.offset[batch], alloc) + pos % length
        pairs = int((pos + 1).sum())
        return rows, pairs

    def _iteration(self, rep: Replica, batch: np.ndarray, alloc: np.ndarray, t0: float) -> float:
        """Walk the layers of one iteration; return its duration (s). Mutates caches and links."""
        L, E, K = self.L, self.E, self.K
        cost, rec = self.cost, self.recorder
        r = self.req
        keep = alloc > 0
        batch, alloc = batch[keep], alloc[keep]
        rows, pairs = self._rows(batch, alloc)
        T = len(rows)
        keys_tok = self.pool_keys[rows]  # (T, L*K) key = layer * E + expert
        counts_flat = np.bincount(keys_tok.ravel(), minlength=L * E)  # (L*E,) tokens per key
        counts = counts_flat.reshape(L, E)  # (L, E)
        self.recorded_le += counts
        G = len(rep.gpus)
        if self.single_owner:
            # each expert on one GPU: per-GPU sums by scatter (no (L, E, G) product)
            computed = counts
            comp_le = cost.expert_s(counts)  # (L, E)
            lg = self.lg_index
            comp_arr = np.bincount(lg, weights=comp_le.ravel(), minlength=L * G).reshape(L, G)
            load_g = np.bincount(lg, weights=counts_flat, minlength=L * G).reshape(L, G)
        else:
            tok_g = counts[:, :, None] * self.share  # (L, E, G) tokens per expert per GPU
            computed = np.rint(tok_g.sum(axis=2)).astype(np.int64)
            comp_arr = cost.expert_s(np.ceil(tok_g - 1e-9)).sum(axis=1)  # (L, G) expert compute
            load_g = tok_g.sum(axis=1)  # (L, G)
        self.computed_le += computed
        sum_load = load_g.sum(axis=1)  # (L,)
        nz = sum_load > 0
        self.iter_imbalance_sum += float((load_g.max(axis=1)[nz] * G / sum_load[nz]).sum())
        self.iter_layers += int(nz.sum())
        self.gpu_tokens[rep.index] += load_g.sum(axis=0)
        decode = int((alloc == 1).sum())
        prefill = T - decode
        attn = cost.attention_s(prefill, decode, pairs, G)
        gate = cost.gate_s(T)
        a2a = cost.all_to_all_s(T * K * self.model.hidden_size * 2.0 / G, G, self.topo.inter_node) \
            if G > 1 else 0.0
        pf_cost = self.prefetch.cost_s() if (self._pf_next or self._pf_req) else 0.0
        used_flat = counts_flat > 0  # (L*E,)
        states = rep.states
        eb = self.expert_bytes
        recording = rec is not None and rec.want(t0)
        step0 = rep.step
        rep.step += L
        # per GPU: the keys it needs at each layer (sets) and over the iteration ("active")
        need, active = self._needs(states, used_flat)
        t_fast = None
        if not recording and not self._pf_next and not self._pf_req:
            t_fast = self._layers_fast(rep, t0, need, active, comp_arr, attn, gate, pf_cost, a2a, step0)
        if t_fast is not None:
            t = t_fast
            self.tokens_processed += T
            r.processed[batch] += alloc
            rep.iterations += 1
            return t - t0
        comp = comp_arr.tolist()  # [L][G] seconds
        t = t0
        for l in range(L):
            t_gate = t + attn + gate + pf_cost
            ready = t_gate + a2a
            end = ready
            for g, st in enumerate(states):
                start = ready
                cache = st.cache
                if recording:
                    rec.add(f"attention L{l}", "compute", st.gpu, t, t + attn)
                    if G > 1:
                        rec.add(f"a2a dispatch L{l}", "all_to_all", st.gpu, t_gate, ready)
                if cache is not None:
                    keyset = need[g][l]
                    if keyset:
                        misses, _ = cache.access(step0 + l, keyset, active[g])
                        nres = len(cache.resident)
                        if nres > st.peak_resident:
                            st.peak_resident = nres
                            if nres > st.capacity:
                                raise MoesimError(f"cache policy {self.cfg.policy.cache!r} holds {nres} "
                                                  f"experts on GPU {st.gpu}, over its budget "
                                                  f"{st.capacity}")
                        nm = len(misses)
                        if nm and misses[-1] not in cache.resident:
                            # capacity below this step's keys: some stream through a staging buffer
                            st.streamed += sum(1 for k in misses if k not in cache.resident)
                        st.misses += nm
                        st.hits += len(keyset) - nm
                        inflight = st.inflight
                        if inflight:
                            for k in keyset:
                                tid = inflight.pop(k, None)
                                if tid is not None:
                                    if k in misses:  # evicted before use, fetched again
                                        st.link.forget(tid)
                                        continue
                                    st.prefetch_used += 1
                                    fin = st.link.finish(tid)
                                    if fin > start:
                                        start = fin
                        if nm:
                            fin = st.link.fetch(t_gate, nm * eb)
                            if recording:
                                rec.add(f"copy L{l} x{nm}", "copy", st.gpu, t_gate + st.link.latency_s
                                        if not st.link.infinite else t_gate, fin)
                            if fin > start:
                                start = fin
                if start > ready:
                    st.stall_s += start - ready
                c = comp[l][g]
                e_end = start + c
                st.busy_s += c
                if recording and c > 0:
                    rec.add(f"experts L{l}", "compute", st.gpu, start, e_end)
                if e_end > end:
                    end = e_end
            t_next = end + a2a
            if recording and G > 1:
                for st in states:
                    rec.add(f"a2a combine L{l}", "all_to_all", st.gpu, end, t_next)
            if self._pf_obs or self._pf_next:
                experts = np.flatnonzero(used_flat[l * E:(l + 1) * E])
                if self._pf_obs:
                    self.prefetch.observe(rep.ctx, l, experts)
                if self._pf_next and l + 1 < L:
                    pred = np.asarray(self.prefetch.next_layer(rep.ctx, l, experts), dtype=np.int64)
                    if len(pred):
                        self._prefetch_keys(rep, (l + 1) * E + pred, step0 + l, t_gate, need, l + 1)
            t = t_next
        self.tokens_processed += T
        r.processed[batch] += alloc
        rep.iterations += 1
        return t - t0

    def _needs(self, states: list[GpuState], used_flat: np.ndarray
               ) -> tuple[list[list[Any]], list[Any]]:
        """Per GPU: the set of keys it needs at each layer, and their union over the iteration.

        A (GPU, layer) whose every expert is used reuses one prebuilt frozenset; only partly used
        ones are built key by key."""
        L, E = self.L, self.E
        G = len(states)
        if not self.single_owner:
            need: list[list[Any]] = [[set() for _ in range(L)] if st.cache is not None else []
                                     for st in states]
            active: list[Any] = [set() for _ in states]
            sel = used_flat[self.pair_key]
            for k, g in zip(self.pair_key[sel].tolist(), self.pair_gpu[sel].tolist()):
                ng = need[g]
                if ng:
                    ng[k // E].add(k)
                    active[g].add(k)
            return need, active
        used_n = np.bincount(self.lg_index, weights=used_flat, minlength=L * G).reshape(L, G)  # (L, G)
        state = np.where(used_n == self.home_n, 2, np.where(used_n > 0, 1, 0)).T.tolist()  # [G][L]
        need, active = [], []
        empty: frozenset[int] = frozenset()
        for g, st in enumerate(states):
            if st.cache is None:
                need.append([])
                active.append(empty)
                continue
            full = st.layer_sets
            row = state[g]
            if 1 not in row:
                ng = [full[l] if row[l] else empty for l in range(L)]
            else:
                ng = [full[l] if row[l] == 2 else
                      (frozenset(k for k in full[l] if used_flat[k]) if row[l] else empty)
                      for l in range(L)]
            need.append(ng)
            active.append(st.all_keys if 0 not in row and 1 not in row else frozenset().union(*ng))
        return need, active

    def _layers_fast(self, rep: Replica, t0: float, need: list[list[Any]], active: list[Any],
                     comp_arr: np.ndarray, attn: float, gate: float, pf_cost: float, a2a: float,
                     step0: int) -> float | None:
        """The layer walk of :meth:`_iteration` when nothing is recorded, nothing is prefetched and
        no copy is in flight: each link then carries one copy at a time (a layer waits for its copy
        before the next layer issues another), so a copy issued at the gate ends at
        ``gate + latency + bytes / bandwidth`` with no processor sharing to compute.

        The cache policies are asked GPU by GPU (each GPU's cache sees the same steps in the same
        order as in the layer walk), then one pass over layers does the same float arithmetic in
        the same order as the walk, so both give the same bytes. Returns None when a link still
        has a copy in flight (the caller then walks the layers). ``tests/sim/test_sim_degenerate.py``
        checks both agree."""
        states = rep.states
        for st in states:
            if st.link.active:
                return None
        L = self.L
        eb = self.expert_bytes
        miss_rows: list[tuple[int, GpuState, list[int]]] = []
        for g, st in enumerate(states):
            cache, act = st.cache, active[g]
            if cache is None or not act:
                continue
            nm, streamed = cache.access_steps(step0, need[g], act)
            st.streamed += streamed
            tot = sum(nm)
            st.misses += tot
            st.hits += len(act) - tot
            if tot:
                miss_rows.append((g, st, nm))
            nres = len(cache.resident)
            if nres > st.peak_resident:
                st.peak_resident = nres
                if nres > st.capacity:
                    raise MoesimError(f"cache policy {self.cfg.policy.cache!r} holds {nres} experts on "
                                      f"GPU {st.gpu}, over its budget {st.capacity}")
        comp = comp_arr.tolist()  # [L][G]
        # Per GPU with misses: (g, misses per layer, latency, bandwidth, infinite, link).
        # Floats are added in the walk's order, so both paths give the same bytes; an end time
        # max(ready + c_g, fin_g + c_g over stalled g) equals the walk's max over start_g + c_g
        # because addition rounds monotonically.
        rows = [(g, nm, st.link.latency_s, st.link.bytes_per_s, st.link.infinite, st.link)
                for g, st, nm in miss_rows]
        stall = [st.stall_s for st in states]
        t = t0
        for l in range(L):
            t_gate = t + attn + gate + pf_cost
            ready = t_gate + a2a
            comp_l = comp[l]
            end = ready + max(comp_l)
            if end < ready:
                end = ready
            for g, nm, lat, bw, inf, link in rows:
                m = nm[l]
                if m:
                    nbytes = m * eb
                    link.bytes_total += nbytes
                    fin = t_gate + lat
                    if not inf:
                        fin = fin + nbytes / bw
                    link.t = fin
                    if fin > ready:
                        stall[g] += fin - ready
                        v = fin + comp_l[g]
                        if v > end:
                            end = v
            t = end + a2a
        for g, st in enumerate(states):
            busy = st.busy_s
            for c in comp_arr[:, g].tolist():
                busy += c
            st.busy_s = busy
            st.stall_s = stall[g]
        return t

    def _prefetch_keys(self, rep: Replica, keys: np.ndarray, step: int, t_issue: float,
                       need: list[list[set[int]]], layer: int) -> None:
        """Load predicted keys into the GPUs that hold them, issuing copies at ``t_issue``."""
        for g, st in enumerate(rep.states):
            if st.cache is None:
                continue
            mine = keys[st.home_mask[keys]]
            if not len(mine):
                continue
            protect = need[g][layer] if layer < len(need[g]) else ()
            loaded, _ = st.cache.insert(step, mine.tolist(), protect=protect)
            if len(st.cache.resident) > st.capacity:
                raise MoesimError(f"cache policy {self.cfg.policy.cache!r} went over budget on GPU "
                                  f"{st.gpu} during prefetch")
            st.peak_resident = max(st.peak_resident, len(st.cache.resident))
            rec = self.recorder
            for k in loaded:
                tid = st.inflight[k] = st.link.add(t_issue, self.expert_bytes)
                st.prefetched += 1
                if rec is not None and rec.want(t_issue):
                    # finish as known now (later copies on the link may stretch it)
                    rec.add(f"prefetch L{k // self.E} e{k % self.E}", "copy", st.gpu,
                            t_issue + st.link.latency_s, st.link.finish_peek(tid))

    def _prefetch_request(self, rep: Replica, i: int) -> None:
        ctx = PrefetchContext(request_id=self.req.request_id[i], task=self.req.task[i],
                              prompt_tokens=int(self.req.prompt[i]), request_index=i)
        plan = self.prefetch.on_request(ctx)
        need: list[list[set[int]]] = [[] for _ in rep.states]
        for layer, experts in sorted(plan.items()):
            keys = int(layer) * self.E + np.asarray(experts, dtype=np.int64)
            self._prefetch_keys(rep, keys, rep.step, self.env.now, need, int(layer))

    def _finish_iteration(self, rep: Replica, batch: np.ndarray, alloc: np.ndarray) -> None:
        r, now = self.req, self.env.now
        keep = alloc > 0
        b, a = batch[keep], alloc[keep]
        r.ctx[b] += a
        rep.kv_used += int(a.sum())
        caught_up = r.ctx[b] == r.prompt[b] + r.generated[b]
        gen = b[caught_up]
        r.generated[gen] += 1
        first = gen[np.isnan(r.first_token_s[gen])]
        r.first_token_s[first] = now
        fin = gen[r.generated[gen] >= r.output[gen]]
        if len(fin):
            r.finish_s[fin] = now
            r.completions[fin] += 1
            rep.kv_used -= int(r.ctx[fin].sum())
            fs = set(fin.tolist())
            for i in fs:
                self._views.pop(i, None)
                n, total = self._task_outputs.get(r.task[i], (0, 0))
                self._task_outputs[r.task[i]] = (n + 1, total + int(r.output[i]))
            rep.running = [i for i in rep.running if i not in fs]
            self.completed += len(fin)
            self.last_finish_s = now
            if self.progress is not None:
                self.progress.update(len(fin))
            if self.completed >= self.R and not self.done.triggered:
                self.done.succeed()
        rep.kv_peak = max(rep.kv_peak, rep.kv_used)
        if rep.kv_used > self.kv_capacity_tokens:
            raise MoesimError(f"replica {rep.index}: KV use {rep.kv_used} tokens over capacity "
                              f"{self.kv_capacity_tokens}")

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        env = self.env
        if self.R == 0:
            return
        for rep in self.replicas:
            rep.proc = env.process(self._serve(rep))
        env.process(self._arrivals())
        for f in self.cfg.cluster.faults:
            if f.time_s >= 0:
                if (f.gpu < 0) == (f.node < 0):
                    raise ConfigError("cluster.faults: give exactly one of gpu or node per fault")
                if f.gpu >= self.topo.num_gpus or f.node >= self.topo.nodes:
                    raise ConfigError(f"cluster.faults: gpu {f.gpu} / node {f.node} not in the cluster")
                env.process(self._fault(f))
        try:
            env.run(until=self.done)
        except RuntimeError as exc:
            if self.completed < self.R:
                raise MoesimError(
                    f"simulation stopped at t={env.now:.3f} s with {self.R - self.completed} of {self.R} "
                    f"requests incomplete (no live replica left? a fault with recovery_s=inf)") from exc
            raise
