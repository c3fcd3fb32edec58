"""Failures and recovery, as pure state changes: a GPU or a node fails at ``time_s`` and comes
back ``recovery_s`` later (``cluster.faults[i]``, checked by :mod:`sim.serving.plan`).

Every replica with a failed GPU stops at once: the KV of its requests is lost (their context is
recomputed: ``tokens_recomputed``), its in-flight copies are dropped, and its running and waiting
requests must be routed again (:func:`fail` returns them). On recovery the replica's GPUs restart:
weights reloaded, every cache fresh (a new policy object, warm-started like at the start of the
run: :func:`restore`). The driver (:mod:`sim.engine.simulation`) owns time: it interrupts the
replica's serving process, routes what :func:`fail` returns and restarts the replica after
:func:`restore`; nothing here knows of SimPy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.serving.state import GpuState, ReplicaState, Requests, Tallies
from sim.world.topology import Topology

__all__ = ["affected", "fail", "restore"]


def affected(topo: Topology, f: Any) -> tuple[list[int], list[int]]:
    """The GPUs fault ``f`` takes down (one GPU, or a node's) and the replicas they belong to."""
    gpus = [f.gpu] if f.gpu >= 0 else [g for g in range(topo.num_gpus) if topo.node_of(g) == f.node]
    reps = sorted({topo.replica_of(g) for g in gpus} - {-1})  # -1: an idle GPU (no replica)
    return gpus, reps


def fail(rep: ReplicaState, req: Requests, tallies: Tallies, now: float) -> list[int]:
    """Replica ``rep`` fails at ``now``: it stops, its running requests lose their KV (context
    recomputed), its links drop their transfers. Returns the requests to route again (running,
    then waiting), each counted as a reroute. The replica must be alive."""
    rep.alive = False
    victims = rep.running + rep.waiting
    for i in rep.running:
        tallies.tokens_recomputed += int(req.ctx[i])
        req.ctx[i] = 0
    rep.running, rep.waiting, rep.kv_used = [], [], 0
    for st in rep.states:
        st.link.reset(now)
        st.inflight.clear()
    for i in victims:
        req.reroutes[i] += 1
    return victims


def restore(rep: ReplicaState, new_cache: Callable[[GpuState], Any]) -> list[GpuState]:
    """Replica ``rep`` is back: each GPU's cache is retired (its counts kept) and replaced by
    ``new_cache(gpu_state)``. Returns the GPU states whose cache was replaced."""
    fresh = []
    for st in rep.states:
        if st.cache is not None:
            st.retired.add(st.cache.counts)
            st.cache = new_cache(st)
            fresh.append(st)
    rep.alive = True
    return fresh
