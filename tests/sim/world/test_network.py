"""The network as link resources (sim/world/network.py): traffic matrices worked out by hand, timeline
cases on the links (shared NICs, an oversubscribed spine), the degenerate checks, config errors."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.engine.simulation import Recorder
from sim.serving.testing import StubCost, workload
from sim.world.config import ClusterConfig
from sim.world.network import Network, SharedLink
from sim.world.topology import Topology
from sim.world.traffic import (
    count_tokens,
    duplicate_destinations,
    gpu_traffic,
    source_counts,
    token_sources,
)
from tests.sim.sim_test_helpers import assert_log
from tests.sim.world.network_helpers import (
    INF,
    _net_cfg,
    _sim,
    _topo,
    _traffic,
    _wl,
)


# -- the traffic of the token-to-GPU assignment --------------------------------------------------
def test_token_sources_are_even_contiguous_blocks():
    assert token_sources(5, 2).tolist() == [0, 0, 0, 1, 1]
    assert token_sources(2, 4).tolist() == [0, 2]
    assert token_sources(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_traffic_matrix_of_a_hand_made_routing():
    # 2 layers x 4 experts, top-2, EP 2: GPU 0 owns experts 0, 1 and GPU 1 experts 2, 3
    L, E, G = 2, 4, 2
    share = np.zeros((L, E, G))
    share[:, :2, 0] = share[:, 2:, 1] = 1.0
    lg_index = (np.arange(L)[:, None] * G + share.argmax(axis=2)).ravel()  # layer * G + owner
    plan = SimpleNamespace(L=L, E=E, share=share, topo=SimpleNamespace(expert_parallel=G),
                           single_owner=True, lg_index=lg_index)
    # tokens 0, 1 live on GPU 0, tokens 2, 3 on GPU 1; keys = layer * 4 + expert
    routing = [[(0, 2), (1, 3)],  # token 0: L0 experts 0, 2; L1 experts 1, 3
               [(1, 3), (2, 3)],  # token 1
               [(0, 1), (0, 2)],  # token 2
               [(2, 3), (3, 0)]]  # token 3
    keys = np.array([[e for e in l0] + [4 + e for e in l1] for l0, l1 in routing], dtype=np.int16)
    sc = source_counts(keys, G, L * E)
    assert sc.sum(axis=0).tolist() == np.bincount(keys.ravel(), minlength=L * E).tolist()
    m = gpu_traffic(plan, sc)
    # by hand, layer 0: GPU 0's tokens go to 0 (e0, e1) and 1 (e2, e3) -> [2, 2];
    #   GPU 1's tokens: token 2 -> e0, e1 (GPU 0, twice), token 3 -> e2, e3 (GPU 1, twice) -> [2, 2]
    # layer 1: token 0 -> e1 (0), e3 (1); token 1 -> e2, e3 (1, 1): GPU 0 sends [1, 3];
    #   token 2 -> e0 (0), e2 (1); token 3 -> e3 (1), e0 (0): GPU 1 sends [2, 2]
    assert m.tolist() == [[[2, 2], [2, 2]], [[1, 3], [2, 2]]]
    assert gpu_traffic(plan, sc, share).tolist() == m.tolist()  # the share product: the same
    # 800 tokens take source_counts' per-block path (4 tokens: one bincount); the same counts
    big = np.repeat(keys, 200, axis=0)
    assert gpu_traffic(plan, source_counts(big, G, L * E)).tolist() == (200 * m).tolist()
    # a replicated expert: expert 2 split half and half over the two GPUs
    share2 = share.copy()
    share2[:, 2] = 0.5
    m2 = gpu_traffic(plan, sc, share2)
    # layer 0: GPU 0's tokens route e2 once (token 0), GPU 1's once (token 3): half of each
    # goes to GPU 0 instead of GPU 1
    assert m2[0].tolist() == [[2.5, 1.5], [2.5, 1.5]]
    assert m2.sum() == m.sum()


# -- the links ------------------------------------------------------------------------------------
def test_nvlink_all_to_all_is_the_most_loaded_link():
    # one node of 2 GPUs, NVLink 100 B/s, latency 0.01 s, hidden 1 (2 bytes a token)
    topo = _topo(1, 2, 2, nv_bw=100.0, lat=0.01)
    net = Network(topo, hidden=1)
    traffic = _traffic(2, 2, {(0, 0, 1): 10, (0, 1, 0): 5, (0, 0, 0): 99, (1, 1, 1): 7})
    times, book = net.layer_times([0, 1], traffic, 0.0)
    # layer 0: GPU 0 sends 20 bytes (0.2 s), receives 10; the diagonal crosses no link
    # layer 1: nothing crosses: the collective's latency only
    assert book is None and times == pytest.approx([0.01 + 0.2, 0.01])


def test_two_replicas_sharing_a_nic_take_longer_than_one():
    # 2 nodes x 2 GPUs, one NIC per node (100 B/s); replicas {0, 2} and {1, 3} each span both
    # nodes, so both cross node 0's NIC and node 1's NIC
    topo = _topo(2, 2, 2, replicas=[(0, 2), (1, 3)], nic="node")
    flows = _traffic(1, 2, {(0, 0, 1): 50})  # local GPU 0 -> local GPU 1: 100 bytes cross-node
    alone = Network(topo, hidden=1)
    _, book_a = alone.layer_times([0, 2], flows, 0.0)
    assert book_a is not None and book_a(0, False, 0.0) == pytest.approx(1.0)  # 100 B at 100 B/s
    both = Network(topo, hidden=1)
    _, book_a = both.layer_times([0, 2], flows, 0.0)
    _, book_b = both.layer_times([1, 3], flows.copy(), 0.0)
    assert book_a(0, False, 0.0) == pytest.approx(1.0)
    # replica 1's dispatch waits for the NIC time replica 0 holds: it ends at 2 s, twice as late
    assert book_b(0, False, 0.0) == pytest.approx(2.0)
    # the combines (flows reversed, egress of node 1) contend the same way, from 3 s
    assert book_a(0, True, 3.0) == pytest.approx(4.0)
    assert book_b(0, True, 3.0) == pytest.approx(5.0)
    # with a NIC per GPU nothing is shared: each replica alone on its links
    own = Network(_topo(2, 2, 2, replicas=[(0, 2), (1, 3)], nic="gpu"), hidden=1)
    ta, ba = own.layer_times([0, 2], flows, 0.0)
    tb, bb = own.layer_times([1, 3], flows.copy(), 0.0)
    assert ba is None and bb is None and ta == tb == pytest.approx([1.0])


def test_an_oversubscribed_spine_halves_cross_node_bandwidth():
    # 2 nodes x 2 GPUs, a NIC per GPU (100 B/s), one replica of all 4 GPUs; nodes 0 -> 1 traffic:
    # each GPU of node 0 sends 100 bytes to node 1
    flows = _traffic(1, 4, {(0, 0, 2): 50, (0, 1, 3): 50})
    full = Network(_topo(2, 2, 4), hidden=1).layer_times([0, 1, 2, 3], flows, 0.0)[0]
    half = Network(_topo(2, 2, 4, spine=2.0), hidden=1).layer_times([0, 1, 2, 3], flows, 0.0)[0]
    assert full == pytest.approx([1.0])  # each NIC carries its 100 bytes at 100 B/s
    assert half == pytest.approx([2.0])  # node 0's uplink: 2 NICs x 100 / 2, 200 bytes


def test_shared_link_fills_idle_time_and_forgets_the_past():
    link = SharedLink(10.0)
    assert link.book(0.0, 10.0) == 1.0  # [0, 1]
    assert link.book(2.0, 10.0) == 3.0  # [2, 3]
    assert link.book(0.5, 20.0) == 4.0  # waits to 1, runs [1, 2] and [3, 4]
    assert link.starts == [0.0] and link.ends == [4.0]
    assert link.book(5.0, 0.0) == 5.0 and link.bytes_total == 40.0
    link.prune(4.0)
    assert link.starts == [] and link.book(4.0, 10.0) == 5.0


# -- the simulator on the links -------------------------------------------------------------------
def test_simulated_replicas_sharing_a_nic_are_slower(pool):
    # 20 kB/s: with a token sent once per destination GPU (not once per expert) at 100 kB/s
    # the replicas' last dispatches no longer overlap, and the runs end together (0.1238 s)
    shared = _net_cfg(2, 2, 2, replicas=[(0, 2), (1, 3)], nic="node", bw=2e4)
    own = _net_cfg(2, 2, 2, replicas=[(0, 2), (1, 3)], nic="gpu", bw=2e4)
    rec = Recorder(0.0, INF)
    _, m_shared = _sim(shared, _wl(), pool, rec)
    _, m_own = _sim(own, _wl(), pool)
    assert m_shared["requests_completed"] == m_own["requests_completed"] == 8
    assert m_shared["sim_time_s"] > m_own["sim_time_s"]
    assert m_shared["e2e_s"]["mean"] > m_own["e2e_s"]["mean"]
    # the trace shows the all-to-all as timed: some dispatch waited for the other replica
    d = [e[4] - e[3] for e in rec.events if e[0].startswith("a2a dispatch")]
    assert d and max(d) > min(d) * 1.5


def test_simulated_spine_doubles_the_cross_node_all_to_all(pool):
    # one replica over 2 nodes of 1 GPU: every byte crosses the NICs (latency 0)
    def dispatches(spine):
        rec = Recorder(0.0, INF)
        _sim(_net_cfg(2, 1, 2, spine=spine), _wl(2), pool, rec)
        return np.array([e[4] - e[3] for e in rec.events if e[0].startswith("a2a dispatch")])

    one, two = dispatches(1.0), dispatches(2.0)
    assert len(one) == len(two) > 0 and (one > 0).all()
    assert two / one == pytest.approx(np.full(len(one), 2.0), rel=1e-9)


def test_infinite_network_gives_compute_only_time(pool):
    # any layout of the same replica is as fast as the compute once the network is free
    runs = [_sim(_net_cfg(n, g, 2, spine=s, nic=nic, bw=INF), _wl(), pool)[1]
            for n, g, s, nic in ((1, 2, 1.0, "gpu"), (2, 1, 1.0, "gpu"), (2, 1, 4.0, "node"))]
    for m in runs[1:]:
        for key in ("sim_time_s", "ttft_s", "tpot_s", "e2e_s"):
            assert m[key] == runs[0][key]
    rec = Recorder(0.0, INF)
    _sim(_net_cfg(2, 1, 2, bw=INF), _wl(), pool, rec)
    assert not [e for e in rec.events if e[1] == "all_to_all"]
    # a finite network costs time
    assert _sim(_net_cfg(2, 1, 2), _wl(), pool)[1]["sim_time_s"] > runs[0]["sim_time_s"]


def test_one_gpu_replicas_pay_no_all_to_all(pool):
    slow = _net_cfg(2, 1, 1, bw=1.0, lat=1.0, nic="node", spine=4.0)
    fast = _net_cfg(2, 1, 1, bw=INF)
    rec = Recorder(0.0, INF)
    _, m_slow = _sim(slow, _wl(), pool, rec)
    assert not [e for e in rec.events if e[1] == "all_to_all"]
    assert m_slow["sim_time_s"] == _sim(fast, _wl(), pool)[1]["sim_time_s"]


def test_replicas_on_any_gpus(pool):
    # 3 nodes x 2 GPUs, 2 replicas of 3 GPUs (each spans nodes), GPU order as given
    cfg = _net_cfg(3, 2, 3, replicas=[(5, 0, 2), (1, 3, 4)])
    sim, m = _sim(cfg, _wl(), pool)
    assert [r.gpus for r in sim.replicas] == [[5, 0, 2], [1, 3, 4]]
    assert m["requests_completed"] == 8
    # a subset of the GPUs: the rest stay idle
    sim, m = _sim(_net_cfg(2, 2, 2, replicas=[(3, 1)]), _wl(), pool)
    assert [r.gpus for r in sim.replicas] == [[3, 1]] and m["requests_completed"] == 8


# -- config errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw,words", [
    (dict(replicas=[[0, 1], [1, 2]]), ["cluster.replicas[1]", "GPU 1", "cluster.replicas[0]"]),
    (dict(replicas=[[0, 0]]), ["cluster.replicas[0]", "GPU 0", "twice"]),
    (dict(replicas=[[0, 9]]), ["cluster.replicas[0]", "GPU 9", "not in the cluster"]),
    (dict(replicas=[[0, 1, 2]]), ["cluster.replicas[0]", "3 GPU(s)", "expert_parallel=2"]),
    (dict(nic="switch"), ["cluster.nic='switch'"]),
    (dict(spine_oversubscription=0.5), ["cluster.spine_oversubscription=0.5"]),
    (dict(spine_oversubscription=INF), ["cluster.spine_oversubscription=inf"]),
    (dict(replicas=[[0, 2]], tensor_parallel=2), ["cluster.replicas[0]", "spans nodes"]),
])
def test_network_config_errors(kw, words):
    c = dataclasses.replace(ClusterConfig(nodes=2, gpus_per_node=2, expert_parallel=2), **kw)
    with pytest.raises(ConfigError) as exc:
        Topology.from_config(c)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_network_config_error_on_the_command_line(capsys, monkeypatch, tmp_path):
    from sim.app.cli import main as moesim

    monkeypatch.chdir(tmp_path)
    try:
        rc = moesim(["sim", "workload.num_requests=3", "cluster=2x8",
                     "cluster.replicas=[[0,1,2,3,4,5,6,7],[7,8,9,10,11,12,13,14]]"])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "cluster.replicas[1]: GPU 7 is also in cluster.replicas[0]" in err


def test_one_node_closed_form_equals_the_traffic_matrix(pool):
    """The one-node single-owner path (one bincount of the source counts) times the traffic of
    gpu_traffic exactly as the general path does."""
    cfg = _net_cfg(1, 4, 4, bw=3e4, lat=1e-4)
    sim, _ = _sim(cfg, _wl(), pool)
    plan, net = sim.plan, sim.walk.timing.net
    rn = net._replica([0, 1, 2, 3])
    assert rn.fast_idx is not None
    rng = np.random.default_rng(3)
    for T in (1, 3, 40, 700):
        keys = plan.pool_keys[rng.integers(0, len(plan.pool_keys), T)]
        sc = source_counts(keys, 4, plan.L * plan.E)
        general, shared = rn.times(gpu_traffic(plan, sc))
        assert not shared
        assert rn.fast_times(sc) == pytest.approx(general.tolist(), rel=1e-12)
        assert net.layer_times([0, 1, 2, 3], (sc, None), 0.0)[0] == rn.fast_times(sc)
        # count_tokens: per key, and token by token (few tokens) or by source counts (many)
        # (once per destination GPU: the tokens whose two experts share a GPU taken off)
        counts, tok = count_tokens(plan, keys, 4)
        assert counts.tolist() == sc.sum(axis=0).tolist()
        dups = duplicate_destinations(keys, plan.lg_index, plan.L, plan.K, 4)
        want = gpu_traffic(plan, sc, dups=None if dups is None else
                           source_counts(dups, 4, plan.L * 4 + 1))
        got = tok if tok.ndim == 3 else gpu_traffic(plan, tok)  # (2-dim: none of them has a pair)
        assert got.tolist() == want.tolist()
        assert dups is None or want.sum() < gpu_traffic(plan, sc).sum()


def test_timeline_of_two_replicas_sharing_node_nics():
    """The event log, by hand: 2 nodes x 2 GPUs, replicas {0, 2} and {1, 3}, one NIC per node
    (2 B/s, no latency), NVLink unused. Each replica serves one request of one token that lives
    on its first GPU and routes to expert 2, held by its second GPU (the other node): 2 bytes
    cross node 0's NIC out and node 1's NIC in (1 s), and back for the combine."""
    from sim.serving.testing import pool_from_rows

    def run(n_requests):
        cfg = _net_cfg(2, 2, 2, replicas=[(0, 2), (1, 3)], nic="node", bw=2.0)
        cfg.model = dataclasses.replace(cfg.model, num_layers=1, num_experts=4, top_k=1)
        rec = Recorder(0.0, INF)
        pool = pool_from_rows([[[2]]])
        _, m = _sim(cfg, workload([0.0] * n_requests, [1] * n_requests, [1] * n_requests), pool,
                    rec, StubCost(attn_s=0.001, expert_s_each=0.002))
        return rec.events, m

    alone, m1 = run(1)
    want_alone = [
        ("attention L0", "compute", 0, 0.0, 0.001),
        ("a2a dispatch L0", "all_to_all", 0, 0.001, 1.001),
        ("attention L0", "compute", 2, 0.0, 0.001),
        ("a2a dispatch L0", "all_to_all", 2, 0.001, 1.001),
        ("experts L0", "compute", 2, 1.001, 1.003),
        ("a2a combine L0", "all_to_all", 0, 1.003, 2.003),
        ("a2a combine L0", "all_to_all", 2, 1.003, 2.003),
    ]
    assert_log(alone, want_alone)
    assert m1["e2e_s"]["p50"] == pytest.approx(2.003)
    both, m2 = run(2)
    # replica 0 walks first and is timed as alone; replica 1's dispatch waits for node 0's NIC
    # egress (busy 0.001-1.001), its combine for node 1's NIC egress (busy 1.003-2.003)
    want_second = [
        ("attention L0", "compute", 1, 0.0, 0.001),
        ("a2a dispatch L0", "all_to_all", 1, 0.001, 2.001),
        ("attention L0", "compute", 3, 0.0, 0.001),
        ("a2a dispatch L0", "all_to_all", 3, 0.001, 2.001),
        ("experts L0", "compute", 3, 2.001, 2.003),
        ("a2a combine L0", "all_to_all", 1, 2.003, 3.003),
        ("a2a combine L0", "all_to_all", 3, 2.003, 3.003),
    ]
    assert_log(both, want_alone + want_second)
    assert m2["e2e_s"]["mean"] == pytest.approx((2.003 + 3.003) / 2)
