"""One layer walk: an iteration of a replica, layer by layer, with the cache decisions of the
policies, the copies they cause, and the time it all takes.

Shape legend: T tokens in the iteration's batch, L MoE layers, K top-k, E experts per layer,
G GPUs of the replica. A cache key is ``layer * E + expert``.

Per iteration, with numpy over all tokens and layers at once, the walk counts tokens per
(layer, expert), the GPU each expert computes on (the plan's placement) and each GPU's
expert-compute time per layer (cost model). Then, per layer: attention, gating, all-to-all
dispatch; each GPU's cache policy serves the keys the GPU needs at that layer (cache step
``rep.step + layer``; the iteration's keys of the GPU are the ``active`` set); misses are copied
over the GPU's host link and the layer waits for them (and for prefetched keys still in flight);
experts compute; all-to-all combine. The next-layer prefetch policy may then start copies for
layer + 1 at this layer's gate time (:mod:`sim.prediction`).

Decisions and timing are two steps of the same walk. The decisions of a layer never depend on
time, so when no next-layer prefetch interleaves with them, each GPU's cache serves all layers of
the iteration in one ``access_steps`` call (the policies' batched entry to the same rule); with
next-layer prefetch, layer by layer. Timing is then one loop (:meth:`LayerWalk._time_layers`)
whatever the decisions came from; recording a Chrome trace only makes it visit every GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.cache_log import CacheLog
from sim.errors import MoesimError
from sim.layer_costs import batch_shape, layer_costs
from sim.network import Network, count_tokens
from sim.plan import ClusterPlan
from sim.policies.base import CachePolicy, PrefetchPolicy
from sim.policies.cache._stamped import serve_lru_iteration
from sim.prediction import Prediction
from sim.state import GpuState, Recorder, ReplicaState, Requests, Tallies

#: the largest pool (rows x keys) whose prefix counts :class:`LayerWalk` keeps (int32: 128 MiB)
PREFIX_MAX_ENTRIES = 1 << 25


def pool_prefix_counts(pool_keys: np.ndarray, num_keys: int) -> np.ndarray | None:
    """(N+1, num_keys) int32: row ``i`` counts each key over pool rows ``0..i-1``; None when it
    would exceed :data:`PREFIX_MAX_ENTRIES` entries."""
    N = len(pool_keys)
    if (N + 1) * num_keys > PREFIX_MAX_ENTRIES:
        return None
    out = np.zeros((N + 1, num_keys), dtype=np.int32)
    flat_out = out.reshape(-1)
    width = pool_keys.shape[1] if pool_keys.ndim == 2 else 1
    step = max(1, (1 << 20) // max(width, 1))
    # the increments as an int32 array, the dtype of the counts: np.add.at then takes its fast
    # path (a Python 1 goes through a cast per element: about 20x slower on the bench's pool)
    ones = np.ones(min(N, step) * width, dtype=np.int32)
    for a in range(0, N, step):  # row i + 1 counts row i's keys (a row may hold a key twice)
        b = min(N, a + step)
        flat = pool_keys[a:b].astype(np.intp)
        flat += (np.arange(a + 1, b + 1, dtype=np.intp) * num_keys)[:, None]
        np.add.at(flat_out, flat.ravel(), ones[:flat.size])
    # the running sum down the rows, in blocks of rows that stay in cache (one cumsum over the
    # whole array walks it column by column: about twice as slow); integers, exact in any order
    for a in range(0, N + 1, 256):
        blk = out[a:a + 256]
        np.cumsum(blk, axis=0, dtype=np.int32, out=blk)
        if a:
            blk += out[a - 1]
    return out


def entry_range(n: int, lo: int, hi: int) -> tuple[int, int, int]:
    """Rows ``lo .. hi - 1`` of a pool entry of ``n`` rows, counted around the entry (wrapping):
    ``(r0, r1, laps)`` such that their tokens per key are, with ``C`` the prefix counts and ``o``
    the entry's first pool row, ``C[o + r1] - C[o + r0] + laps * (C[o + n] - C[o])``."""
    lap0, r0 = divmod(lo, n)
    lap1, r1 = divmod(hi, n)
    return r0, r1, lap1 - lap0


