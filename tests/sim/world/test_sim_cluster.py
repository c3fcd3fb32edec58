"""Cluster resources: host links (demand copies first, prefetches in issue order); topology checks."""

from __future__ import annotations

import pytest

from sim.common.errors import ConfigError
from sim.serving.link import Link
from sim.world.config import ClusterConfig
from sim.world.topology import Topology


def test_prefetch_copies_one_at_a_time_in_issue_order():
    """Two 100 B prefetches issued at 0 on 100 B/s: served in order, 0-1 s and 1-2 s (the link's
    rule, sim/serving/link.py; it was processor sharing, both ending at 2.0 s)."""
    link = Link(100.0)
    a = link.add(0.0, 100.0)
    b = link.add(0.0, 100.0)
    assert link.finish(a) == 1.0 and link.finish(b) == 2.0


def test_staggered_prefetches_queue():
    link = Link(100.0)
    a = link.add(0.0, 100.0)
    b = link.add(0.5, 100.0)  # a runs alone 0-1 s; b waits for it, then 1-2 s
    assert link.finish(a) == 1.0
    assert link.finish(b) == 2.0
    assert link.bytes_total == 200.0


def test_fetch_on_idle_link_and_latency():
    link = Link(1000.0, latency_s=0.01)
    assert link.fetch(1.0, 500.0) == pytest.approx(1.51)
    # a later copy after the first finished: alone again
    assert link.fetch(2.0, 1000.0) == pytest.approx(3.01)
    # a prefetch issued with a demand copy: the demand copy runs 10.01-11.01 s at the full rate,
    # the prefetch (start 10.01 s) waits for it and runs 11.01-12.01 s
    first = link.add(10.0, 1000.0)
    assert link.fetch(10.0, 1000.0) == pytest.approx(11.01)
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
