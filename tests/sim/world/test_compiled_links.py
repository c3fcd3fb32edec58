"""The kernels of sim/world/compiled_links.py (the links' loads, and the split's all-to-all straight
to them), the key-major counts they read (sim/world/compiled_counts.py count_layers) and the
network's use of both (sim/world/network.py): numpy's and the traffic product's floats."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sim.world.traffic import source_counts

pytest.importorskip("numba", reason="numba is not installed: the numpy references run")

from sim.world import compiled  # noqa: E402


def _reduceat(traffic, rows, starts):
    L, G = traffic.shape[:2]
    return np.add.reduceat(traffic.reshape(L, G * G)[:, rows], starts, axis=1)


def test_link_loads_hand_figure():
    """Flows 1, 2 then 3, 0 of [[1, 2], [3, 4]]: 2 + 3 and 4 + 1."""
    tr = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    got = compiled.links.link_loads(tr, np.array([1, 2, 3, 0]), np.array([0, 2]), np.empty((1, 2)))
    assert got.tolist() == [[5.0, 5.0]]


@pytest.mark.parametrize("seed", range(20))
def test_link_loads_equal_reduceat(seed):
    """numpy's reduceat adds a segment's first term to the pairwise sum of the others (8 running
    sums from 8 terms, halves above 128): segments of every size, values whose sum depends on
    the order."""
    rng = np.random.default_rng(900 + seed)
    L, G = int(rng.integers(1, 4)), int(rng.choice([2, 4, 16, 64]))
    tr = rng.random((L, G, G)) * 10.0 ** rng.integers(-3, 6, size=(L, G, G))
    tr[rng.random(tr.shape) < 0.3] = 0.0
    R = int(rng.integers(1, 4000))
    rows = rng.integers(0, G * G, size=R)
    cuts = rng.choice(np.arange(1, R), size=min(int(rng.integers(0, 30)), R - 1), replace=False) \
        if R > 1 else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.sort(cuts)]).astype(np.int64)
    ref = _reduceat(tr, rows, starts)
    got = compiled.links.link_loads(tr, rows, starts, np.empty((L, len(starts))))
    assert ref.tobytes() == got.tobytes()
    for n in (1, 7, 8, 9, 127, 128, 129, 200, 257, 1000):  # the block edges, one segment
        r = rng.integers(0, G * G, size=n)
        assert _reduceat(tr, r, np.zeros(1, dtype=np.int64)).tobytes() == compiled.links.link_loads(
            tr, r, np.zeros(1, dtype=np.int64), np.empty((L, 1))).tobytes()



def test_count_layers_hand_figure():
    """2 layers of 2 experts, top-1, 2 GPUs, blocks of 2 rows: pool rows 0..3 with keys
    (0, 2), (1, 3), (1, 2), (0, 3); the batch rows 2, 3, 0: GPU 0 has tokens 0 and 1 (rows 2
    and 3: the whole block 1, from the prefix counts), GPU 1 token 2 (row 0, one by one).
    Key-major: key 0 on GPU 0 (row 3) and GPU 1 (row 0), key 1 on GPU 0 (row 2), key 2 on
    GPU 0 (row 2) and GPU 1 (row 0), key 3 on GPU 0 (row 3)."""
    idx = np.array([[0, 2], [1, 3], [1, 2], [0, 3]], dtype=np.int16)
    prefix = compiled.block_prefix(idx, 2, 4)
    out, total = np.empty((4, 2), dtype=np.int32), np.empty(4, dtype=np.int64)
    compiled.count_layers(idx, prefix, 2, np.array([2, 3, 0]), 2, 2, out, total)
    assert out.tolist() == [[1, 1], [1, 0], [1, 1], [1, 0]] and total.tolist() == [2, 1, 2, 1]
    with pytest.raises(ValueError, match="outside its layer"):  # layer 1's column holds key 0
        compiled.count_layers(np.array([[0, 0]], dtype=np.int16), np.zeros((1, 4), np.int32), 2,
                              np.array([0]), 2, 2, out, total)


@pytest.mark.parametrize("seed", range(20))
def test_count_layers_equal_source_counts(seed):
    """Runs of consecutive pool rows (some over whole blocks, cut at the GPUs' bounds) and single
    rows, blocks of 1, 4 and 64 rows: ``out.T`` is source_counts of the gathered keys and
    ``total`` its sum over the GPUs."""
    rng = np.random.default_rng(1500 + seed)
    L, E, K, G = int(rng.integers(1, 5)), int(rng.choice([4, 16, 64])), \
        int(rng.choice([1, 2, 8])), int(rng.choice([2, 16, 64]))
    N = int(rng.integers(1, 600))
    idx = (np.arange(L).repeat(K)[None, :] * E + rng.integers(0, E, size=(N, L * K))).astype(
        np.int16)
    parts = [np.arange(a, min(N, a + int(rng.choice([1, 1, 3, 70, 300]))))
             for a in rng.integers(0, N, size=int(rng.integers(1, 30)))]
    rows = np.concatenate(parts).astype(np.int64)
    want = source_counts(idx[rows], G, L * E)
    for B in (1, 4, 64):
        prefix = compiled.block_prefix(idx, B, L * E)
        out, total = np.empty((L * E, G), dtype=np.int32), np.empty(L * E, dtype=np.int64)
        compiled.count_layers(idx, prefix, B, rows, G, E, out, total)
        assert np.array_equal(out.T, want) and np.array_equal(total, want.sum(axis=0))


def _split_case(rng, L, E, G):
    """Key-major counts (zeros included), a share per holder pair (zeros included) and a
    replica's links as flows (rows, starts) like _ReplicaNet's."""
    hold = rng.random((L, E, G)) < float(rng.choice([0.02, 0.1, 0.5]))
    hold[np.arange(L)[:, None], np.arange(E)[None, :], rng.integers(0, G, size=(L, E))] = True
    pairs = np.argwhere(hold.reshape(L * E, G))
    share_p = rng.random(len(pairs)) * 10.0 ** rng.integers(-3, 1, size=len(pairs))
    share_p[rng.random(len(pairs)) < 0.3] = 0.0
    km = rng.integers(0, 300, size=(L * E, G)).astype(np.int32)
    km[rng.random(km.shape) < 0.5] = 0
    R = int(rng.integers(1, 3 * G * G))
    rows = rng.integers(0, G * G, size=R)
    cuts = np.sort(rng.choice(np.arange(1, R), size=min(int(rng.integers(0, 40)), R - 1),
                              replace=False)) if R > 1 else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    return km, share_p, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), rows, starts


@pytest.mark.parametrize("seed", range(20))
def test_split_links_equal_traffic_then_loads(seed):
    """split_links gives link_loads of traffic_share's (L, G, G) product, byte for byte: counts
    and shares with zeros, links of every size (the pairwise sums' edges)."""
    rng = np.random.default_rng(1700 + seed)
    L, E, G = int(rng.integers(1, 4)), int(rng.choice([2, 8, 64, 256])), int(rng.choice([2, 16, 64]))
    km, share_p, pk, pg, rows, starts = _split_case(rng, L, E, G)
    traffic = compiled.traffic_share(np.ascontiguousarray(km.T), share_p, pk, pg, L)
    want = compiled.links.link_loads(traffic, rows, starts, np.empty((L, len(starts))))
    rows_t = (rows % G) * G + rows // G
    got = compiled.links.split_links(km, share_p, pk, pg, E, rows_t, starts,
                                     np.empty((L, len(starts))))
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_layers_in_parallel_equal_on_one_thread(seed):
    """count_layers and split_links with their layers side by side (``parallel``, prange) on one
    thread and on every thread numba has: the serial kernels' bytes (each layer's counts and
    chains are its own), split_links the product's (many layers: every thread gets some)."""
    import numba

    n = numba.config.NUMBA_NUM_THREADS
    if n < 2:
        pytest.skip("numba has one thread here: nothing runs side by side")
    rng = np.random.default_rng(1900 + seed)
    L, E, K, G = int(rng.integers(8, 24)), int(rng.choice([16, 64])), 4, int(rng.choice([16, 64]))
    N = int(rng.integers(100, 900))
    idx = (np.arange(L).repeat(K)[None, :] * E + rng.integers(0, E, size=(N, L * K))).astype(
        np.int16)
    rows = np.concatenate([np.arange(a, min(N, a + int(rng.choice([1, 5, 200]))))
                           for a in rng.integers(0, N, size=20)]).astype(np.int64)
    prefix = compiled.block_prefix(idx, 64, L * E)
    km, share_p, pk, pg, frows, starts = _split_case(rng, L, E, G)
    rows_t = (frows % G) * G + frows // G
    traffic = compiled.traffic_share(np.ascontiguousarray(km.T), share_p, pk, pg, L)
    want = compiled.links.link_loads(traffic, frows, starts, np.empty((L, len(starts))))
    got = []
    try:
        for threads, par in ((1, False), (1, True), (n, True)):
            numba.set_num_threads(threads)
            out, total = np.empty((L * E, G), dtype=np.int32), np.empty(L * E, dtype=np.int64)
            compiled.count_layers(idx, prefix, 64, rows, G, E, out, total, par)
            loads = compiled.links.split_links(km, share_p, pk, pg, E, rows_t, starts,
                                               np.empty((L, len(starts))), par)
            got.append((out.tobytes(), total.tobytes(), loads.tobytes()))
    finally:
        numba.set_num_threads(n)
    assert got[0] == got[1] == got[2]
    assert got[0][2] == want.tobytes()
    assert np.array_equal(out.T, source_counts(idx[rows], G, L * E))


def test_split_links_hand_figure():
    """1 layer, 2 experts, 2 GPUs: expert 0 (3 tokens on GPU 0, 1 on GPU 1) shared 0.25 / 0.75,
    expert 1 (2 tokens on GPU 1) on GPU 0 alone. traffic[g, h]: [[0.75, 2.25], [0.25 + 2,
    0.75]]; links: flow 0->1 alone (2.25), flows 1->0 and 0->0 (2.25 + 0.75 = 3.0)."""
    km = np.array([[3, 1], [0, 2]], dtype=np.int32)
    share_p = np.array([0.25, 0.75, 1.0])
    pk, pg = np.array([0, 0, 1]), np.array([0, 1, 0])
    rows = np.array([1, 2, 0])  # flows g * G + h: 0->1, then 1->0 and 0->0
    rows_t = (rows % 2) * 2 + rows // 2
    got = compiled.links.split_links(km, share_p, pk, pg, 2, rows_t, np.array([0, 1]),
                                     np.empty((1, 2)))
    assert got.tolist() == [[2.25, 3.0]]


@pytest.mark.parametrize("seed", range(4))
def test_network_split_times_equal_traffic_times(seed):
    """Replicas over 2 nodes (a 2:1 spine: links of 1,024 flows; or one NIC a node shared by 2
    replicas) from key-major counts and a share per pair (split_times): the times and the shared
    links' bytes of the traffic product (gpu_traffic, then times), byte for byte."""
    from sim.world.network import Network
    from sim.world.topology import Topology
    from sim.world.traffic import gpu_traffic

    rng = np.random.default_rng(1900 + seed)
    if seed < 2:
        L, E, G = 2, 16, 64
        topo = Topology(nodes=2, gpus_per_node=32, expert_parallel=G, spine_oversubscription=2.0)
    else:
        L, E, G = 3, 32, 16
        topo = Topology(nodes=2, gpus_per_node=16, expert_parallel=G, nic="node", replicas=(
            tuple(range(0, 8)) + tuple(range(16, 24)), tuple(range(8, 16)) + tuple(range(24, 32))))
    km, share_p, pk, pg, _, _ = _split_case(rng, L, E, G)
    plan = SimpleNamespace(L=L, E=E, pair_key=pk, pair_gpu=pg, single_owner=False,
                           share=np.zeros((L, E, G)), topo=topo)
    gpus = list(topo.replicas[0])
    net = Network(topo, 7168, plan)
    got, book = net.layer_times(gpus, (km.T, share_p), 0.0)
    rn = net._replica(gpus)
    want, shared = rn.times(gpu_traffic(plan, np.ascontiguousarray(km.T).astype(np.int64), share_p))
    assert np.asarray(got).tobytes() == want.tobytes() and rn.rows_t is not None
    assert rn.split_times(plan, km.T, share_p)[1] == shared and (book is None) == (not shared)
    assert rn.split_times(plan, np.ascontiguousarray(km.T), share_p) is None  # not key-major


@pytest.mark.parametrize("seed", range(10))
def test_link_times_equal_numpy(seed):
    """link_times: _ReplicaNet.load_times' numpy expression (the slowest unshared link per
    layer, ``base`` at least), byte for byte, with idle links and a zero base."""
    rng = np.random.default_rng(2300 + seed)
    L, C = int(rng.integers(1, 6)), int(rng.integers(1, 300))
    load = rng.random((L, C)) * 10.0 ** rng.integers(-2, 6, size=(L, C))
    load[rng.random(load.shape) < 0.3] = 0.0
    lat, scale = rng.random(C) * 1e-5, rng.random(C) * 1e-7
    unshared = rng.random(C) < 0.8
    base = float(rng.choice([0.0, 8e-6, 1.0]))
    want = np.where(load > 0, lat + load * scale, 0.0)[:, unshared].max(axis=1, initial=base)
    assert compiled.links.link_times(load, lat, scale, unshared, base).tobytes() == want.tobytes()
