"""Helpers of the network tests (test_network.py, test_network_dups.py): a topology, a traffic
matrix from flows, a tiny simulated cluster on a network and its workload (its routing pool: the
``pool`` fixture of conftest.py)."""

from __future__ import annotations

import numpy as np

from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Simulation
from sim.serving.binding import bind
from sim.serving.testing import StubCost, tiny_config, workload
from sim.world.config import ClusterConfig, HardwareConfig
from sim.world.topology import Topology

INF = float("inf")


def _topo(nodes, gpn, ep, replicas=(), nic="gpu", spine=1.0, nic_bw=100.0, nv_bw=INF, lat=0.0):
    hw = HardwareConfig(nvlink_bytes_per_s=nv_bw, nvlink_latency_s=lat, network_bytes_per_s=nic_bw,
                        network_latency_s=lat)
    return Topology.from_config(ClusterConfig(nodes=nodes, gpus_per_node=gpn, expert_parallel=ep,
                                              replicas=[list(r) for r in replicas], nic=nic,
                                              spine_oversubscription=spine), hw)


def _traffic(L, G, flows):
    """(L, G, G) tokens from ``flows`` {(layer, src, dst): tokens}."""
    m = np.zeros((L, G, G))
    for (l, s, d), n in flows.items():
        m[l, s, d] = n
    return m


def _sim(cfg, wl, pool, rec=None, cost=None):
    cost = cost or StubCost(attn_s=0.001, expert_s_each=0.002)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)), cost,
                     np.random.default_rng(0), recorder=rec)
    sim.run()
    return sim, compute_metrics(sim)


def _net_cfg(nodes, gpn, ep, replicas=(), nic="gpu", spine=1.0, bw=1e5, lat=0.0):
    cfg = tiny_config(layers=3, experts=8, top_k=2, nodes=nodes, gpus_per_node=gpn, ep=ep)
    cfg.cluster.replicas = [list(r) for r in replicas]
    cfg.cluster.nic, cfg.cluster.spine_oversubscription = nic, spine
    cfg.hardware.network_bytes_per_s = cfg.hardware.nvlink_bytes_per_s = bw
    cfg.hardware.network_latency_s = cfg.hardware.nvlink_latency_s = lat
    return cfg


def _wl(n=8):
    return workload([0.0] * n, [30] * n, [4] * n)