class LayerWalk:
    def __init__(self, plan: ClusterPlan, cost: Any, req: Requests, tallies: Tallies,
                 prefetch: PrefetchPolicy, predictor: PrefetchPolicy | None, cache_name: str,
                 recorder: Recorder | None = None, log: CacheLog | None = None,
                 arrays: bool = True) -> None:
        self.plan, self.cost, self.req, self.t = plan, cost, req, tallies
        self.cache_name = cache_name
        self.recorder, self.log = recorder, log
        self.L, self.E, self.K = plan.L, plan.E, plan.K
        self.eb = plan.expert_bytes
        #: prefetch and the per-request hooks of the caches (sim/prediction.py)
        self.pred = Prediction(plan, cost, req, prefetch, predictor, cache_name, recorder, log)
        # per-copy setup beyond a fetch's first copy, as link time (bytes at the link's rate)
        bw = cost.host_link_bytes_per_s
        over = getattr(cost, "host_copy_overhead_s", 0.0)
        self.pad_bytes = over * bw if over and bw != float("inf") else 0.0
        #: the network links the all-to-all crosses (sim/network.py)
        self.net = Network(plan.topo, plan.hidden_size, plan)
        #: (N+1, L*E) int32: tokens per key over the pool's rows before each row, where it fits
        #: (``arrays``: policy.cache_arrays; off, every token's keys are counted)
        self.prefix = pool_prefix_counts(plan.pool_keys, self.L * self.E) if arrays else None
        self._stacks: dict[tuple[int, ...], np.ndarray] = {}  # (see _sum_down)

    def _key_counts(self, batch: np.ndarray, alloc: np.ndarray, shape: Any) -> np.ndarray:
        """(L*E,) int64: tokens of the batch per key. Every request's first token this iteration
        is counted from its pool row; the rest of a chunk is a range of its pool entry's rows
        (wrapping around the entry): a difference of two prefix-count rows, plus whole laps.
        Without the prefix counts (a big pool), every token's keys are counted."""
        LE, plan, req = self.L * self.E, self.plan, self.req
        C = self.prefix
        if C is None:
            return np.bincount(plan.pool_keys[shape.rows].ravel(), minlength=LE)
        off, ln = req.offset[batch], req.length[batch]
        s0 = req.ctx[batch] % ln  # (B,) each request's first row inside its entry
        counts = np.bincount(plan.pool_keys[off + s0].ravel(), minlength=LE)
        big = np.flatnonzero(alloc > 1)
        if len(big):
            for o, n, x, a in zip(off[big].tolist(), ln[big].tolist(), s0[big].tolist(),
                                  alloc[big].tolist()):
                r0, r1, laps = entry_range(n, x + 1, x + a)  # rows x + 1 .. x + a - 1
                counts += C[o + r1]
                counts -= C[o + r0]
                if laps:
                    counts += laps * (C[o + n].astype(np.int64) - C[o])
        return counts

    def _count(self, batch: np.ndarray, alloc: np.ndarray, shape: Any, G: int) -> tuple[np.ndarray, Any]:
        """(L*E,) tokens per key of the batch, and what the all-to-all needs of them: as
        :func:`sim.network.count_tokens` counts them from the tokens' rows, or from the prefix
        counts (the same integers: tests/sim/test_fast_path.py)."""
        plan = self.plan
        if self.prefix is None:
            return count_tokens(plan, plan.pool_keys[shape.rows], G)
        if G // plan.tensor_parallel <= 1 or plan.moe_tp or shape.tokens == 0:
            return self._key_counts(batch, alloc, shape), None
        sc = self._source_counts(batch, alloc, G)
        return sc.sum(axis=0), sc

    def _source_counts(self, batch: np.ndarray, alloc: np.ndarray, G: int) -> np.ndarray:
        """(G, L*E) int64 tokens per source GPU and key (:func:`sim.network.source_counts`: the
        batch's T tokens in contiguous even blocks over the G GPUs), from the prefix counts: a
        one-token request's keys from its pool row, a chunk cut at the blocks' bounds into ranges
        of its pool entry's rows (wrapping around the entry)."""
        LE, plan, req, C = self.L * self.E, self.plan, self.req, self.prefix
        T = int(alloc.sum())
        off, ln = req.offset[batch], req.length[batch]
        s0 = req.ctx[batch] % ln  # (B,) each request's first row inside its entry
        first = np.cumsum(alloc) - alloc  # (B,) each request's first token in the batch
        one = alloc == 1
        src1 = (first[one] * G) // T  # network.token_sources of the one-token requests
        idx = np.take(plan.pool_keys, off[one] + s0[one], axis=0).astype(np.intp)  # (B1, L*K)
        idx += (src1 * LE)[:, None]
        per = np.zeros(G * LE, dtype=np.int64)
        np.add.at(per, idx.ravel(), 1)  # (a bincount: with intp indices the faster of the two)
        per = per.reshape(G, LE)
        big = np.flatnonzero(~one)
        if len(big):
            # each chunk cut at the blocks' bounds: per piece, its GPU and the prefix-count rows
            # it adds (+1), subtracts (-1) and, for whole laps of its entry, (end - start) * laps;
            # summed at once (integers: exact in any order)
            bounds = ((np.arange(G + 1) * T + G - 1) // G).tolist()  # GPU g: tokens [b_g, b_g+1)
            gs: list[int] = []
            rows: list[int] = []
            coef: list[int] = []
            for f, o, n, x, a in zip(first[big].tolist(), off[big].tolist(), ln[big].tolist(),
                                     s0[big].tolist(), alloc[big].tolist()):
                lo = f
                g = (f * G) // T
                while lo < f + a:
                    hi = min(f + a, bounds[g + 1])
                    if hi > lo:  # rows x + (lo - f) .. x + (hi - f) - 1 of the entry
                        r0, r1, laps = entry_range(n, x + lo - f, x + hi - f)
                        gs += (g, g)
                        rows += (o + r1, o + r0)
                        coef += (1, -1)
                        if laps:
                            gs += (g, g)
                            rows += (o + n, o)
                            coef += (laps, -laps)
                        lo = hi
                    g += 1
            # as float64 (BLAS): integers below 2**53 (counts of the pool's rows), summed exactly
            M = np.zeros((G, len(rows)))
            M[gs, np.arange(len(rows))] = coef
            per += (M @ C[rows]).astype(np.int64)
        return per

    # ------------------------------------------------------------------------------------------
    def iteration(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray, t0: float) -> float:
        """Walk the layers of one iteration; return its duration (s). Mutates caches and links."""
        L, E, plan, cost, tl = self.L, self.E, self.plan, self.cost, self.t
        if not (len(alloc) and alloc.min() > 0):
            keep = alloc > 0
            batch, alloc = batch[keep], alloc[keep]
        # the tokens' pool rows: counted from when there are no prefix counts, or read by a
        # prefetch policy (the next-layer oracles, learned_next)
        shape = batch_shape(self.req, batch, alloc, rows=self.prefix is None or self.pred.pf_rows)
        G = len(rep.gpus)
        # (L*E,) tokens per key, and what the all-to-all needs of them (sim.network)
        counts_flat, a2a_tokens = self._count(batch, alloc, shape, G)
        tl.recorded_le += counts_flat.reshape(L, E)
        lc = layer_costs(plan, cost, counts_flat, shape, G, a2a_tokens)
        comp_arr, load_g = lc.comp, lc.load
        tl.computed_le += lc.computed
        sum_load = load_g.sum(axis=1)  # (L,)
        if sum_load.min() > 0:  # every layer has tokens (the usual case): no selection
            tl.iter_imbalance_sum += float((load_g.max(axis=1) * G / sum_load).sum())
            tl.iter_layers += L
        else:
            nz = sum_load > 0
            tl.iter_imbalance_sum += float((load_g.max(axis=1)[nz] * G / sum_load[nz]).sum())
            tl.iter_layers += int(nz.sum())
        tl.gpu_tokens[rep.index] += load_g.sum(axis=0)
        attn, gate, a2a = lc.attn, lc.gate, lc.a2a
        pred = self.pred
        pf_cost = pred.begin(shape.rows)
        used_flat = counts_flat > 0  # (L*E,)
        states = rep.states
        step0 = rep.step
        rep.step += L
        stall = [st.stall_s for st in states]
        rec = self.recorder if self.recorder is not None and self.recorder.want(t0) else None
        t = t0 + lc.pre + pred.take_inline(rep)
        gaps = (attn, gate, pf_cost, a2a)
        miss_lg = None
        if rep.stamps is not None and not pred.pf_next and not any(st.inflight for st in states):
            miss_lg = self._serve_arrays(rep, used_flat)
        if miss_lg is not None:  # every GPU's misses per layer, served with numpy
            t_fast = None if rec is not None or self.pad_bytes else \
                self._time_counts(miss_lg, t, gaps, comp_arr, states, stall)
            t = t_fast if t_fast is not None else \
                self._time_layers(enumerate(miss_lg.tolist()), t, gaps, comp_arr.tolist(), states,
                                  None, stall, rec)
            if pred.observers:
                for l in range(L):
                    pred.observe(rep, l, used_flat)
        elif pred.pf_next:
            comp = comp_arr.tolist()  # [L][G] seconds
            need, active = self.needs(states, used_flat)
            for l in range(L):
                miss = [self.serve_layer(st, step0 + l, need[g][l], active[g])
                        for g, st in enumerate(states)]
                t_gate = t + attn + gate + pf_cost
                t = self._time_layers(((l, miss),), t, gaps, comp, states, need, stall, rec)
                pred.next_layer(rep, l, used_flat, step0, t_gate, need)
                t += pred.take_inline(rep)
        else:
            comp = comp_arr.tolist()
            need, active = self.needs(states, used_flat)
            nones = [None] * L
            miss_g = [self._serve_all(st, step0, need[g], active[g]) or nones
                      for g, st in enumerate(states)]
            # zip: per layer l, miss[g] = GPU g's misses at layer l
            t = self._time_layers(enumerate(zip(*miss_g)), t, gaps, comp, states, need, stall, rec)
            if pred.observers:
                for l in range(L):
                    pred.observe(rep, l, used_flat)
        # busy += c layer by layer, per GPU (np.add.accumulate is sequential: the same floats)
        busy = self._sum_down([st.busy_s for st in states], comp_arr)
        for g, st in enumerate(states):
            st.busy_s = float(busy[g])
            st.stall_s = stall[g]
        return t - t0

    def _sum_down(self, start: list[float], rows: np.ndarray) -> np.ndarray:
        """(G,) ``start[g] + rows[0, g] + rows[1, g] + ...`` added in that order (np.add.accumulate
        is sequential: the same floats as a Python loop), ``rows`` (L, G): the stack of ``start``
        above ``rows`` is built in a reused float64 buffer (what ``np.vstack`` would build)."""
        if rows.dtype != np.float64:
            return np.add.accumulate(np.vstack([start, rows]), axis=0)[-1]
        buf = self._stacks.get(rows.shape)
        if buf is None:
            buf = self._stacks[rows.shape] = np.empty((rows.shape[0] + 1, *rows.shape[1:]))
        buf[0] = start
        buf[1:] = rows
        return np.add.accumulate(buf, axis=0)[-1]

    # -- decisions ------------------------------------------------------------------------------
    def _check(self, st: GpuState, cache: CachePolicy) -> None:
        nres = len(cache.resident)
        if nres > st.peak_resident:
            st.peak_resident = nres
            if nres > st.capacity:
                raise MoesimError(f"cache policy {self.cache_name!r} holds {nres} experts on GPU "
                                  f"{st.gpu}, over its budget {st.capacity}")

    def _serve_arrays(self, rep: ReplicaState, used_flat: np.ndarray) -> np.ndarray | None:
        """Every GPU's steps of the iteration through the replica's array caches (LRU as stamps,
        :func:`sim.policies.cache._stamped.serve_lru_iteration`): the misses per layer and GPU, or
        None when a step is not in array form (the general path serves it)."""
        states = rep.states
        miss = serve_lru_iteration(rep.stamps, used_flat)
        if miss is None:
            return None
        for st, nres in zip(states, rep.stamps.nres.tolist()):
            if nres > st.peak_resident:  # (at most the slots: the arrays never exceed them)
                st.peak_resident = nres
        return miss

    def serve_layer(self, st: GpuState, step: int, keyset: Any, active: Any) -> Any:
        """One layer's keys through a GPU's cache: the misses (a list), or None when no access."""
        cache = st.cache
        if cache is None or not keyset:
            return None
        if self.log is not None:
            self.log.add(st.gpu, "access", step, keyset, active)
        misses, _ = cache.access(step, keyset, active)
        self._check(st, cache)
        return misses

    def _serve_all(self, st: GpuState, step0: int, need: list[Any], active: Any) -> Any:
        """All layers' keys through a GPU's cache at once: per layer the misses (a list where
        prefetched keys are in flight and must be told apart, else a count), or None."""
        cache = st.cache
        if cache is None or not active:
            return None
        if st.inflight:
            return [self.serve_layer(st, step0 + l, keys, active) for l, keys in enumerate(need)]
        if self.log is not None:
            for l, keys in enumerate(need):
                if keys:
                    self.log.add(st.gpu, "access", step0 + l, keys, active)
        nm, _ = cache.access_steps(step0, need, active)
        self._check(st, cache)
        return nm

    def needs(self, states: list[GpuState], used_flat: np.ndarray) -> tuple[list[list[Any]], list[Any]]:
        """Per GPU: the set of keys it needs at each layer, and their union over the iteration.

        A (GPU, layer) whose every expert is used reuses one prebuilt frozenset; only partly used
        ones are built key by key."""
        L, E, plan = self.L, self.E, self.plan
        G = len(states)
        if not plan.single_owner:
            need: list[list[Any]] = [[set() for _ in range(L)] if st.cache is not None else []
                                     for st in states]
            active: list[Any] = [set() for _ in states]
            sel = used_flat[plan.pair_key]
            for k, g in zip(plan.pair_key[sel].tolist(), plan.pair_gpu[sel].tolist()):
                ng = need[g]
                if ng:
                    ng[k // E].add(k)
                    active[g].add(k)
            return need, active
        used_n = np.bincount(plan.lg_index, weights=used_flat, minlength=L * G).reshape(L, G)  # (L, G)
        state = np.where(used_n == plan.home_n, 2, np.where(used_n > 0, 1, 0)).T.tolist()  # [G][L]
        need, active = [], []
        empty: frozenset[int] = frozenset()
        for g, st in enumerate(states):
            if st.cache is None:
                need.append([])
                active.append(empty)
                continue
            full = st.layer_sets
            row = state[g]
            if 1 not in row:
                ng = [full[l] if row[l] else empty for l in range(L)]
            else:
                ng = [full[l] if row[l] == 2 else
                      (frozenset(k for k in full[l] if used_flat[k]) if row[l] else empty)
                      for l in range(L)]
            need.append(ng)
            active.append(st.all_keys if 0 not in row and 1 not in row else frozenset().union(*ng))
        return need, active

    # -- timing ---------------------------------------------------------------------------------
    def _time_layers(self, layers: Any, t: float, gaps: tuple[float, float, float, Any],
                     comp: list[list[float]], states: list[GpuState], need: list[list[Any]],
                     stall: list[float], rec: Recorder | None) -> float:
        """Time ``layers`` (pairs of a layer and each GPU's misses there: a count, a list, or None
        for no access) from ``t``; returns when the next layer starts.

        A layer (``gaps``): attention, gating, the prediction's cost, all-to-all dispatch, each
        GPU's experts once its copies are in, all-to-all combine. The all-to-all's traffic (the
        last gap) is timed on the network's links (:meth:`sim.network.Network.layer_times`): a
        time per layer, or, where the replica shares links with others, booked on them. A GPU
        that waits for no copy starts its experts when the dispatch is done, and the layer ends
        when the last GPU's experts end (``ready + max(comp)`` covers every GPU that did not
        wait, exactly: float addition is monotonic). Recording only writes down what this loop computed."""
        attn, gate, pf_cost, traffic = gaps  # added one by one, in this order (same floats)
        if traffic is None:
            a2a_l, book = [0.0] * self.L, None
        else:
            a2a_l, book = self.net.layer_times([st.gpu for st in states], traffic, t)
        eb, pad = self.eb, self.pad_bytes
        fetch = [st.link.fetch for st in states]
        inflights = [st.inflight for st in states]
        waits = any(inflights)  # prefetched copies in flight on some GPU (none are added here)
        for l, miss in layers:
            t_gate = t + attn + gate + pf_cost
            ready = t_gate + a2a_l[l] if book is None else book(l, False, t_gate)
            comp_l = comp[l]
            end = ready + max(comp_l)
            if end < ready:
                end = ready
            copies = {} if rec is not None else None  # g -> (experts copied, copy end)
            starts = {} if rec is not None else None  # g -> experts start, when after ready
            for g, m in enumerate(miss):
                if m is None:
                    continue
                start = ready
                if waits and inflights[g]:
                    start = self._wait_prefetched(states[g], need[g][l], m, start)
                nm = m if m.__class__ is int else len(m)
                if nm:
                    if pad and nm > 1:  # the overhead occupies the link but moves no bytes
                        link = states[g].link
                        fin = link.fetch(t_gate, nm * eb + (nm - 1) * pad)
                        link.bytes_total -= (nm - 1) * pad
                    else:
                        fin = fetch[g](t_gate, nm * eb)
                    if fin > start:
                        start = fin
                    if copies is not None:
                        copies[g] = (nm, fin)
                if start > ready:
                    stall[g] += start - ready
                    e_end = start + comp_l[g]
                    if e_end > end:
                        end = e_end
                    if starts is not None:
                        starts[g] = start
            t_next = end + a2a_l[l] if book is None else book(l, True, end)
            if rec is not None:
                self._record_layer(rec, l, states, (t, t_gate, ready, end, t_next), attn, comp_l,
                                   copies, starts)
            t = t_next
        return t

    def _time_counts(self, miss: np.ndarray, t: float, gaps: tuple[float, float, float, Any],
                     comp_arr: np.ndarray, states: list[GpuState], stall: list[float]
                     ) -> float | None:
        """:meth:`_time_layers` for misses given as counts ``miss`` (L, G), no prefetched copy in
        flight, nothing recorded, no per-copy overhead: the same float operations, each on the
        same operands, in the same order per GPU; None (nothing changed) where that does not
        hold (the caller then times it the general way).

        Why it holds. Every host link is idle or done with its previous fetch when a layer's
        copies start (checked for the first start of the iteration against the link's clock;
        later starts are later, and a layer ends after its copies), so each copy takes
        :meth:`sim.cluster.Link.fetch`'s usual path: it ends at ``start + bytes / bandwidth``, the
        same float for every GPU copying the same number of experts. Per layer then, for each
        distinct count, one end time and the slowest of those GPUs' experts (float addition is
        monotonic: ``max(fin + c_g) == fin + max(c_g)``); the stalls are added per GPU afterwards
        (``np.add.accumulate``, sequential: the same floats), the links' clocks set as their last
        fetch left them. tests/sim/test_fast_path.py holds both to the same metrics.json."""
        links = [st.link for st in states]
        lk = links[0]
        bw, lat, eb = lk.bytes_per_s, lk.latency_s, self.eb
        attn, gate, pf_cost, traffic = gaps  # added one by one, in this order (same floats)
        if eb <= 0 or lat < 0 or min(attn, gate, pf_cost) < 0 or any(
                x.active or x.infinite or x.bytes_per_s != bw or x.latency_s != lat for x in links):
            return None
        if traffic is None:
            a2a_l = [0.0] * len(miss)
        else:  # the all-to-all per layer, as _time_layers has it (links shared with other
            # replicas are booked layer by layer there: that walk is the general one)
            a2a_l, book = self.net.layer_times([st.gpu for st in states], traffic, t)
            if book is not None:
                return None
        first = t + attn + gate + pf_cost + lat  # the earliest copy start of the iteration
        for x in links:
            if x.t > first or (x._solo and x.t + x._solo / bw > first):
                return None
        L = len(miss)
        fetches = miss > 0  # (L, G)
        nbytes = miss.sum(axis=0) * eb  # (G,) int
        if any(x.bytes_total + int(n) >= 2.0 ** 53 for x, n in zip(links, nbytes.tolist())):
            return None  # (the byte totals stay exact integers: their order does not matter)
        top = int(miss.max())
        vals = np.unique(miss[fetches]).tolist() if top > 1 else [1] * top  # distinct copy sizes
        dur = [v * eb / bw for v in vals]  # each copy's duration (Link.fetch: nbytes / bw)
        maxc = comp_arr.max(axis=1).tolist()  # (L,)
        # per distinct copy size, per layer: the slowest GPU copying that many (-inf: none)
        slowest = np.where(miss == np.array(vals, dtype=miss.dtype)[:, None, None], comp_arr,
                           -np.inf).max(axis=2).tolist() if vals else []  # (nv, L)
        nv = len(vals)
        fins: list[float] = []  # (L, nv) each copy's end
        readys: list[float] = []
        starts: list[float] = []
        none = -np.inf
        for l in range(L):
            t_gate = t + attn + gate + pf_cost
            ready = t_gate + a2a_l[l]
            end = ready + maxc[l]
            if end < ready:
                end = ready
            start = t_gate + lat
            readys.append(ready)
            starts.append(start)
            for j in range(nv):
                fin = start + dur[j]
                fins.append(fin)
                cm = slowest[j][l]
                if cm > none and fin > ready:
                    e_end = fin + cm
                    if e_end > end:
                        end = e_end
            t = end + a2a_l[l]
        if vals:
            fin_l = np.array(fins).reshape(L, nv)
            if nv == 1:
                fin_lg = fin_l  # (L, 1): the same end for every GPU copying
            else:
                fin_lg = np.take_along_axis(fin_l, np.searchsorted(vals, np.maximum(miss, 1)),
                                            axis=1)  # (L, G) the end of each GPU's copy
            rd = np.asarray(readys)[:, None]
            late = fetches & (fin_lg > rd)
            inc = np.where(late, fin_lg - rd, 0.0)  # (L, G) each stall, 0.0 elsewhere (x + 0.0 == x)
            stall[:] = self._sum_down(stall, inc).tolist()
            last = (L - 1 - np.argmax(fetches[::-1], axis=0)).tolist()  # (G,) each last copy
            for g, (x, nb) in enumerate(zip(links, nbytes.tolist())):
                if nb:
                    x.bytes_total += nb
                    x.t = starts[last[g]]
                    x._solo = float(int(miss[last[g], g]) * eb)
        return t

    @staticmethod
    def _record_layer(rec: Recorder, l: int, states: list[GpuState], times: tuple, attn: float,
                      comp_l: list[float], copies: dict, starts: dict) -> None:
        """The events of layer ``l`` as :meth:`_time_layers` timed them (it computes, this only
        writes down): per GPU attention, dispatch, its copy, its experts; then the combines."""
        t, t_gate, ready, end, t_next = times
        G = len(states)
        for g, st in enumerate(states):
            rec.add(f"attention L{l}", "compute", st.gpu, t, t + attn)
            if G > 1 and ready > t_gate:
                rec.add(f"a2a dispatch L{l}", "all_to_all", st.gpu, t_gate, ready)
            if g in copies:
                nm, fin = copies[g]
                link = st.link
                rec.add(f"copy L{l} x{nm}", "copy", st.gpu,
                        t_gate if link.infinite else t_gate + link.latency_s, fin)
            c = comp_l[g]
            if c > 0:
                start = starts.get(g, ready)
                rec.add(f"experts L{l}", "compute", st.gpu, start, start + c)
        if G > 1 and t_next > end:
            for st in states:
                rec.add(f"a2a combine L{l}", "all_to_all", st.gpu, end, t_next)

    @staticmethod
    def _wait_prefetched(st: GpuState, keyset: Any, misses: Any, start: float) -> float:
        """A layer needs ``keyset``; the ones prefetched and still in flight are waited for,
        unless they were evicted before use (a miss: fetched again, the prefetch forgotten)."""
        inflight = st.inflight
        for k in keyset:
            tid = inflight.pop(k, None)
            if tid is not None:
                if k in misses:
                    st.link.forget(tid)
                    continue
                st.prefetch_used += 1
                fin = st.link.finish(tid)
                if fin > start:
                    start = fin
        return start
