"""A next-layer prefetch on the simulator's fast path: an iteration's layers, LRU decisions,
prefetch inserts, host-link copies and waits in one compiled call
(:func:`sim.serving.compiled_prefetch.prefetch_iteration`), where the general walk
(:meth:`sim.serving.walk.LayerWalk.iteration`) would go layer by layer through the cache
objects, the prefetch's ``insert`` and :class:`sim.serving.link.Link` (about 12 ms an iteration
of the Azure preset with ``emoe_l``, against 0.3 ms without prefetch).

The case: a next-layer prefetch policy (not one that weighs the link's state, ``learned_next``),
copies that overlap compute (not in line), LRU, FIFO, LIFO or LFU caches in their array form
on every GPU of the replica (:class:`sim.serving.lru_arrays.StampStore`,
:class:`sim.serving.step_arrays.FifoStore`, ``LifoStore``, ``LfuStore``), finite host links, no host experts,
no recording, no cache log, no per-copy overhead or layer streaming, no per-layer slots, and an
all-to-all on links the replica does not share. :meth:`PrefetchWalk.run` checks what varies
per iteration before it changes anything and returns None where the general walk must run.

The policy still runs in Python, as the general walk calls it: per layer the observers learn the
layer's experts, then the policy names its guess for the layer ``lead`` ahead
(:func:`next_layer_plan`). A policy never sees the caches or
the time, so its calls for every layer may come before the iteration's decisions: the same calls
in the same order. Each link's state (prefetch queue, demand intervals, transfers landed) and
each GPU's keys in flight go into arrays for the call and back into the objects after it, so
everything else (a request's prefetch, a fault, the metrics) sees the objects as the general
walk leaves them. tests/sim/serving/test_prefetch_walk.py holds whole runs with and without this
path to the same metrics.json.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from sim.common.errors import MoesimError
from sim.serving.lru_arrays import KeepStore, StampStore, _rows_to_arrays
from sim.serving.state import ReplicaState
from sim.serving.step_arrays import FifoStore, LfuStore, LifoStore
from sim.serving.why import book_why

#: the array stores this walk serves, by the kernel's rule code (LRU's recency stamps; FIFO's and
#: LIFO's load stamps; LFU's uses and last steps; keep_predicted's recency stamps and pins:
#: :func:`sim.serving.compiled_prefetch.prefetch_iteration`)
RULES: dict[type, int] = {StampStore: 0, FifoStore: 1, LifoStore: 2, LfuStore: 3, KeepStore: 4}


def prefetch_applies(walk: Any) -> bool:
    """Whether the run's static setup is the case of the module (the replica's caches are
    checked per iteration: :meth:`PrefetchWalk.run`)."""
    pred, timing, plan = walk.pred, walk.timing, walk.plan
    return bool(not pred.pf_weighs and not pred.inline and walk.host is None
                and walk.log is None and not timing.pad_bytes and timing.stream is None
                and timing.eb > 0 and not plan.layer_slots)


def next_layer_plan(pred: Any, rep: ReplicaState, used_flat: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The calls of the policies that ``pred`` (a :class:`sim.serving.prediction.Prediction`)
    makes in its ``next_layer``, for every layer of an iteration at once and in the same order
    (per layer the observers, then the policy's guess), without the caches' decisions (a policy
    never reads them; not for a weighing policy, which reads the links): the predicted keys,
    flat (int64), each layer's start in them (L+1,) and the layer they are for (L,), -1 where
    there is no guess."""
    E, L = pred.E, pred.L
    d = int(getattr(pred.prefetch, "lead", 1))
    keys: list[np.ndarray] = []
    offs = np.zeros(L + 1, dtype=np.int64)
    target = np.full(L, -1, dtype=np.int64)
    n = 0
    # the policy's batched form, where it is the only observer (no other's calls interleave)
    batch = pred.prefetch.next_layers(rep.ctx, used_flat.reshape(L, E)) \
        if (pred.pf_next or pred.observers) and \
        all(p is pred.prefetch for p in pred.observers) else None
    if not pred.pf_next:  # (no guesses: the observers learn each layer, as decide() has it)
        if batch is None:
            for l in range(L) if pred.observers else ():
                pred.observe(rep, l, used_flat)
        return np.zeros(0, dtype=np.int64), offs, target
    if batch is not None:  # layer l's guess: ranked[l, :n[l]], for layer l + d
        ranked, cnt = batch
        cnt = np.where(np.arange(L) + d < L, np.asarray(cnt, dtype=np.int64), 0)
        ranked = np.asarray(ranked, dtype=np.int64)
        sel = np.arange(ranked.shape[1])[None, :] < cnt[:, None]
        offs[1:] = np.cumsum(cnt)
        target[(cnt > 0)] = np.flatnonzero(cnt > 0) + d
        base = ((np.arange(L, dtype=np.int64) + d) * E)[:, None]
        return (ranked + base)[sel], offs, target
    for l in range(L):
        experts = pred.observe(rep, l, used_flat) if pred.observers else \
            np.flatnonzero(used_flat[l * E:(l + 1) * E])
        if l + d < L:
            guess = np.asarray(pred.prefetch.next_layer(rep.ctx, l, experts), dtype=np.int64)
            if len(guess):
                keys.append((l + d) * E + guess.reshape(-1))
                target[l] = l + d
                n += len(guess.reshape(-1))
        offs[l + 1] = n
    flat = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    return flat, offs, target


