"""The layer walk of an iteration in one compiled call, where the walk's general steps reduce to
its commonest case: every expert on one GPU of a one-node replica (tensor parallelism 1, no
duplicate-token traffic), array caches (LRU's stamps, :class:`~sim.serving.lru_arrays.StampStore`,
in one call; FIFO, LIFO, LFU's :class:`~sim.serving.step_arrays.StepStore` and the static cache's
:class:`~sim.serving.static_arrays.StaticStore` in three: the costs, the store's serve (compiled,
or a few numpy calls), the timing; no step over its GPU's slots, no unsettled static cache), the
analytic cost model,
no prefetch policy or predictor, no host experts, no recording, no per-copy overhead, no layer
streaming, and host links that are equal, idle before the iteration's first copy and far from
the byte totals' 2**53.

:meth:`FusedWalk.run` checks what varies per iteration (the links, prefetched copies in flight,
the store's mode) before it changes anything, and returns None where the general walk must run
(:meth:`sim.serving.walk.LayerWalk.iteration` then runs it from the start); else it calls
:func:`sim.serving.compiled_walk.owned_lru_iteration` and books what the walk books, in the same
order: the batch's tallies, the caches' figures, the links' clocks and copies, the GPUs' stall
and busy seconds. tests/sim/serving/test_fused_walk.py holds whole runs with and without it to
the same metrics.json.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.cost.analytic import ATTENTION_TILE_TOKENS, MOE_BLOCK_TOKENS, MOE_LAUNCHES, AnalyticCost
from sim.serving.lru_arrays import StampStore
from sim.serving.state import ReplicaState
from sim.serving.static_arrays import StaticStore
from sim.serving.step_arrays import StepStore
from sim.serving.why import book_why


def fused_applies(walk: Any) -> bool:
    """Whether the run's static setup is the case :class:`FusedWalk` computes (see the module)."""
    plan, pred, timing = walk.plan, walk.pred, walk.timing
    return (plan.single_owner and not plan.moe_tp and plan.pool_dups is None
            and plan.tensor_parallel == 1 and walk.cost.__class__ is AnalyticCost
            and walk.prefix is not None and walk.host is None and walk.recorder is None
            and not (pred.pf_next or pred.pf_req or pred.pf_rows or pred.observers)
            and not timing.pad_bytes and timing.stream is None and timing.eb > 0
            and plan.L <= 128)  # (compiled_walk.pairwise_sum: one block)


