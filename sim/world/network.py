"""The network as link resources: each layer's all-to-all (dispatch and combine) as the traffic of
the actual token-to-GPU assignment over the links it crosses.

Links (one per direction, so each GPU, NIC and node has an egress and an ingress link):

- NVLink per GPU (``hardware.nvlink_bytes_per_s``, ``nvlink_latency_s``): traffic between two GPUs
  of one node leaves on the sender's and enters on the receiver's;
- a NIC per GPU or per node (``cluster.nic``; ``hardware.network_bytes_per_s``,
  ``network_latency_s``): traffic between nodes leaves on the sender's NIC and enters on the
  receiver's;
- with ``cluster.spine_oversubscription`` = s > 1, a spine uplink and downlink per node (the
  leaf switch's uplinks) of ``NICs of the node x NIC bandwidth / s``: a node's cross-node traffic
  shares it (2: half the NIC bandwidth in aggregate).

The traffic (:func:`sim.world.traffic.gpu_traffic`): tokens from the GPU that
holds them to the GPUs of their experts, once per destination GPU (:mod:`sim.world.traffic`).

Time: on each link, the replica's flows of one all-to-all are one transfer of their summed bytes
(the slowest of them ends when the link's last byte is through); the all-to-all ends when the
last link's transfer ends: ``max(base latency, max over links of latency + bytes / bandwidth)``,
where the base latency (the collective's, paid even when no byte crosses a link) is the NVLink
latency, or the network's when the replica spans nodes. Links are timed each on its own (a flow
over a NIC and the spine is limited by the slower, the hops are not coupled). A replica whose
links are its own (its GPUs' NVLink and NICs are never used by another replica) meets no other
traffic, so this is closed form, for all layers at once with numpy. A link that several
replicas use (a node's NIC or spine uplink shared by replicas spanning nodes) is a
:class:`SharedLink`: a transfer there waits for the link time other replicas have booked (see
its doc), so that concurrent replicas contend.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np

from sim.world.token_split import compiled_kernels
from sim.world.topology import Topology
from sim.world.traffic import BF16_BYTES, chain_matches_blas, gpu_traffic

__all__ = ["Network", "SharedLink"]

class SharedLink:
    """One direction of a link several replicas use: the link time they have booked.

    Replicas time their iterations one at a time (each walks all its layers when the iteration
    starts), so a later-walked replica's transfer cannot slow down one already timed. A transfer
    therefore runs at the link's full rate in the link's idle time from its start, around the
    time booked before it: the link is work-conserving (its busy time is processor sharing's),
    and among transfers that overlap the one walked first goes first (processor sharing would
    let both finish at the later time). ``book`` returns the transfer's finish; ``bytes_total``
    accumulates."""

    __slots__ = ("bytes_per_s", "starts", "ends", "bytes_total")

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = float(bytes_per_s)
        self.starts: list[float] = []  # disjoint busy intervals, sorted
        self.ends: list[float] = []
        self.bytes_total = 0.0

    def book(self, s: float, nbytes: float) -> float:
        self.bytes_total += nbytes
        if nbytes <= 0 or self.bytes_per_s == float("inf"):
            return s
        starts, ends = self.starts, self.ends
        rem = nbytes / self.bytes_per_s  # link time the transfer needs
        if not ends or ends[-1] <= s:  # idle from s on: the common case
            if ends and ends[-1] == s:
                ends[-1] = s + rem
            else:
                starts.append(s)
                ends.append(s + rem)
            return s + rem
        i0 = i = bisect_right(ends, s)  # intervals before i0 end by s
        n = len(starts)
        t = s
        while True:
            if i < n and starts[i] <= t:  # busy: wait for its end
                if ends[i] > t:
                    t = ends[i]
                i += 1
                continue
            gap = (starts[i] if i < n else float("inf")) - t
            if rem <= gap:
                t += rem
                break
            rem -= gap
            t = starts[i]
        # every gap from s to t is now busy: intervals i0..i-1 and the new time merge into one
        lo = min(s, starts[i0]) if i0 < i else s
        hi = t
        if i < n and starts[i] <= hi:
            hi = ends[i]
            i += 1
        starts[i0:i] = [lo]
        ends[i0:i] = [hi]
        return t

    def prune(self, before: float) -> None:
        """Forget the intervals that end by ``before`` (no later transfer starts earlier)."""
        k = bisect_right(self.ends, before)
        if k:
            del self.starts[:k]
            del self.ends[:k]


class _ReplicaNet:
    """The links one replica's all-to-all crosses: C links (columns), each loaded by some of the
    flows from local GPU g to h (flow ``g * G + h``): ``rows`` lists the flows link by link
    (link c's from ``starts[c]``), so a gather and a sum give every link's load per layer at
    once; and which links are shared."""

    def __init__(self, topo: Topology, gpus: list[int], shared_ids: set[tuple], hidden: int,
                 plan: Any = None) -> None:
        G = len(gpus)
        node = [topo.node_of(g) for g in gpus]
        nodes = sorted(set(node))
        self.any_cross = len(nodes) > 1
        bpt = hidden * BF16_BYTES
        nic_of = (lambda i: ("nic", gpus[i])) if topo.nic == "gpu" else (lambda i: ("nicn", node[i]))
        spine = self.any_cross and topo.spine_oversubscription > 1.0
        spine_bw = (topo.gpus_per_node if topo.nic == "gpu" else 1) * topo.nic_bytes_per_s / \
            topo.spine_oversubscription
        cols: dict[tuple, int] = {}  # (link id, "out" | "in") -> column
        spec: list[tuple[float, float]] = []  # per column (bandwidth, latency)
        pairs: list[tuple[int, int]] = []  # (row, column)

        def col(key: tuple, bw: float, lat: float) -> int:
            if key not in cols:
                cols[key] = len(spec)
                spec.append((bw, lat))
            return cols[key]

        for i in range(G):
            for j in range(G):
                if i == j:
                    continue
                row = i * G + j
                if node[i] == node[j]:
                    links = [((("nv", gpus[i]), "out"), topo.nvlink_bytes_per_s, topo.nvlink_latency_s),
                             ((("nv", gpus[j]), "in"), topo.nvlink_bytes_per_s, topo.nvlink_latency_s)]
                else:
                    links = [((nic_of(i), "out"), topo.nic_bytes_per_s, topo.nic_latency_s),
                             ((nic_of(j), "in"), topo.nic_bytes_per_s, topo.nic_latency_s)]
                    if spine:
                        links += [((("spine", node[i]), "out"), spine_bw, 0.0),
                                  ((("spine", node[j]), "in"), spine_bw, 0.0)]
                for key, bw, lat in links:
                    pairs.append((row, col(key, bw, lat)))
        # W as a gather of the flows by link, then a sum per link (no BLAS: a matmul this size
        # may start threads, and on a loaded machine that costs far more than the product)
        pairs.sort(key=lambda rc: (rc[1], rc[0]))
        self.rows = np.array([r for r, _ in pairs], dtype=np.int64)
        starts = np.searchsorted(np.array([c for _, c in pairs]), np.arange(len(spec)))
        self.starts = starts.astype(np.int64)
        bw = np.array([b for b, _ in spec])
        lat = np.array([x for _, x in spec])
        self.bpt = bpt
        self.scale = bpt / bw  # (C,) seconds per token
        self.lat = lat
        self.base = topo.nic_latency_s if self.any_cross else topo.nvlink_latency_s
        self.nv_lat = topo.nvlink_latency_s
        # the shared links: (link id, egress column, ingress column, bandwidth, latency)
        self.shared = [(lid, cols[(lid, "out")], cols[(lid, "in")], spec[cols[(lid, "out")]][0],
                        spec[cols[(lid, "out")]][1])
                       for lid in sorted({k[0] for k in cols if k[0] in shared_ids})]
        self.rows_t = None  # (the flows in split_links' order, when first needed)
        self.unshared = np.ones(len(spec), dtype=bool)
        for _, co, ci, _, _ in self.shared:
            self.unshared[co] = self.unshared[ci] = False
        #: one node and every expert on one GPU: each (source GPU, key)'s tokens leave on the
        #: source's NVLink and enter on the owner's (none when they are the same GPU)
        self.fast_idx = None
        if plan is not None and plan.single_owner and not self.any_cross:
            L, E = plan.L, plan.E
            layer = np.arange(L * E) // E  # (L*E,)
            owner = (plan.lg_index - layer * G)[None, :]  # (1, L*E) local owner GPU of each key
            src = np.arange(G)[:, None]  # (G, 1)
            #: (G, L*E) 1 where a source GPU's tokens of a key leave the GPU, else 0
            self.fast_moves = (owner != src).astype(np.int64)
            #: (L*E,) each key's (layer, owner) index in an (L, G) table
            self.fast_idx = plan.lg_index
            self.fast_shape = (L, G)
            self.fast_scale = bpt / topo.nvlink_bytes_per_s

    def fast_times(self, src_counts: np.ndarray) -> list[float]:
        """:meth:`times` of :func:`gpu_traffic`'s static placement from the source counts directly
        (one node, single owners, no shared link): per layer ``latency + max(bytes a GPU sends,
        bytes a GPU receives) / NVLink bandwidth``. Token counts are integers: summed exactly."""
        L, G = self.fast_shape
        moved = src_counts * self.fast_moves  # (G, L*E) tokens leaving their source GPU
        sent = moved.reshape(G, L, -1).sum(axis=2).max(axis=0)  # (L,) most sent by one GPU
        recv = np.bincount(self.fast_idx, weights=moved.sum(axis=0), minlength=L * G)
        t = np.maximum(sent, recv.reshape(L, G).max(axis=1))  # (L,) tokens on the busiest link
        t *= self.fast_scale
        t += self.nv_lat
        return t.tolist()

    def times(self, traffic: np.ndarray) -> tuple[np.ndarray, list]:
        """Per layer the all-to-all time over the unshared links (L,), and per shared link its
        (L,) egress and ingress bytes of the dispatch: ``(link id, out, in, bandwidth, latency)``.
        Float traffic from :data:`~sim.world.token_split.COMPILED_MIN_GPUS` GPUs: the links'
        loads compiled (:func:`sim.world.compiled_links.link_loads`, numpy's reduceat sums)."""
        L, G = traffic.shape[0], traffic.shape[1]
        if not len(self.rows):  # no link between the GPUs (cannot happen with G > 1)
            return np.full(L, self.base), []
        kern = compiled_kernels(G) if traffic.dtype == np.float64 else None
        if kern is not None:  # the same sums without gathering the flows (link_loads' doc)
            load = kern.links.link_loads(np.ascontiguousarray(traffic), self.rows, self.starts,
                                         np.empty((L, len(self.starts))))
        else:
            flows = traffic.reshape(L, G * G)[:, self.rows]  # (L, P) each flow once per link
            load = np.add.reduceat(flows, self.starts, axis=1).astype(np.float64)  # (L, C) tokens
        return self.load_times(load)

    def split_times(self, plan: Any, src_counts: np.ndarray, share_p: np.ndarray
                    ) -> tuple[np.ndarray, list] | None:
        """:meth:`times` of ``gpu_traffic(plan, src_counts, share_p)`` (a share per holder pair,
        :mod:`sim.world.pair_split`) where that product is the compiled chain
        (:func:`sim.world.compiled.traffic_share`) and the counts are key-major
        (``src_counts.T`` (L*E, G) int32, :func:`sim.world.traffic.count_tokens`): the loads of
        :func:`sim.world.compiled_links.split_links`, the same floats without the (L, G, G)
        traffic; else None."""
        L, E, G = plan.L, plan.E, src_counts.shape[0]
        km = src_counts.T
        if km.dtype != np.int32 or not km.flags.c_contiguous or not len(self.rows) or \
                E > 256 or G % 2:
            return None
        kern = compiled_kernels(G)
        if kern is None or not chain_matches_blas(kern, L, E, G):
            return None
        if self.rows_t is None:  # the flows g * G + h as h * G + g (split_links' order)
            self.rows_t = (self.rows % G) * G + self.rows // G
        load = kern.links.split_links(km, share_p, plan.pair_key, plan.pair_gpu, E, self.rows_t,
                                      self.starts, np.empty((L, len(self.starts))),
                                      kern.PARALLEL_LAYERS)
        if self.shared:
            return self.load_times(load)
        return kern.links.link_times(load, self.lat, self.scale, self.unshared, self.base), []

    def load_times(self, load: np.ndarray) -> tuple[np.ndarray, list]:
        """:meth:`times` from the links' loads ``load`` (L, C) tokens."""
        t = np.where(load > 0, self.lat + load * self.scale, 0.0)  # (L, C)
        shared_bytes = []
        if self.shared:
            for lid, co, ci, bw, lat in self.shared:
                shared_bytes.append((lid, (load[:, co] * self.bpt).tolist(),
                                     (load[:, ci] * self.bpt).tolist(), bw, lat))
            t = t[:, self.unshared]
        best = t.max(axis=1, initial=self.base)
        return best, shared_bytes


class Network:
    """The cluster's network links (run state): per replica its links, and the shared ones."""

    def __init__(self, topo: Topology, hidden: int, plan: Any = None) -> None:
        """``plan`` (a :class:`~sim.serving.plan.ClusterPlan`) turns the source counts of
        :meth:`layer_times` into traffic (:func:`gpu_traffic`); without it, give traffic."""
        self.topo, self.hidden, self.plan = topo, hidden, plan
        users: dict[tuple, set[int]] = {}
        for r in range(topo.num_replicas):
            if not topo.spans_nodes(r):
                continue  # a replica in one node crosses only its own GPUs' NVLink
            for g in topo.replicas[r]:
                n = topo.node_of(g)
                for lid in (("nic", g) if topo.nic == "gpu" else ("nicn", n), ("spine", n)):
                    users.setdefault(lid, set()).add(r)
        shared = {lid for lid, rs in users.items() if len(rs) > 1}
        contending = set().union(*(users[lid] for lid in shared)) if shared else set()
        #: per shared link id, its (egress, ingress) resources
        self.links: dict[tuple, tuple[SharedLink, SharedLink]] = {}
        self._shared_ids = shared
        self._rep: dict[int, _ReplicaNet] = {}  # by the replica's first GPU
        #: per replica using shared links, when it last walked (no later booking is earlier)
        self._last: dict[int, float] = {r: 0.0 for r in sorted(contending)}
        self._cache: tuple[Any, Any, Any] = (None, None, None)

    def _replica(self, gpus: list[int]) -> _ReplicaNet:
        rn = self._rep.get(gpus[0])
        if rn is None:
            rn = self._rep[gpus[0]] = _ReplicaNet(self.topo, gpus, self._shared_ids, self.hidden,
                                                  self.plan)
        return rn

    def layer_times(self, gpus: list[int], a2a: Any, t: float, kern: Any = None
                    ) -> tuple[list[float], Any]:
        """For a replica (its global GPU ids) and an iteration's all-to-all, walked from time
        ``t``: per layer the all-to-all time, and ``None`` or, when the replica uses shared
        links, ``book(l, combine, t) -> end`` that times layer l's dispatch (``combine`` False)
        or combine from ``t`` on the links (the per-layer times then cover only the unshared
        links).

        ``a2a``: the traffic (L, G, G) of :func:`gpu_traffic`, or ``(src_counts, share)`` as
        :func:`sim.serving.layer_costs.layer_costs` gives it (``share`` None: the plan's placement).
        ``kern``: the one-node, single-owner times compiled
        (:func:`sim.serving.compiled_walk.a2a_owned`, :meth:`_ReplicaNet.fast_times`' floats)."""
        last = self._cache
        if last[0] is a2a:
            return last[1], last[2]
        rn = self._replica(gpus)
        if isinstance(a2a, tuple):
            src_counts, share = a2a
            if share is None and rn.fast_idx is not None:
                times = rn.fast_times(src_counts) if kern is None else kern.a2a_owned(
                    src_counts, rn.fast_moves, rn.fast_idx, *rn.fast_shape, rn.fast_scale,
                    rn.nv_lat).tolist()
                self._cache = (a2a, times, None)
                return times, None
            split = None if share is None or share.ndim != 1 else \
                rn.split_times(self.plan, src_counts, share)
            best, shared_bytes = split if split is not None else \
                rn.times(gpu_traffic(self.plan, src_counts, share))
        else:
            best, shared_bytes = rn.times(a2a)
        times = best.tolist()
        book = None
        if shared_bytes:
            r = self.topo.replica_of(gpus[0])
            self._last[r] = t
            cutoff = min(self._last.values())
            pairs = [self._link(lid, bw) for lid, _, _, bw, _ in shared_bytes]
            for eg, ig in pairs:
                eg.prune(cutoff)
                ig.prune(cutoff)
            # per all-to-all, (link, bytes per layer, latency); the combine reverses the flows:
            # what left on a link's egress comes back on its ingress
            disp = [c for (eg, ig), (_, ob, ib, _, lat) in zip(pairs, shared_bytes)
                    for c in ((eg.book, ob, lat), (ig.book, ib, lat))]
            comb = [c for (eg, ig), (_, ob, ib, _, lat) in zip(pairs, shared_bytes)
                    for c in ((eg.book, ib, lat), (ig.book, ob, lat))]

            def book(l: int, combine: bool, t0: float) -> float:
                end = t0 + times[l]
                for link_book, nb, lat in (comb if combine else disp):
                    b = nb[l]
                    if b > 0:
                        fin = link_book(t0 + lat, b)
                        if fin > end:
                            end = fin
                return end

        self._cache = (a2a, times, book)
        return times, book

    def _link(self, lid: tuple, bw: float) -> tuple[SharedLink, SharedLink]:
        pair = self.links.get(lid)
        if pair is None:
            pair = self.links[lid] = (SharedLink(bw), SharedLink(bw))
        return pair
