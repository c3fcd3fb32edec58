"""Failures and recovery: a GPU or a node fails at ``time_s`` and comes back ``recovery_s`` later.

Every replica with a failed GPU stops at once: its running iteration is interrupted, the KV of
its requests is lost (their context is recomputed: ``tokens_recomputed``), its in-flight copies
are dropped, and its running and waiting requests are routed again to the live replicas (or wait
for one). On recovery the replica's GPUs restart: weights reloaded, every cache fresh (a new
policy object, warm-started like at the start of the run), and the requests that found no live
replica are routed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.engine import Simulation


def fault_process(sim: Simulation, f: Any):
    """The SimPy process of one fault (``cluster.faults[i]``, checked by :mod:`sim.plan`)."""
    env, topo, tl = sim.env, sim.plan.topo, sim.tallies
    yield env.timeout(f.time_s)
    gpus = [f.gpu] if f.gpu >= 0 else [g for g in range(topo.num_gpus) if topo.node_of(g) == f.node]
    reps = sorted({topo.replica_of(g) for g in gpus} - {-1})  # -1: an idle GPU (no replica)
    moved = 0
    for r in reps:
        rep = sim.replicas[r]
        if not rep.alive:
            continue
        rep.alive = False
        if rep.proc is not None and rep.proc.is_alive and rep.proc is not env.active_process:
            rep.proc.interrupt("fault")
        victims = rep.running + rep.waiting
        for i in rep.running:
            tl.tokens_recomputed += int(sim.req.ctx[i])
            sim.req.ctx[i] = 0
        rep.running, rep.waiting, rep.kv_used = [], [], 0
        for st in rep.states:
            st.link.reset(env.now)
            st.inflight.clear()
        for i in victims:
            sim.req.reroutes[i] += 1
            moved += 1
            sim.route(i)
    tl.requests_rerouted += moved
    tl.fault_log.append({"time_s": float(f.time_s), "gpus": gpus, "replicas": reps,
                         "requests_rerouted": moved, "recovery_s": float(f.recovery_s)})
    if math.isfinite(f.recovery_s):
        yield env.timeout(f.recovery_s)
        for r in reps:
            rep = sim.replicas[r]
            for st in rep.states:  # the GPUs restarted: weights reloaded, caches fresh
                if st.cache is not None:
                    st.retired.add(st.cache.counts)
                    st.cache = sim.new_cache(st, reset=True)
            rep.alive = True
            sim.start_replica(rep)
        pend, sim.pending = sim.pending, []
        for i in pend:
            sim.route(i)
