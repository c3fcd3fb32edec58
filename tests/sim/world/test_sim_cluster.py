"""Cluster resources: links share bandwidth among concurrent copies; topology checks."""

from __future__ import annotations

import pytest

from sim.common.errors import ConfigError
from sim.serving.link import Link
from sim.world.config import ClusterConfig
from sim.world.topology import Topology


def test_concurrent_copies_share_a_link():
    link = Link(100.0)
    a = link.add(0.0, 100.0)
    b = link.add(0.0, 100.0)
    assert link.finish(a) == pytest.approx(2.0) and link.finish(b) == pytest.approx(2.0)


def test_staggered_copies_processor_sharing():
    link = Link(100.0)
    a = link.add(0.0, 100.0)
    b = link.add(0.5, 100.0)  # a has 50 B left; both at 50 B/s until a ends at 1.5
    assert link.finish(a) == pytest.approx(1.5)
    assert link.finish(b) == pytest.approx(2.0)
    assert link.bytes_total == 200.0


def test_fetch_on_idle_link_and_latency():
    link = Link(1000.0, latency_s=0.01)
    assert link.fetch(1.0, 500.0) == pytest.approx(1.51)
    # a later copy after the first finished: alone again
    assert link.fetch(2.0, 1000.0) == pytest.approx(3.01)
    # a copy issued while another is in flight shares the bandwidth
    first = link.add(10.0, 1000.0)
    assert link.fetch(10.0, 1000.0) == pytest.approx(12.01)
    assert link.finish(first) == pytest.approx(12.01)


def test_infinite_link_is_instant():
    link = Link(float("inf"))
    assert link.fetch(3.0, 1e12) == 3.0


def test_topology():
    t = Topology.from_config(ClusterConfig(nodes=2, gpus_per_node=8, expert_parallel=4))
    assert t.num_gpus == 16 and t.num_replicas == 4 and t.replica_gpus(3) == [12, 13, 14, 15]
    assert t.node_of(9) == 1 and t.replica_of(9) == 2 and not t.inter_node
    assert Topology.from_config(ClusterConfig(nodes=2, gpus_per_node=8, expert_parallel=16)).inter_node
    with pytest.raises(ConfigError, match="must tile"):
        Topology.from_config(ClusterConfig(nodes=1, gpus_per_node=8, expert_parallel=3))