class PrefetchWalk:
    """The iteration of the module's case, compiled: :meth:`run`."""

    def __init__(self, walk: Any, kern: Any) -> None:
        from sim.serving import compiled_prefetch  # (numba: imported with the walk's kernels)

        self.walk, self.kern, self.cp = walk, kern, compiled_prefetch
        self.E, self.L = walk.plan.E, walk.plan.L
        self._homes: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}
        self._none = np.zeros((0, 0), dtype=np.int64)  # (LFU's uses and last steps elsewhere)
        self._nopin = np.zeros((0, 0), dtype=np.bool_)
        self._pin: dict[int, tuple[Any, list, np.ndarray]] = {}  # store id -> its pins, as a mask

    def _layout(self, store: Any) -> tuple[np.ndarray, np.ndarray]:
        """A store's home keys by local index (G, H), -1 past a GPU's own, and each layer's first
        local index (G, L+1) (homes are in increasing key order: a layer's are a range)."""
        got = self._homes.get(id(store))
        if got is not None and got[0] is store:
            return got[1], got[2]
        G, H = store.S.shape
        hkey = np.full((G, H), -1, dtype=np.int64)
        lo = np.empty((G, self.L + 1), dtype=np.int64)
        bounds = np.arange(self.L + 1, dtype=np.int64) * self.E
        for g, h in enumerate(store.homes):
            hkey[g, :len(h)] = h
            lo[g] = np.searchsorted(h, bounds)
        self._homes[id(store)] = (store, hkey, lo)
        return hkey, lo

    def _pins(self, store: Any, states: list) -> np.ndarray:
        """keep_predicted's pinned keys (each cache's predicted set) as a (G, H) mask of the
        store's local indices, rebuilt when a cache's set is another object (``set_predicted``
        assigns a new frozenset)."""
        sets = [st.cache.pinned for st in states]
        got = self._pin.get(id(store))
        if got is not None and got[0] is store and all(a is b for a, b in zip(got[1], sets)):
            return got[2]
        G, H = store.S.shape
        pin = np.zeros((G, H), dtype=np.bool_)
        for g, keys in enumerate(sets):
            if keys:
                h = store.loc[g, np.fromiter(keys, dtype=np.int64, count=len(keys))]
                pin[g, h[h >= 0]] = True
        self._pin[id(store)] = (store, sets, pin)
        return pin

    def run(self, rep: ReplicaState, used_flat: np.ndarray, comp_arr: np.ndarray,
            gaps: tuple[float, float, float, Any], stall: list[float], t: float) -> float | None:
        """The layers of ``rep``'s iteration from ``t`` (after the links' floor, as the general
        walk has them): returns when the next iteration may start, ``stall`` updated, or None
        (nothing changed) where the case does not hold."""
        walk = self.walk
        store = rep.stamps
        rule = RULES.get(store.__class__)
        if rule is None:
            return None
        states = rep.states
        links = [st.link for st in states]
        if any(st.cache is None for st in states) or any(x.infinite for x in links):
            return None
        attn, gate, pf_cost, traffic = gaps
        if traffic is None:
            a2a = np.zeros(self.L)
        else:
            a2a_l, book = walk.timing.net.layer_times([st.gpu for st in states], traffic, t,
                                                      walk.kern)
            if book is not None:
                return None
            a2a = np.asarray(a2a_l, dtype=np.float64)
        if store.objects and not _rows_to_arrays(store):
            return None
        # -- from here on the iteration is this path's: the policy's calls, then the kernel
        pk, po, ptl = next_layer_plan(walk.pred, rep, used_flat)
        L, E = self.L, self.E
        if len(pk) and (int(pk.min()) < 0 or int(pk.max()) >= L * E):
            raise MoesimError(f"prefetch policy {type(walk.pred.prefetch).__name__}: a predicted "
                              f"expert outside 0..{E - 1}")
        hkey, lo = self._layout(store)
        G, H = store.S.shape
        cp = self.cp
        QC = max(len(x.pq) for x in links) + len(pk) + 1
        GC = max(len(x.gaps) for x in links) + L + 1
        qt = np.full((G, QC), -1, dtype=np.int64)
        qb = np.zeros((G, QC))
        qs = np.zeros((G, QC))
        qk = np.full((G, QC), -1, dtype=np.int64)
        qn = np.zeros(G, dtype=np.int64)
        gs = np.zeros((G, GC))
        ge = np.zeros((G, GC))
        gn = np.zeros(G, dtype=np.int64)
        itid = np.full((G, H), cp.NONE, dtype=np.int64)
        iland = np.full((G, H), np.nan)
        islot = np.zeros((G, H), dtype=np.int64)
        loc = store.loc
        for g, st in enumerate(states):
            x = links[g]
            slot: dict[int, int] = {}  # a queued copy's id -> its slot
            if x.pq:
                for i, (tid, nb, s0) in enumerate(x.pq):
                    qt[g, i], qb[g, i], qs[g, i] = tid, nb, s0
                    slot[tid] = i
                qn[g] = len(x.pq)
            if x.gaps:
                n = len(x.gaps)
                gs[g, :n], ge[g, :n] = zip(*x.gaps)
                gn[g] = n
            if st.inflight:
                done = x.done
                for k, tid in st.inflight.items():
                    h = loc[g, k]
                    itid[g, h] = tid
                    if tid in done:
                        iland[g, h] = done[tid]
                    elif tid in slot:
                        i = slot[tid]
                        islot[g, h] = i
                        qk[g, i] = h
                    else:  # (Link keeps every copy in flight landed or queued)
                        raise MoesimError(f"internal: GPU {st.gpu}'s prefetched key {k} has a "
                                          f"copy ({tid}) neither landed nor queued")
        lat = np.array([x.latency_s for x in links])
        bw = np.array([x.bytes_per_s for x in links])
        lt = np.array([x.t for x in links])
        solo = np.array([x._solo for x in links])
        pt = np.array([x.pt for x in links])
        nid = np.array([x.next_id for x in links], dtype=np.int64)
        btot = np.array([x.bytes_total for x in links])
        qh = np.zeros(G, dtype=np.int64)
        gh = np.zeros(G, dtype=np.int64)
        stall_a = np.array(stall, dtype=np.float64)
        figs = np.zeros((G, len(cp.FIGS)), dtype=np.int64)
        icnt = np.zeros(G, dtype=np.int64)
        used = used_flat if used_flat.dtype == np.bool_ else used_flat.astype(bool)
        C, T = (store.C, store.T) if rule == 3 else (self._none, self._none)
        pin = self._pins(store, states) if rule == 4 else self._nopin
        t, clock = cp.prefetch_iteration(
            rule, store.S, C, T, pin, rep.step - L, store.nres, store.cap, store.clock, hkey, loc, lo,
            used, pk, po, ptl,
            t, attn, gate, pf_cost, a2a, np.ascontiguousarray(comp_arr, dtype=np.float64),
            walk.timing.eb, stall_a, lat, bw, lt, solo, pt, nid, btot, qt, qb, qs, qk, qh, qn,
            gs, ge, gh, gn, itid, iland, islot, icnt, figs)
        store.clock = int(clock)
        stall[:] = stall_a.tolist()
        self._unpack(states, links, hkey, figs, (lt, solo, pt, nid, btot),
                     (qt, qb, qs, qh, qn), (gs, ge, gh, gn), (itid, iland, icnt, cp.NONE))
        return float(t)

    @staticmethod
    def _unpack(states: list, links: list, hkey: np.ndarray, figs: np.ndarray, clocks: tuple,
                queue: tuple, gaps: tuple, flight: tuple) -> None:
        """The kernel's figures into the caches' counts and the GPUs' tallies, and each link's
        and GPU's state back into its objects."""
        lt, solo, pt, nid, btot = (a.tolist() for a in clocks)
        qt, qb, qs, qh, qn = queue
        gs, ge, gh, gn = gaps
        itid, iland, icnt, NONE = flight
        flying = icnt.tolist()
        for g, (st, f) in enumerate(zip(states, figs.tolist())):
            hits, misses, streamed, ev, pf, skipped, late, used, unused, keys, reused, peak = f
            c = st.cache.counts
            c.hits += hits
            c.misses += misses
            c.streamed += streamed
            c.evictions += ev
            c.prefetched += pf
            c.prefetch_skipped += skipped
            c.late_prefetch_hits += late
            st.prefetch_used += used
            st.prefetch_evicted_unused += unused
            book_why(st, peak, keys, reused)  # (the most residents the iteration had)
            x = links[g]
            x.t, x._solo, x.pt, x.next_id, x.bytes_total = lt[g], solo[g], pt[g], nid[g], btot[g]
            a, b = int(qh[g]), int(qn[g])
            if b > a or x.pq:
                items = [list(e) for e in zip(qt[g, a:b].tolist(), qb[g, a:b].tolist(),
                                              qs[g, a:b].tolist())]
                x.pq = deque(items)
                x.queued = {e[0]: e for e in items if e[0] >= 0}
            a, b = int(gh[g]), int(gn[g])
            x.gaps = list(zip(gs[g, a:b].tolist(), ge[g, a:b].tolist())) if b > a else []
            if flying[g] or st.inflight:
                fl = np.flatnonzero(itid[g] != NONE)
                tids = itid[g, fl].tolist()
                st.inflight = dict(zip(hkey[g, fl].tolist(), tids))
                lands = iland[g, fl].tolist()
                x.done = {tid: e for tid, e in zip(tids, lands) if e == e}  # (NaN: queued)