class FusedWalk:
    """:meth:`sim.serving.walk.LayerWalk.iteration` for the case of the module, compiled."""

    def __init__(self, walk: Any, kern: Any) -> None:
        self.walk, self.kern = walk, kern
        cost = walk.cost
        plan = walk.plan
        self.L, self.E = plan.L, plan.E
        #: the fused MoE's and the all-to-all's parameters, then per iteration the gaps and link
        self.fpar = np.zeros(15)
        self.fpar[:7] = (MOE_BLOCK_TOKENS, cost._expert_flops_per_token, cost._expert_weight_bytes,
                         cost._act_bytes_per_token, cost.flops_s, cost.hbm_s,
                         MOE_LAUNCHES * cost.hw.kernel_latency_s)
        self.ipar = np.zeros(4, dtype=np.int64)
        self.ipar[2] = plan.expert_bytes
        #: 2**53 less the most bytes an iteration can copy to one GPU (every key, once)
        self.byte_room = 2.0 ** 53 - plan.L * plan.E * plan.expert_bytes
        self._net: dict[int, Any] = {}  # replica -> its network (None: not one node)
        self.eb = plan.expert_bytes
        #: the cost model's figures for its per-iteration scalars (kern.batch_costs)
        self.cpar = kern.cost_params(cost)
        self._recorded = walk.t.recorded_le.reshape(-1)  # (views: the tallies' arrays)
        self._computed = walk.t.computed_le.reshape(-1)

    def _replica_net(self, rep: ReplicaState) -> Any:
        rn = self._net.get(rep.index, False)
        if rn is False:
            rn = self.walk.timing.net._replica([st.gpu for st in rep.states])
            rn = self._net[rep.index] = rn if rn.fast_idx is not None else None
        return rn

    def run(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray, t0: float
            ) -> float | None:
        """The iteration's duration, its effects booked; None (nothing changed) where the case
        does not hold this iteration."""
        walk = self.walk
        store = rep.stamps
        states = rep.states
        G = len(states)
        lru = store.__class__ is StampStore
        if G < 2 or not (lru or isinstance(store, StepStore | StaticStore)) or (
                lru and (store.check_steps or store.objects)):
            return None
        rn = self._replica_net(rep)
        if rn is None:
            return None
        links = [st.link for st in states]
        lk = links[0]
        bw, lat = lk.bytes_per_s, lk.latency_s
        room = self.byte_room
        for st, x in zip(states, links):
            if st.inflight or x.pq or x.infinite or x.bytes_per_s != bw or \
                    x.latency_s != lat or x.bytes_total >= room:
                return None
        if lat < 0:
            return None
        req = walk.req
        # (the cost model's attention_s + layer_collectives_s, gate_s, iteration_s, compiled)
        T, _, _, _, attn, gate, pre = self.kern.batch_costs(req.ctx[batch], alloc,
                                                            ATTENTION_TILE_TOKENS, self.cpar, G)
        if T == 0 or attn < 0 or gate < 0:
            return None
        t = t0 + pre
        first = t + attn + gate + 0.0 + lat  # (the prefetch's cost per layer: none)
        for x in links:
            if x.t > first or (x._solo and x.t + x._solo / bw > first):
                return None
        fpar, ipar = self.fpar, self.ipar
        fpar[7:] = (rn.fast_scale, rn.nv_lat, attn, gate, 0.0, lat, bw, t)
        ipar[0], ipar[1], ipar[3] = G, self.L, store.clock
        plan, tl, kk = walk.plan, walk.t, self.kern
        if not lru:  # FIFO, LIFO, LFU, static: the costs, the store's serve, the timing (3 calls)
            counts, comp, load, a2a, imb, imb_layers = kk.owned_costs(
                plan.pool_keys, walk.prefix, req.offset, req.length, req.ctx, batch, alloc,
                plan.lg_index, rn.fast_moves, rn.fast_idx, fpar, ipar)
            miss = store.serve(counts > 0, rep.step, kk)
            if miss is None:  # (a step over its GPU's slots: nothing changed yet)
                return None
        # -- from here on the iteration happens ----------------------------------------------
        for x in links:  # (x.floor(t0), whose prefetch queue is empty)
            x._lazy = None
            gaps = x.gaps
            if gaps and gaps[-1][1] <= t0:
                gaps.clear()
        rep.step += self.L
        busy = np.array([st.busy_s for st in states])
        stall = np.array([st.stall_s for st in states])
        if not lru:
            kk.owned_book(counts, load, self._recorded, self._computed, tl.gpu_tokens[rep.index])
            t, per, fin_lg, starts, fetches = kk.owned_time(miss, comp, a2a, fpar, ipar, busy,
                                                            stall)
            accesses = 0  # (the store's serve noted its figures)
        else:
            if store.order is None:  # (lru_serve's record of each GPU's residents in stamp order)
                store.order = np.zeros((store.G, store.H), dtype=np.int64)
                store.order_n = np.full(store.G, -1, dtype=np.int64)
            t, imb, imb_layers, accesses, per, fin_lg, starts, fetches = kk.owned_lru_iteration(
                plan.pool_keys, walk.prefix, req.offset, req.length, req.ctx, batch, alloc,
                plan.lg_index, rn.fast_moves, rn.fast_idx, fpar, ipar, self._recorded,
                self._computed, tl.gpu_tokens[rep.index], store.S, store.nres, store.cap,
                store.pairs, store.pair_key, store.order, store.order_n, store.why, store.tally,
                busy, stall)
        tl.iter_imbalance_sum += imb
        tl.iter_layers += imb_layers
        if accesses:  # (RowStore.note: else no cache held a key the batch used, none touched)
            store.clock += accesses
            store.owed = True
        # per GPU, in one pass: the walk's why-tallies (from the store's figures), the copies
        # booked on the links as LayerTiming._time_compiled books them, the busy and stall seconds
        eb = self.eb
        last, nmiss, solo_n = per.tolist()
        starts_l = starts.tolist() if max(last) >= 0 else None
        for g, (st, lg, nm, solo, b, s, nres, n, reused) in enumerate(zip(
                states, last, nmiss, solo_n, busy.tolist(), stall.tolist(), store.nres.tolist(),
                *store.why.tolist())):
            book_why(st, nres, n, reused)
            if lg >= 0:
                x = st.link
                x.bytes_total += nm * eb
                x.t = starts_l[lg]
                x._solo = float(solo * eb)
                x.gaps.clear()  # (they ended before this iteration's first copy)
                x._lazy = (g, starts_l, fin_lg, fetches)  # listed if a prefetch comes
            st.busy_s = b
            st.stall_s = s
        rep.iteration_time_s += t - t0
        if walk.on_iteration:
            walk._done(rep, int(alloc.sum()), t0, t - t0)
        return t - t0
