"""Cluster resources: the GPU topology, replicas, and links that share their bandwidth.

A cluster is ``nodes x gpus_per_node`` GPUs, cut into replicas of ``expert_parallel`` GPUs: by
default consecutive GPUs, or any disjoint lists (``cluster.replicas``); a replica may span nodes,
its all-to-all then uses the network (:mod:`sim.world.network`). Each GPU has its own
host-to-device link with a copy engine separate from compute, so copies overlap compute; on it
the copies a computing layer waits on go first, prefetch copies one at a time in the order issued
in the time left (:mod:`sim.serving.link`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.common.errors import ConfigError
from sim.world.config import ClusterConfig, HardwareConfig


@dataclass(frozen=True)
class Topology:
    """``nodes x gpus_per_node`` GPUs (global id ``node * gpus_per_node + local``), the replicas
    (each a tuple of ``expert_parallel`` GPU ids; by default consecutive GPUs) and the network
    links between them (:mod:`sim.world.network` builds the link resources from these figures)."""

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
