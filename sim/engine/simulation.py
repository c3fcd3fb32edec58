"""The discrete-event simulator: the SimPy processes that wire the rooms together.

One process per replica serves iterations (one ``env.timeout`` per iteration), one process feeds
arrivals, one process per fault. The rest lives in rooms a process calls into:

- :mod:`sim.serving.assemble`: the world served (built once, no simpy);
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
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from sim.common.errors import MoesimError
from sim.serving import faults
from sim.serving.assemble import Policies, World
from sim.serving.binding import Binding, RoutingPool
from sim.serving.cache_log import CacheLog
from sim.serving.state import Recorder, ReplicaState
from sim.world.config import SimConfig
from sim.world.topology import Topology

if TYPE_CHECKING:
    import pandas as pd

    from traces.workload import WorkloadColumns

__all__ = ["Policies", "Recorder", "Simulation"]

#: iterations in a row that may take no simulated time before the run is called a livelock
LIVELOCK_ITERATIONS = 100_000


class Simulation:
    """Build with a config, a workload table, a routing pool + binding and a cost model; run().

    The world it serves (:class:`sim.serving.assemble.World`: requests, plan, policies, tallies,
    batcher, walk, replicas) is built here, or given (``world``: the other arguments but ``rng``,
    ``progress`` are then the world's); its attributes read through (``sim.plan``,
    ``sim.walk``, ...). ``topo``: the checked config's topology, where the caller checked it."""

    def __init__(self, cfg: SimConfig | None, workload: pd.DataFrame | WorkloadColumns | None = None,
                 pool: RoutingPool | None = None, binding: Binding | None = None, cost: Any = None,
                 rng: np.random.Generator | None = None, recorder: Recorder | None = None,
                 progress: Any = None, policies: Policies | None = None,
                 cache_log: CacheLog | None = None, topo: Topology | None = None,
                 world: World | None = None) -> None:
        if world is None:
            world = World(cfg, workload, pool, binding, cost, recorder, policies, cache_log, topo)
        self.world = world
        self.cfg, self.cost = world.cfg, world.cost
        self.rng, self.progress = rng, progress
        # the attributes the serving loop reads every iteration, bound once
        self.req, self.R, self.plan, self.walk = world.req, world.R, world.plan, world.walk
        self.tallies, self.batcher, self.replicas = world.tallies, world.batcher, world.replicas
        self.env = simpy.Environment()
        self.done = self.env.event()

    def __getattr__(self, name: str) -> Any:
        """The world's other attributes (``topo``, ``log``, ``prefetch``, ``pending``, ...)."""
        if name == "world":  # (not set yet: no recursion)
            raise AttributeError(name)
        return getattr(self.world, name)

    # -- requests to replicas -------------------------------------------------------------------
    def route(self, i: int) -> None:
        """Request ``i`` to a replica (:meth:`sim.serving.assemble.World.route`); its prefetch
        copies start on the host links now, and a sleeping replica wakes."""
        rep, copies = self.world.route(i)
        if rep is None:
            return
        self.walk.pred.issue(rep, copies, self.env.now)
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
                faults.restore(rep, lambda st: self.world.new_cache(st, reset=True))
                self.start_replica(rep)
            pending = self.world.pending
            pend = list(pending)
            pending.clear()
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
