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
from sim.plan import ClusterPlan
from sim.policies.base import CachePolicy, PrefetchPolicy
from sim.prediction import Prediction
from sim.state import GpuState, Recorder, ReplicaState, Requests, Tallies


class LayerWalk:
    def __init__(self, plan: ClusterPlan, cost: Any, req: Requests, tallies: Tallies,
                 prefetch: PrefetchPolicy, predictor: PrefetchPolicy | None, cache_name: str,
                 recorder: Recorder | None = None, log: CacheLog | None = None) -> None:
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

    # ------------------------------------------------------------------------------------------
    def iteration(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray, t0: float) -> float:
        """Walk the layers of one iteration; return its duration (s). Mutates caches and links."""
        L, E, plan, cost, tl = self.L, self.E, self.plan, self.cost, self.t
        keep = alloc > 0
        batch, alloc = batch[keep], alloc[keep]
        shape = batch_shape(self.req, batch, alloc)
        keys_tok = plan.pool_keys[shape.rows]  # (T, L*K) key = layer * E + expert
        counts_flat = np.bincount(keys_tok.ravel(), minlength=L * E)  # (L*E,) tokens per key
        tl.recorded_le += counts_flat.reshape(L, E)
        G = len(rep.gpus)
        lc = layer_costs(plan, cost, counts_flat, shape, G)
        comp_arr, load_g = lc.comp, lc.load
        tl.computed_le += lc.computed
        sum_load = load_g.sum(axis=1)  # (L,)
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
        need, active = self.needs(states, used_flat)
        comp = comp_arr.tolist()  # [L][G] seconds
        stall = [st.stall_s for st in states]
        rec = self.recorder if self.recorder is not None and self.recorder.want(t0) else None
        t = t0 + lc.pre + pred.take_inline(rep)
        gaps = (attn, gate, pf_cost, a2a)
        if pred.pf_next:
            for l in range(L):
                miss = [self.serve_layer(st, step0 + l, need[g][l], active[g])
                        for g, st in enumerate(states)]
                t_gate = t + attn + gate + pf_cost
                t = self._time_layers(((l, miss),), t, gaps, comp, states, need, stall, rec)
                pred.next_layer(rep, l, used_flat, step0, t_gate, need)
                t += pred.take_inline(rep)
        else:
            nones = [None] * L
            miss_g = [self._serve_all(st, step0, need[g], active[g]) or nones
                      for g, st in enumerate(states)]
            # zip: per layer l, miss[g] = GPU g's misses at layer l
            t = self._time_layers(enumerate(zip(*miss_g)), t, gaps, comp, states, need, stall, rec)
            if pred.observers:
                for l in range(L):
                    pred.observe(rep, l, used_flat)
        # busy += c layer by layer, per GPU (np.add.accumulate is sequential: the same floats)
        busy = np.add.accumulate(np.vstack([[st.busy_s for st in states], comp_arr]), axis=0)[-1]
        for g, st in enumerate(states):
            st.busy_s = float(busy[g])
            st.stall_s = stall[g]
        return t - t0

    # -- decisions ------------------------------------------------------------------------------
    def _check(self, st: GpuState, cache: CachePolicy) -> None:
        nres = len(cache.resident)
        if nres > st.peak_resident:
            st.peak_resident = nres
            if nres > st.capacity:
                raise MoesimError(f"cache policy {self.cache_name!r} holds {nres} experts on GPU "
                                  f"{st.gpu}, over its budget {st.capacity}")

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
    def _time_layers(self, layers: Any, t: float, gaps: tuple[float, float, float, float],
                     comp: list[list[float]], states: list[GpuState], need: list[list[Any]],
                     stall: list[float], rec: Recorder | None) -> float:
        """Time ``layers`` (pairs of a layer and each GPU's misses there: a count, a list, or None
        for no access) from ``t``; returns when the next layer starts.

        A layer (``gaps``): attention, gating, the prediction's cost, all-to-all dispatch, each
        GPU's experts once its copies are in, all-to-all combine. A GPU that waits for no copy
        starts its experts when the dispatch is done, and the layer ends when the last GPU's
        experts end (``ready + max(comp)`` covers every GPU that did not wait, exactly: float
        addition is monotonic). Recording only writes down what this loop computed."""
        attn, gate, pf_cost, a2a = gaps  # added one by one, in this order (same floats)
        eb, pad = self.eb, self.pad_bytes
        fetch = [st.link.fetch for st in states]
        inflights = [st.inflight for st in states]
        waits = any(inflights)  # prefetched copies in flight on some GPU (none are added here)
        for l, miss in layers:
            t_gate = t + attn + gate + pf_cost
            ready = t_gate + a2a
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
            t_next = end + a2a
            if rec is not None:
                self._record_layer(rec, l, states, (t, t_gate, ready, end, t_next), attn, comp_l,
                                   copies, starts)
            t = t_next
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
