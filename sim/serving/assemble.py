"""The World: everything a run serves, built once from a config, a workload, a routing pool and
binding and a cost model, with no notion of time passing. Two drivers move it:

- the simulator (:class:`sim.engine.simulation.Simulation`) adds SimPy processes (arrivals, one
  serving loop per replica, faults) and prices the walk's decisions on the cost model;
- realrun (:mod:`realrun.serve`) serves it for real, executing the walk's decisions
  (:meth:`sim.serving.walk.LayerWalk.decide`) with real copies and compute.

What it holds: the requests, the cluster plan (every config check, once), the policies
(placement, prefetch, the request predictor, scheduler, router; from the registries by the names
in ``cfg.policy``, or injected with :class:`Policies`), the tallies, the continuous batcher, the
layer walk, the replicas with their GPU states and warm-started caches, and the LRU stamp stores
(the array form of LRU, :mod:`sim.serving.lru_arrays`). No simpy is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

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
from sim.serving.batching import Batcher
from sim.serving.binding import Binding, RoutingPool
from sim.serving.cache_log import CacheLog
from sim.serving.link import Link
from sim.serving.lru_arrays import KeepStore, StampStore, array_form
from sim.serving.plan import ClusterPlan, check_config
from sim.serving.prefetch_walk import RULES, prefetch_applies
from sim.serving.state import GpuState, Recorder, ReplicaState, Requests, Tallies
from sim.serving.walk import COMPILE_AFTER, IterationDone, LayerWalk
from sim.world.config import SimConfig
from sim.world.facts import CacheCounts
from sim.world.topology import Topology
from traces.workload import WorkloadColumns

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Policies", "World"]


@dataclass
class Policies:
    """Policy objects to use instead of building them from ``cfg.policy`` (tests, experiments)."""

    prefetch: PrefetchPolicy | None = None
    scheduler: SchedulerPolicy | None = None
    placement: PlacementPolicy | None = None
    router: RouterPolicy | None = None


class World:
    """Build with a config, a workload table, a routing pool + binding and a cost model.

    ``topo``: the topology :func:`sim.serving.plan.check_config` returned, where the caller has
    checked the config already (the checks run once per run); None: checked here."""

    def __init__(self, cfg: SimConfig, workload: pd.DataFrame | WorkloadColumns, pool: RoutingPool,
                 binding: Binding, cost: Any, recorder: Recorder | None = None,
                 policies: Policies | None = None, cache_log: CacheLog | None = None,
                 topo: Topology | None = None) -> None:
        self.cfg, self.cost = cfg, cost
        self.model = m = cfg.model
        p = cfg.policy
        inject = policies or Policies()
        if topo is None:
            topo = check_config(cfg)
        w = WorkloadColumns.of(workload)  # a table or its columns: the same values
        self.req = Requests(request_id=w.request_id, task=w.task,
                            arrival_s=w.arrival_s * cfg.workload.time_scale,
                            prompt=w.prompt_tokens, output=w.output_tokens,
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
        # the request predictor: the prefetch policy, or eMoE-A for a cache that keeps a predicted
        # set (sim/policies/_predictor.py: the rule the cache replay uses too)
        self.predictor = predictor = request_predictor(p.cache, self.prefetch, dims)
        self.scheduler = inject.scheduler or SCHEDULER.make(p.scheduler, **p.scheduler_args)
        self.router = inject.router or ROUTER.make(cfg.serving.router)
        self.tallies = Tallies(plan.L, plan.E, topo.num_replicas, topo.expert_parallel)
        self.batcher = Batcher(self.req, cfg.serving, self.scheduler, plan.kv_capacity_tokens,
                               self.tallies, p.scheduler)
        self.log = cache_log
        self._key_use: np.ndarray | None = None  # (L*E,) uses per key in the pool (warm_keys)
        # a per-layer cache scope logs its calls itself, per layer (sim.serving.layered_cache)
        self.walk = LayerWalk(plan, cost, self.req, self.tallies, self.prefetch, predictor, p.cache,
                              recorder, None if plan.layer_slots else cache_log,
                              arrays=p.cache_arrays, offload=cfg.offload)
        # the cache policy's array form (LRU as recency stamps, a replica's GPUs at once:
        # sim/serving/lru_arrays.py), where it declares one and nothing needs the objects' calls:
        # misses run on the host and a next-layer prefetch walk layer by layer through the
        # objects (an array cache there only pays its modes' switching), but for the stores the
        # compiled walk serves (prefetch_walk.RULES: LRU, FIFO, LIFO, LFU, keep_predicted)
        form = array_form(CACHE.get(p.cache)) if p.cache_arrays else None
        pf_fast = form is not None and form[0] in RULES and prefetch_applies(self.walk)
        self.arrays = form is not None and not plan.layer_slots and cache_log is None and \
            (not self.walk.pred.pf_next or pf_fast) and self.walk.host is None
        # a run sure to walk COMPILE_AFTER iterations (each generates at most max_batch_requests
        # tokens) imports the kernels at its second iteration: they pay back numba's import and
        # loading (~0.5 s) anyway, and 2,047 iterations of numpy (~0.4 ms each) are saved; the
        # first iteration starts before the import. The batcher's kernels with the walk's. With a
        # next-layer prefetch on stamps (~12 ms an iteration through the objects), or eMoE's
        # keep_predicted (its steps only compiled), at once.
        if int(self.req.output.sum()) >= COMPILE_AFTER * cfg.serving.max_batch_requests or \
                (self.arrays and pf_fast and (self.walk.pred.pf_next or form[0] is KeepStore)):
            self.walk.compile_after = min(self.walk.compile_after, 2)
        self.batcher.compile_after = self.walk.compile_after
        self._store_cls, self._array_cache_cls = form if self.arrays else (None, None)
        self._stores: dict[int, StampStore] = {}  # GPU -> its replica's store
        self.replicas = [self._replica(r) for r in range(topo.num_replicas)]
        self.pending: list[int] = []  # requests with no live replica to go to

    @property
    def on_iteration(self) -> list[Callable[[IterationDone], None]]:
        """Callbacks the walk calls after each iteration it times, with its record
        (:class:`sim.serving.walk.IterationDone`)."""
        return self.walk.on_iteration

    # -- set-up ---------------------------------------------------------------------------------
    def _replica(self, index: int) -> ReplicaState:
        plan = self.plan
        rep = ReplicaState(index=index, gpus=plan.topo.replica_gpus(index),
                           ctx=PrefetchContext(request_id=f"replica{index}"))
        E = plan.E
        if self.arrays:
            rep.stamps = self._store_cls(plan.home_masks, plan.L)
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
            cache: CachePolicy = self._array_cache_cls(st.capacity, plan.L * plan.E,
                                                       self._stores[st.gpu], st.local,
                                                       CACHE.config(p.cache, **p.cache_args))
        else:
            cache = CACHE.make(p.cache, capacity=st.capacity, num_keys=plan.L * plan.E,
                               **p.cache_args)
        if self.log is not None and reset:
            self.log.add(st.gpu, "reset", 0)
        if self.cfg.cluster.warm_start and st.capacity:
            keys = self.warm_keys(st)[: st.capacity]
            if self.log is not None:
                self.log.add(st.gpu, "warm", 0, keys)
            cache.insert(0, keys)
            cache.counts = CacheCounts()  # the weights loaded before serving are not loads
        return cache

    def warm_keys(self, st: GpuState) -> list[int]:
        """The GPU's keys in the order a warm start places them: by key (the GPU's first experts),
        or, for a policy asking ``fill=frequency`` (the static cache), most used first in the
        routing pool's history (ties: smaller key), as the placement policies plan on it."""
        keys = np.flatnonzero(st.home_mask)
        if self.cfg.policy.cache_args.get("fill") != "frequency":
            return keys.tolist()
        if self._key_use is None:  # the pool's uses per key, counted once for every GPU
            self._key_use = np.bincount(self.plan.pool_keys.ravel().astype(np.int64),
                                        minlength=self.plan.L * self.plan.E)
        use = self._key_use[keys]
        return keys[np.lexsort((keys, -use))].tolist()

    def _new_layered(self, st: GpuState, reset: bool) -> Any:
        from sim.serving.layered_cache import LayeredCache

        p, plan = self.cfg.policy, self.plan
        slots = plan.layer_slots[st.local]
        cache = LayeredCache(p.cache, slots, plan.L, plan.E, p.cache_args, gpu=st.gpu, log=self.log)
        if reset:
            cache.reset_log()
        if self.cfg.cluster.warm_start and st.capacity:
            order = self.warm_keys(st)
            keys = [k for l in range(plan.L) for k in [k for k in order if k // plan.E == l][: slots[l]]]
            cache.warm(keys)
        return cache

    # -- requests to replicas -------------------------------------------------------------------
    def route(self, i: int) -> tuple[ReplicaState | None, list[tuple[int, list[int], list[int]]]]:
        """Request ``i`` goes to a live replica the router picks (none alive: it waits in
        ``pending``): it joins the replica's waiting list and the caches' per-request hooks and
        request prefetch run (:meth:`sim.serving.prediction.Prediction.request_start`). Returns
        the replica (None: pending) and the prefetch copies decided, ``(GPU index, keys
        loaded, keys evicted)``, for the driver to carry out (the simulator issues them on the host links)."""
        alive = [r.index for r in self.replicas if r.alive]
        if not alive:
            self.pending.append(i)
            return None, []
        rep = self.replicas[self.router.pick(alive, [self.replicas[r].load() for r in alive])]
        self.req.replica[i] = rep.index
        rep.waiting.append(i)
        return rep, self.walk.pred.request_start(rep, i)
