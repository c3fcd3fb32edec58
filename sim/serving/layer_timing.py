"""The time of an iteration's layers, once the caches have decided each GPU's misses: the
copies on the host links, the waits for them and for prefetched keys in flight, the experts,
the all-to-all on the network's links; and the events a Chrome trace records of them.

:class:`sim.serving.walk.LayerWalk` makes one :class:`LayerTiming` and calls it every iteration:
:meth:`LayerTiming.time_layers` (the general loop, whatever the decisions came from; recording
only makes it visit every GPU) or, for misses counted with numpy and nothing in flight,
:meth:`LayerTiming.time_counts` (the same floats, per distinct copy size);
:meth:`LayerTiming.sum_down` adds each GPU's busy time layer by layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.serving.plan import ClusterPlan
from sim.serving.state import GpuState, Recorder
from sim.world.network import Network


class LayerTiming:
    def __init__(self, plan: ClusterPlan, cost: Any) -> None:
        self.eb = plan.expert_bytes
        # per-copy setup beyond a fetch's first copy, as link time (bytes at the link's rate)
        bw = cost.host_link_bytes_per_s
        over = getattr(cost, "host_copy_overhead_s", 0.0)
        self.pad_bytes = over * bw if over and bw != float("inf") else 0.0
        #: the network links the all-to-all crosses (sim/world/network.py)
        self.net = Network(plan.topo, plan.hidden_size, plan)
        self._stacks: dict[tuple[int, ...], np.ndarray] = {}  # (see sum_down)
        #: offload.layer_streaming: bytes each GPU copies before each layer (None: no streaming)
        self.stream = plan.stream_bytes

    def time_layers(self, layers: Any, t: float, gaps: tuple[float, float, float, Any],
                     comp: list[list[float]], states: list[GpuState], need: list[list[Any]],
                     stall: list[float], rec: Recorder | None) -> float:
        """Time ``layers`` (pairs of a layer and each GPU's misses there: a count, a list, or None
        for no access) from ``t``; returns when the next layer starts.

        A layer (``gaps``): attention, gating, the prediction's cost, all-to-all dispatch, each
        GPU's experts once its copies are in, all-to-all combine. The all-to-all's traffic (the
        last gap) is timed on the network's links (:meth:`sim.world.network.Network.layer_times`): a
        time per layer, or, where the replica shares links with others, booked on them. A GPU
        that waits for no copy starts its experts when the dispatch is done, and the layer ends
        when the last GPU's experts end (``ready + max(comp)`` covers every GPU that did not
        wait, exactly: float addition is monotonic). Recording only writes down what this loop computed."""
        attn, gate, pf_cost, traffic = gaps  # added one by one, in this order (same floats)
        if traffic is None:
            a2a_l, book = [0.0] * len(comp), None
        else:
            a2a_l, book = self.net.layer_times([st.gpu for st in states], traffic, t)
        eb, pad = self.eb, self.pad_bytes
        fetch = [st.link.fetch for st in states]
        inflights = [st.inflight for st in states]
        waits = any(inflights)  # prefetched copies in flight on some GPU (none are added here)
        stream = self.stream
        for l, miss in layers:
            if stream is not None and stream[l]:  # the layer's weights arrive before it runs
                t = self.stream_layer(states, stream[l], t, stall, rec, l)
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
                nm = m if m.__class__ is int else len(m)
                if nm:
                    if pad and nm > 1:  # the overhead occupies the link but moves no bytes
                        link = states[g].link
                        fin = link.fetch(t_gate, nm * eb + (nm - 1) * pad)
                        link.bytes_total -= (nm - 1) * pad
                        states[g].pad_bytes += (nm - 1) * pad
                    else:
                        fin = fetch[g](t_gate, nm * eb)
                    if fin > start:
                        start = fin
                    if copies is not None:
                        copies[g] = (nm, fin)
                if waits and inflights[g]:  # (after its own copy: a demand copy goes first)
                    start = self.wait_prefetched(states[g], need[g][l], m, start)
                if start > ready:
                    stall[g] += start - ready
                    e_end = start + comp_l[g]
                    if e_end > end:
                        end = e_end
                    if starts is not None:
                        starts[g] = start
            t_next = end + a2a_l[l] if book is None else book(l, True, end)
            if rec is not None:
                self.record_layer(rec, l, states, (t, t_gate, ready, end, t_next), attn, comp_l,
                                   copies, starts)
            t = t_next
        return t

    def time_decided(self, decisions: Any, t: float, gaps: tuple[float, float, float, Any],
                     comp_arr: np.ndarray, comp: list[list[float]], states: list[GpuState],
                     need: list[list[Any]], stall: list[float], rec: Recorder | None,
                     kern: Any = None) -> float:
        """:meth:`time_layers` of the walk's :class:`~sim.serving.walk.Serve` decisions; where
        every miss is a count (no prefetched copy in flight), nothing is recorded and a copy has
        no per-copy overhead, by :meth:`time_counts` (a GPU that accessed nothing copies 0: the
        same floats), the caches' decisions all taken first (they were: the walk serves every
        layer of a GPU at once without a next-layer prefetch)."""
        if rec is None and not self.pad_bytes and not any(st.inflight for st in states):
            decisions = list(decisions)
            rows = [d.miss for d in decisions]
            try:  # (a miss is a list only with prefetched keys in flight: none here)
                miss = np.array([[m or 0 for m in row] for row in rows], dtype=np.int64)
            except (TypeError, ValueError):
                miss = None
            if miss is not None and miss.shape == (len(rows), len(states)):
                done = self.time_counts(miss, t, gaps, comp_arr, states, stall, kern)
                if done is not None:
                    return done
        return self.time_layers(((d.layer, d.miss) for d in decisions), t, gaps, comp, states,
                                need, stall, rec)

    def time_counts(self, miss: np.ndarray, t: float, gaps: tuple[float, float, float, Any],
                     comp_arr: np.ndarray, states: list[GpuState], stall: list[float],
                     kern: Any = None) -> float | None:
        """:meth:`time_layers` for misses given as counts ``miss`` (L, G), no prefetched copy in
        flight, nothing recorded, no per-copy overhead: the same float operations, each on the
        same operands, in the same order per GPU; None (nothing changed) where that does not
        hold (the caller then times it the general way).

        Why it holds. Every host link is idle or done with its previous fetch when a layer's
        copies start (checked for the first start of the iteration against the link's clock;
        later starts are later, and a layer ends after its copies), so each copy takes
        :meth:`sim.serving.link.Link.fetch`'s usual path: it ends at ``start + bytes / bandwidth``, the
        same float for every GPU copying the same number of experts. Per layer then, for each
        distinct count, one end time and the slowest of those GPUs' experts (float addition is
        monotonic: ``max(fin + c_g) == fin + max(c_g)``); the stalls are added per GPU afterwards
        (``np.add.accumulate``, sequential: the same floats), the links' clocks set as their last
        fetch left them, and their copies' intervals kept (``Link._lazy``) for a prefetch issued
        during the iteration to pause for. tests/sim/serving/test_fast_path.py holds both to the
        same metrics.json. ``kern``: the recurrence compiled
        (:func:`sim.serving.compiled_walk.time_layers`, the same floats)."""
        links = [st.link for st in states]
        lk = links[0]
        bw, lat, eb = lk.bytes_per_s, lk.latency_s, self.eb
        attn, gate, pf_cost, traffic = gaps  # added one by one, in this order (same floats)
        if eb <= 0 or lat < 0 or min(attn, gate, pf_cost) < 0 or self.stream is not None or any(
                x.pq or x.infinite or x.bytes_per_s != bw or x.latency_s != lat for x in links):
            return None
        if traffic is None:
            a2a_l = [0.0] * len(miss)
        else:  # the all-to-all per layer, as time_layers has it (links shared with other
            # replicas are booked layer by layer there: that walk is the general one)
            a2a_l, book = self.net.layer_times([st.gpu for st in states], traffic, t, kern)
            if book is not None:
                return None
        first = t + attn + gate + pf_cost + lat  # the earliest copy start of the iteration
        for x in links:
            if x.t > first or (x._solo and x.t + x._solo / bw > first):
                return None
        if kern is not None:
            return self._time_compiled(kern, miss, t, gaps, comp_arr, stall, links, a2a_l)
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
            stall[:] = self.sum_down(stall, inc).tolist()
            last = (L - 1 - np.argmax(fetches[::-1], axis=0)).tolist()  # (G,) each last copy
            for g, (x, nb) in enumerate(zip(links, nbytes.tolist())):
                if nb:
                    x.bytes_total += nb
                    x.t = starts[last[g]]
                    x._solo = float(int(miss[last[g], g]) * eb)
                    x.gaps.clear()  # (they ended before this iteration's first copy)
                    x._lazy = (g, starts, fin_lg, fetches)  # listed if a prefetch comes
        return t

    def _time_compiled(self, kern: Any, miss: np.ndarray, t: float, gaps: tuple,
                       comp_arr: np.ndarray, stall: list[float], links: list, a2a_l: Any
                       ) -> float | None:
        """:meth:`time_counts` by :func:`sim.serving.compiled_walk.time_layers`: the kernel writes
        only its own arrays, so where a link's byte total would leave the exact integers nothing
        has changed yet (None)."""
        attn, gate, pf_cost, _ = gaps
        eb = self.eb
        lk = links[0]
        L, G = miss.shape
        st = np.array(stall)
        fin_lg = np.zeros((L, G))
        starts = np.empty(L)
        last = np.empty(G, dtype=np.int64)
        t = kern.time_layers(miss, comp_arr, np.asarray(a2a_l, dtype=np.float64), t, attn, gate,
                             pf_cost, lk.latency_s, eb, lk.bytes_per_s, st, fin_lg, starts, last)
        copied = [(g, lg) for g, lg in enumerate(last.tolist()) if lg >= 0]
        if not copied:
            return t
        per = miss.sum(axis=0).tolist()
        if any(x.bytes_total + n * eb >= 2.0 ** 53 for x, n in zip(links, per)):
            return None  # (the byte totals stay exact integers: their order does not matter)
        stall[:] = st.tolist()
        fetches = miss > 0
        starts_l = starts.tolist()
        for g, lg in copied:
            x = links[g]
            x.bytes_total += per[g] * eb
            x.t = starts_l[lg]
            x._solo = float(int(miss[lg, g]) * eb)
            x.gaps.clear()  # (they ended before this iteration's first copy)
            x._lazy = (g, starts_l, fin_lg, fetches)  # listed if a prefetch comes
        return t

    @staticmethod
    def stream_layer(states: list[GpuState], nbytes: float, t: float, stall: list[float],
                     rec: Recorder | None, l: int) -> float:
        """Layer streaming (HF accelerate's offload hooks, ZeRO-3): each GPU copies its share of
        layer ``l``'s weights, ``nbytes``, when the layer is reached (the hooks copy on the
        layer's call, not ahead of it); the layer starts when every copy is in. The wait is stall."""
        start = t
        for st in states:
            fin = st.link.fetch(start, nbytes)
            st.stream_bytes += nbytes
            if rec is not None:
                rec.add(f"stream L{l}", "copy", st.gpu, start, fin)
            if fin > t:
                t = fin
        for g in range(len(states)):
            stall[g] += t - start
        return t

    @staticmethod
    def record_layer(rec: Recorder, l: int, states: list[GpuState], times: tuple, attn: float,
                      comp_l: list[float], copies: dict, starts: dict) -> None:
        """The events of layer ``l`` as :meth:`time_layers` timed them (it computes, this only
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
    def wait_prefetched(st: GpuState, keyset: Any, misses: Any, start: float) -> float:
        """A layer needs ``keyset`` once its experts could start (``start``); the prefetched ones
        are used: one whose copy has landed by ``start`` stays a hit, one still in flight is
        waited for and its hit becomes a late prefetch hit (``CacheCounts.late_prefetch_hits``,
        the wait in the stall); one evicted before use is a miss (fetched again, the prefetch
        forgotten and counted unused, ``prefetch_evicted_unused``; its copy is not cancelled, it
        completes on the link unwaited: :meth:`sim.serving.link.Link.forget`). Called after the
        layer's own demand copy is booked, which the prefetches yield to."""
        inflight = st.inflight
        ready = start
        late = 0
        for k in keyset:
            tid = inflight.pop(k, None)
            if tid is not None:
                if k in misses:
                    if tid >= 0:
                        st.link.forget(tid)
                    st.prefetch_evicted_unused += 1
                    continue
                st.prefetch_used += 1
                if tid < 0:  # copied in line (landed where issued)
                    continue
                fin = st.link.finish(tid)
                if fin > ready:
                    late += 1
                    if fin > start:
                        start = fin
        if late:
            st.cache.counts.hit_was_late(late)
        return start

    def sum_down(self, start: list[float], rows: np.ndarray) -> np.ndarray:
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
