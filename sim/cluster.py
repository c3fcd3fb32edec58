"""Cluster resources: the GPU topology, replicas, and links that share their bandwidth.

A cluster is ``nodes x gpus_per_node`` GPUs, cut into replicas of ``expert_parallel`` GPUs: by
default consecutive GPUs, or any disjoint lists (``cluster.replicas``); a replica may span nodes,
its all-to-all then uses the network (:mod:`sim.network`). Each GPU has its own
host-to-device link with a copy engine separate from compute, so copies overlap compute; the
transfers that are on one link at the same time share its bandwidth equally (processor sharing).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config import ClusterConfig, HardwareConfig
from sim.errors import ConfigError


@dataclass(frozen=True)
class Topology:
    """``nodes x gpus_per_node`` GPUs (global id ``node * gpus_per_node + local``), the replicas
    (each a tuple of ``expert_parallel`` GPU ids; by default consecutive GPUs) and the network
    links between them (:mod:`sim.network` builds the link resources from these figures)."""

    nodes: int
    gpus_per_node: int
    expert_parallel: int
    replicas: tuple[tuple[int, ...], ...] = ()
    #: "gpu": one NIC per GPU (DGX H100: 8 x 400 Gb/s ConnectX-7); "node": one NIC a node shares
    nic: str = "gpu"
    #: leaf-to-spine oversubscription (1: full bisection; 2: a node's cross-node traffic gets half
    #: its NICs' bandwidth in aggregate)
    spine_oversubscription: float = 1.0
    nvlink_bytes_per_s: float = 450e9
    nvlink_latency_s: float = 8e-6
    nic_bytes_per_s: float = 50e9
    nic_latency_s: float = 20e-6

    def __post_init__(self) -> None:
        if not self.replicas:
            ep = self.expert_parallel
            object.__setattr__(self, "replicas", tuple(
                tuple(range(r * ep, (r + 1) * ep)) for r in range(self.num_gpus // ep)))
        owner = {g: r for r, gs in enumerate(self.replicas) for g in gs}
        object.__setattr__(self, "_owner", owner)

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def num_replicas(self) -> int:
        return len(self.replicas)

    def replica_gpus(self, replica: int) -> list[int]:
        return list(self.replicas[replica])

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node

    def replica_of(self, gpu: int) -> int:
        """The replica GPU ``gpu`` serves in (-1: none; explicit replicas may leave GPUs idle)."""
        return self._owner.get(gpu, -1)  # type: ignore[attr-defined]

    def spans_nodes(self, replica: int) -> bool:
        return len({self.node_of(g) for g in self.replicas[replica]}) > 1

    @property
    def inter_node(self) -> bool:
        """Some replica spans more than one node (its all-to-all uses the network)."""
        return any(self.spans_nodes(r) for r in range(self.num_replicas))

    @classmethod
    def from_config(cls, c: ClusterConfig, hw: HardwareConfig | None = None) -> Topology:
        """The topology of ``cluster`` (link figures from ``hw``, default: the H100 defaults);
        every error names its key."""
        hw = hw if hw is not None else HardwareConfig()
        if c.nodes < 1 or c.gpus_per_node < 1 or c.expert_parallel < 1:
            raise ConfigError(f"cluster: nodes, gpus_per_node, expert_parallel must be >= 1, got "
                              f"{c.nodes}, {c.gpus_per_node}, {c.expert_parallel}")
        total = c.nodes * c.gpus_per_node
        ep = c.expert_parallel
        if c.nic not in ("gpu", "node"):
            raise ConfigError(f"cluster.nic={c.nic!r}; expected 'gpu' (one NIC per GPU) or "
                              f"'node' (one NIC per node, shared by its GPUs)")
        ratio = c.spine_oversubscription
        if not 1.0 <= ratio < float("inf"):
            raise ConfigError(f"cluster.spine_oversubscription={ratio}; expected a finite ratio "
                              f">= 1 (1: full bisection, 2: cross-node traffic gets half the NIC "
                              f"bandwidth)")
        reps: list[tuple[int, ...]] = []
        if c.replicas:
            seen: dict[int, int] = {}
            for r, gs in enumerate(c.replicas):
                if len(gs) != ep:
                    raise ConfigError(f"cluster.replicas[{r}] has {len(gs)} GPU(s); every replica "
                                      f"has cluster.expert_parallel={ep}")
                for g in gs:
                    if not 0 <= g < total:
                        raise ConfigError(f"cluster.replicas[{r}]: GPU {g} is not in the cluster "
                                          f"({c.nodes} node(s) x {c.gpus_per_node} GPUs = GPUs "
                                          f"0..{total - 1})")
                    if g in seen:
                        where = "twice in it" if seen[g] == r else f"also in cluster.replicas[{seen[g]}]"
                        raise ConfigError(f"cluster.replicas[{r}]: GPU {g} is {where} (a GPU "
                                          f"serves one replica)")
                    seen[g] = r
                reps.append(tuple(int(g) for g in gs))
        elif total % ep:
            raise ConfigError(f"cluster: expert_parallel={ep} must tile {c.nodes} node(s) x "
                              f"{c.gpus_per_node} GPUs into whole replicas of consecutive GPUs "
                              f"(or give cluster.replicas, lists of GPU ids)")
        tp = max(1, c.tensor_parallel)
        topo = cls(c.nodes, c.gpus_per_node, ep, tuple(reps), nic=c.nic,
                   spine_oversubscription=float(ratio),
                   nvlink_bytes_per_s=hw.nvlink_bytes_per_s, nvlink_latency_s=hw.nvlink_latency_s,
                   nic_bytes_per_s=hw.network_bytes_per_s, nic_latency_s=hw.network_latency_s)
        if ep % tp == 0:
            for r, gs in enumerate(topo.replicas):
                for i in range(0, ep, tp):
                    if len({topo.node_of(g) for g in gs[i:i + tp]}) > 1:
                        raise ConfigError(f"cluster.replicas[{r}]: tensor-parallel group "
                                          f"{list(gs[i:i + tp])} spans nodes (cluster."
                                          f"tensor_parallel={tp} stays on NVLink)")
        return topo


class Link:
    """One direction of a link whose concurrent transfers share ``bytes_per_s`` equally.

    ``add(t, nbytes)`` starts a transfer at ``t + latency_s`` (calls come in non-decreasing
    ``t``); ``finish(tid)`` is its completion time given the transfers added so far, exact as
    long as it is asked before a later ``add`` could overlap it (the simulator asks for a copy it
    waits on before it issues anything later). ``bytes_total`` accumulates.

    A transfer that ``fetch`` starts on an idle link is held apart (``_solo``: its start clock
    and bytes) instead of in ``active``: the next ``fetch`` after it has finished drops it in a
    few float operations, and any other call first puts it into ``active`` exactly as if it had
    been there all along, so the processor sharing is unchanged.
    """

    __slots__ = ("bytes_per_s", "latency_s", "t", "active", "done", "next_id", "bytes_total",
                 "infinite", "_solo")

    def __init__(self, bytes_per_s: float, latency_s: float = 0.0) -> None:
        if not bytes_per_s > 0:
            raise ConfigError(f"link bandwidth must be > 0, got {bytes_per_s}")
        self.bytes_per_s = float(bytes_per_s)
        self.infinite = self.bytes_per_s == float("inf")
        self.latency_s = float(latency_s)
        self.t = 0.0
        self.active: dict[int, float] = {}  # tid -> remaining bytes
        self.done: dict[int, float] = {}  # tid -> finish time
        self.next_id = 0
        self.bytes_total = 0.0
        self._solo: float = 0.0  # bytes of the transfer held apart (0: none); it started at self.t

    def _unsolo(self) -> None:
        if self._solo:
            self.active[-1 - self.next_id] = self._solo
            self.next_id += 1
            self._solo = 0.0

    def _advance(self, t: float) -> None:
        self._unsolo()
        active = self.active
        bw = self.bytes_per_s
        while active and self.t < t:
            n = len(active)
            m = min(active.values())
            dt = m * n / bw
            if self.t + dt <= t:
                self.t += dt
                for k in list(active):
                    r = active[k] - m
                    if r <= 1e-6:
                        del active[k]
                        if k >= 0:
                            self.done[k] = self.t
                    else:
                        active[k] = r
            else:
                d = (t - self.t) * bw / n
                for k in active:
                    active[k] -= d
                self.t = t
        if self.t < t:
            self.t = t

    def add(self, t: float, nbytes: float) -> int:
        tid = self.next_id
        self.next_id += 1
        self.bytes_total += nbytes
        start = t + self.latency_s
        if self.infinite or nbytes <= 0:
            self.done[tid] = start
            return tid
        self._advance(start)
        self.active[tid] = float(nbytes)
        return tid

    def fetch(self, t: float, nbytes: float) -> float:
        """Start a transfer the caller waits on right away; returns its completion time.

        Same as ``finish(add(t, nbytes))``, but the transfer's completion is not kept for a later
        ``finish`` (nothing asks twice), and an idle link takes a short path."""
        self.bytes_total += nbytes
        start = t + self.latency_s
        solo = self._solo
        if solo and nbytes > 0:
            bw = self.bytes_per_s
            if not self.active and self.t + solo / bw <= start:
                # the common case: the one earlier transfer is a fetch, done by ``start``
                self.t = start
                self._solo = float(nbytes)
                return start + nbytes / bw
        if self.infinite or nbytes <= 0:
            return start
        active = self.active
        if solo:
            self._unsolo()
        if len(active) == 1:
            (k, r), = active.items()
            dt = r / self.bytes_per_s
            if self.t + dt <= start:
                del active[k]
                if k >= 0:
                    self.done[k] = self.t + dt
                self.t = start
            else:
                self._advance(start)
        elif active:
            self._advance(start)
        elif start > self.t:
            self.t = start
        if not active:
            self._solo = float(nbytes)
            return start + nbytes / self.bytes_per_s
        tid = -1 - self.next_id  # negative ids: not recorded in ``done``
        self.next_id += 1
        active[tid] = float(nbytes)
        return self.finish(tid)

    def finish(self, tid: int) -> float:
        """Completion time of transfer ``tid`` (forgotten afterwards)."""
        if tid in self.done:
            return self.done.pop(tid)
        self._unsolo()
        rem = sorted(self.active.items(), key=lambda kv: kv[1])
        t, prev, n = self.t, 0.0, len(rem)
        for i, (k, r) in enumerate(rem):
            t += (r - prev) * (n - i) / self.bytes_per_s
            prev = r
            if k == tid:
                return t
        raise KeyError(f"unknown transfer {tid}")

    def finish_peek(self, tid: int) -> float:
        """Like :meth:`finish` but keeps the transfer's record for a later ``finish``."""
        if tid in self.done:
            return self.done[tid]
        return self.finish(tid)

    def forget(self, tid: int) -> None:
        self.done.pop(tid, None)

    def reset(self, t: float) -> None:
        """Drop every transfer (the GPU failed) and restart the clock at ``t``."""
        self._solo = 0.0
        self.active.clear()
        self.done.clear()
        self.t = max(self.t, t)
