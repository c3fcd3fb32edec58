"""The discrete-event simulator: the SimPy processes that wire the rooms together.

One process per replica serves iterations (one ``env.timeout`` per iteration), one process feeds
arrivals, one process per fault. The rest lives in rooms a process calls into:

- :mod:`sim.serving.plan`: the cluster plan and every config check, computed once;
- :mod:`sim.serving.state`: requests, replicas, GPUs, the tallies metrics read;
- :mod:`sim.serving.batching`: continuous batching (admission, preemption, KV), pure;
- :mod:`sim.serving.walk`: the layer walk (cache decisions), with :mod:`sim.serving.token_counts` (tokens per
  key) and :mod:`sim.serving.layer_timing` (copies, compute time);
- :mod:`sim.serving.faults`: failures and recovery;
- :mod:`sim.engine.metrics`: tallies -> ``metrics.json``.

Policies come from the registries by the names in ``cfg.policy``, or injected (:class:`Policies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy

from sim.common.errors import MoesimError
from sim.policies._predictor import request_predictor
from sim.policies.base import (
    CACHE,
    PLACEMENT,
    PREFETCH,
    ROUTER,
    SCHEDULER,
    CachePolicy,
    PlacementPolicy,
    PrefetchContext,
    PrefetchPolicy,
    RouterPolicy,
    SchedulerPolicy,
)
from sim.serving import faults
from sim.serving.batching import Batcher
from sim.serving.binding import Binding, RoutingPool
from sim.serving.cache_log import CacheLog
from sim.serving.link import Link
from sim.serving.lru_arrays import StampedLRU, StampStore, array_form
from sim.serving.plan import ClusterPlan, check_config
from sim.serving.state import GpuState, Recorder, ReplicaState, Requests, Tallies
from sim.serving.walk import LayerWalk
from sim.world.config import SimConfig
from sim.world.facts import CacheCounts

__all__ = ["Policies", "Recorder", "Simulation"]

#: iterations in a row that may take no simulated time before the run is called a livelock
LIVELOCK_ITERATIONS = 100_000


@dataclass
class Policies:
    """Policy objects to use instead of building them from ``cfg.policy`` (tests, experiments)."""

    prefetch: PrefetchPolicy | None = None
    scheduler: SchedulerPolicy | None = None
    placement: PlacementPolicy | None = None
    router: RouterPolicy | None = None


class Simulation:
    """Build with a config, a workload table, a routing pool + binding and a cost model; run()."""

    def __init__(self, cfg: SimConfig, workload: pd.DataFrame, pool: RoutingPool, binding: Binding,
                 cost: Any, rng: np.random.Generator, recorder: Recorder | None = None,
                 progress: Any = None, policies: Policies | None = None,
                 cache_log: CacheLog | None = None) -> None:
        self.cfg, self.cost, self.rng, self.progress = cfg, cost, rng, progress
        self.model = m = cfg.model
        p = cfg.policy
        inject = policies or Policies()
        topo = check_config(cfg)
        self.req = Requests(
            request_id=workload["request_id"].astype(str).tolist(),
            task=workload["task"].astype(str).tolist(),
            arrival_s=workload["arrival_s"].to_numpy(np.float64) * cfg.workload.time_scale,
            prompt=workload["prompt_tokens"].to_numpy(np.int64),
            output=workload["output_tokens"].to_numpy(np.int64),
            offset=binding.offset, length=binding.length)
        self.R = len(self.req)
        self.binding_report = binding.report
        placement = inject.placement or PLACEMENT.make(p.placement, num_gpus=topo.expert_parallel,
                                                       **p.placement_args)
        self.plan = plan = ClusterPlan.build(cfg, topo, pool.experts, self.req.prompt, self.req.output,
                                             self.req.request_id, placement)
        self.topo = topo
        dims = dict(num_layers=m.num_layers, num_experts=m.num_experts, top_k=m.top_k)
        self.prefetch = inject.prefetch or PREFETCH.make(p.prefetch, **dims, **p.prefetch_args)
        predictor = request_predictor(p.cache, self.prefetch, dims)  # sim/policies/_predictor.py
        self.scheduler = inject.scheduler or SCHEDULER.make(p.scheduler, **p.scheduler_args)
        self.router = inject.router or ROUTER.make(cfg.serving.router)
        self.tallies = Tallies(plan.L, plan.E, topo.num_replicas, topo.expert_parallel)
        self.batcher = Batcher(self.req, cfg.serving, self.scheduler, plan.kv_capacity_tokens,
                               self.tallies, p.scheduler)
        self.log = cache_log
        # a per-layer cache scope logs its calls itself, per layer (sim.serving.layered_cache)
        self.walk = LayerWalk(plan, cost, self.req, self.tallies, self.prefetch, predictor, p.cache,
                              recorder, None if plan.layer_slots else cache_log,
                              arrays=p.cache_arrays)
        # LRU as recency stamps, a replica's GPUs at once (sim/serving/lru_arrays.py)
        self.arrays = (p.cache_arrays and array_form(CACHE.get(p.cache)) is not None and not plan.layer_slots
                       and cache_log is None)
        self._stores: dict[int, StampStore] = {}  # GPU -> its replica's store
        self.replicas = [self._replica(r) for r in range(topo.num_replicas)]
        self.env = simpy.Environment()
        self.done = self.env.event()
        self.pending: list[int] = []  # requests with no live replica to go to

    # -- set-up ---------------------------------------------------------------------------------
    def _replica(self, index: int) -> ReplicaState:
        plan = self.plan
        rep = ReplicaState(index=index, gpus=plan.topo.replica_gpus(index),
                           ctx=PrefetchContext(request_id=f"replica{index}"))
        E = plan.E
        if self.arrays:
            rep.stamps = StampStore(plan.home_masks, plan.L)
            self._stores.update((gpu, rep.stamps) for gpu in rep.gpus)
        for local, gpu in enumerate(rep.gpus):
            mask = plan.home_masks[local]
            keys = np.flatnonzero(mask)
            cap = plan.capacity_slots[local]
            st = GpuState(gpu=gpu, local=local, cache=None, capacity=cap,
                          link=Link(self.cost.host_link_bytes_per_s, self.cost.host_link_latency_s),
                          home_mask=mask,
                          layer_sets=[frozenset(keys[(keys >= l * E) & (keys < (l + 1) * E)].tolist())
                                      for l in range(plan.L)],
                          all_keys=frozenset(keys.tolist()))
            full = cap >= len(keys)
            st.cache = None if full else self.new_cache(st)
            st.peak_resident = cap if full else len(st.cache.resident)
            rep.states.append(st)
        return rep

    def new_cache(self, st: GpuState, reset: bool = False) -> CachePolicy:
        """A GPU's cache policy; a warm start loads its first ``capacity`` experts (before serving,
        not counted as loads). With ``cluster.cache_scope=per_layer``: one cache per layer
        (:class:`sim.serving.layered_cache.LayeredCache`), each warmed with its layer's first experts."""
        p, plan = self.cfg.policy, self.plan
        if plan.layer_slots:
            return self._new_layered(st, reset)
        if self.arrays:
            cache: CachePolicy = StampedLRU(st.capacity, plan.L * plan.E, self._stores[st.gpu],
                                            st.local)
        else:
            cache = CACHE.make(p.cache, capacity=st.capacity, num_keys=plan.L * plan.E,
                               **p.cache_args)
        if self.log is not None and reset:
            self.log.add(st.gpu, "reset", 0)
        if self.cfg.cluster.warm_start and st.capacity:
            keys = np.flatnonzero(st.home_mask)[: st.capacity].tolist()
            if self.log is not None:
                self.log.add(st.gpu, "warm", 0, keys)
            cache.insert(0, keys)
            cache.counts = CacheCounts()  # the weights loaded before serving are not loads
        return cache

    def _new_layered(self, st: GpuState, reset: bool) -> Any:
        from sim.serving.layered_cache import LayeredCache

        p, plan = self.cfg.policy, self.plan
        slots = plan.layer_slots[st.local]
        cache = LayeredCache(p.cache, slots, plan.L, plan.E, p.cache_args, gpu=st.gpu, log=self.log)
        if reset:
            cache.reset_log()
        if self.cfg.cluster.warm_start and st.capacity:
            keys = [k for l, ks in enumerate(st.layer_sets) for k in sorted(ks)[: slots[l]]]
            cache.warm(keys)
        return cache

    # -- requests to replicas -------------------------------------------------------------------
    def route(self, i: int) -> None:
        alive = [r.index for r in self.replicas if r.alive]
        if not alive:
            self.pending.append(i)
            return
        rep = self.replicas[self.router.pick(alive, [self.replicas[r].load() for r in alive])]
        self.req.replica[i] = rep.index
        rep.waiting.append(i)
        self.walk.pred.request_start(rep, i, self.env.now)
        if rep.wake is not None and not rep.wake.triggered:
            rep.wake.succeed()

    def _arrivals(self):
        env, arr = self.env, self.req.arrival_s
        for i in range(self.R):
            if arr[i] > env.now:
                yield env.timeout(arr[i] - env.now)
            self.route(i)

    # -- serving --------------------------------------------------------------------------------
    def start_replica(self, rep: ReplicaState) -> None:
        rep.proc = self.env.process(self._serve(rep))

    def _serve(self, rep: ReplicaState):
        env, batcher, tl = self.env, self.batcher, self.tallies
        idle = 0
        while rep.alive:
            if not rep.running and not rep.waiting:
                rep.wake = env.event()
                try:
                    yield rep.wake
                except simpy.Interrupt:
                    return
                rep.wake = None
                continue
            batch, alloc = batcher.form(rep, env.now)
            batcher.begin(rep, batch, alloc)
            dur = self.walk.iteration(rep, batch, alloc, env.now)
            idle = idle + 1 if dur <= 0 else 0
            if idle > LIVELOCK_ITERATIONS:
                raise MoesimError(
                    f"livelock: replica {rep.index} ran {idle} iterations without simulated time "
                    f"advancing at t={env.now:.6f} s ({len(rep.running)} running, {len(rep.waiting)} "
                    f"waiting): the cost model returns zero durations, or requests never progress")
            try:
                yield env.timeout(dur)
            except simpy.Interrupt:
                return
            fin = batcher.finish(rep, batch, alloc, env.now)
            if len(fin):
                if self.progress is not None:
                    self.progress.update(len(fin))
                if tl.completed >= self.R and not self.done.triggered:
                    self.done.succeed()

    def _fault(self, f: Any):
        """The SimPy process of one fault: the state changes are :mod:`sim.serving.faults`'."""
        env, tl = self.env, self.tallies
        yield env.timeout(f.time_s)
        gpus, reps = faults.affected(self.plan.topo, f)
        moved = 0
        for r in reps:
            rep = self.replicas[r]
            if not rep.alive:
                continue
            proc = rep.proc
            victims = faults.fail(rep, self.req, tl, env.now)
            if proc is not None and proc.is_alive and proc is not env.active_process:
                proc.interrupt("fault")
            moved += len(victims)
            for i in victims:
                self.route(i)
        tl.requests_rerouted += moved
        tl.fault_log.append({"time_s": float(f.time_s), "gpus": gpus, "replicas": reps,
                             "requests_rerouted": moved, "recovery_s": float(f.recovery_s)})
        if math.isfinite(f.recovery_s):
            yield env.timeout(f.recovery_s)
            for r in reps:
                rep = self.replicas[r]
                faults.restore(rep, lambda st: self.new_cache(st, reset=True))
                self.start_replica(rep)
            pend, self.pending = self.pending, []
            for i in pend:
                self.route(i)

    def run(self) -> None:
        env = self.env
        if self.R == 0:
            return
        for rep in self.replicas:
            self.start_replica(rep)
        env.process(self._arrivals())
        for f in self.cfg.cluster.faults:
            env.process(self._fault(f))
        try:
            env.run(until=self.done)
        except RuntimeError as exc:
            if self.tallies.completed < self.R:
                raise MoesimError(
                    f"simulation stopped at t={env.now:.3f} s with {self.R - self.tallies.completed} "
                    f"of {self.R} requests incomplete (no live replica left? a fault with "
                    f"recovery_s=inf)") from exc
            raise
