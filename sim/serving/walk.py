"""One layer walk: an iteration of a replica, layer by layer, with the cache decisions of the
policies, the copies they cause, and the time it all takes. :class:`sim.engine.simulation.Simulation`
calls :meth:`LayerWalk.iteration` for every iteration; realrun (realrun/serve.py) executes the
walk's own decision stream (:meth:`LayerWalk.needs`, then :meth:`LayerWalk.decide`).

Shape legend: T tokens in the iteration's batch, L MoE layers, K top-k, E experts per layer,
G GPUs of the replica. A cache key is ``layer * E + expert``.

Per iteration, with numpy over all tokens and layers at once, the walk counts tokens per
(layer, expert) (:mod:`sim.serving.token_counts`), the GPU each expert computes on (the plan's
placement) and each GPU's expert-compute time per layer (cost model). Then, per layer:
attention, gating, all-to-all dispatch; each GPU's cache policy serves the keys the GPU needs at
that layer (cache step ``rep.step + layer``; the iteration's keys of the GPU are the ``active``
set); misses are copied over the GPU's host link and the layer waits for them (and for
prefetched keys still in flight); experts compute; all-to-all combine. The next-layer prefetch
policy may then start copies for layer + 1 at this layer's gate time (:mod:`sim.serving.prediction`).

Decisions and timing are two steps of the same walk. This module holds the decisions
(:meth:`LayerWalk.decide` yields them layer by layer: :class:`Serve`, each GPU's misses;
:class:`Prefetch`, the copies a next-layer prefetch decided), which the timing prices and realrun
carries out. The decisions of a layer never depend on time, so when no next-layer prefetch
interleaves with them, each GPU's cache serves all layers of the iteration in one
``access_steps`` call (the policies' batched entry to the same rule); with next-layer prefetch,
layer by layer. The LRU stamp arrays (:mod:`sim.serving.lru_arrays`) are the decisions' fast
form for the simulator: every GPU's misses of every layer at once, with numpy. Timing is then one
loop (:meth:`sim.serving.layer_timing.LayerTiming.time_layers`) whatever the decisions came from;
recording a Chrome trace only makes it visit every GPU. Where the array forms cannot serve an
iteration at once (a next-layer prefetch, prefetched keys in flight, keep_predicted's pins), the
compiled walk of :mod:`sim.serving.prefetch_walk` takes the decisions and the timing layer by
layer in one call, as the general walk below does them with the objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import MoesimError
from sim.policies.base import CachePolicy, PrefetchPolicy
from sim.serving.cache_log import CacheLog
from sim.serving.fused_walk import FusedWalk, fused_applies
from sim.serving.layer_costs import batch_shape, layer_costs
from sim.serving.layer_timing import LayerTiming
from sim.serving.offload import HostExperts
from sim.serving.plan import ClusterPlan
from sim.serving.prediction import Prediction
from sim.serving.prefetch_walk import PrefetchWalk, prefetch_applies
from sim.serving.state import GpuState, Recorder, ReplicaState, Requests, Tallies
from sim.serving.token_counts import PoolPrefix, batch_counts
from sim.serving.why import book_why, why_begin, why_end, why_loaded, why_reused
from sim.world.facts import CacheCounts
from sim.world.offload_config import OffloadConfig
from sim.world.token_split import COMPILED_MIN_GPUS

#: iterations walked with the numpy references before the compiled kernels
#: (:mod:`sim.serving.compiled_walk`, numba) are imported: start-up and short runs pay nothing.
#: Importing numba and loading the kernels costs about 1 s on a 2-core machine (0.6 s the import,
#: 0.3 s the first kernel), which the kernels win back in a few thousand iterations
COMPILE_AFTER = 2048


def walk_kernels() -> Any:
    """:mod:`sim.serving.compiled_walk` (imported here, lazily: numba), or None without numba."""
    try:
        from sim.serving import compiled_walk
    except ImportError:
        return None
    return compiled_walk


class Serve:
    """A layer's cache decisions: ``miss[g]``, GPU g's misses there (a list of keys, a count
    where the cache served all layers at once, or None: it accessed nothing)."""

    __slots__ = ("layer", "miss")

    def __init__(self, layer: int, miss: Any) -> None:
        self.layer, self.miss = layer, miss


class Prefetch:
    """The copies a next-layer prefetch decided after ``layer``: ``(GPU index, keys loaded, keys
    evicted)`` per GPU, in the order decided (:meth:`sim.serving.prediction.Prediction.prefetch_keys`)."""

    __slots__ = ("layer", "copies")

    def __init__(self, layer: int, copies: list[tuple[int, list[int], list[int]]]) -> None:
        self.layer, self.copies = layer, copies


@dataclass
class IterationDone:
    """What the ``on_iteration`` hooks get after an iteration: the replica, its tokens, when it
    started, how long it took (s), and what the replica's caches did in it."""

    replica: int
    tokens: int
    t0: float
    duration_s: float
    counts: CacheCounts


class LayerWalk:
    def __init__(self, plan: ClusterPlan, cost: Any, req: Requests, tallies: Tallies,
                 prefetch: PrefetchPolicy, predictor: PrefetchPolicy | None, cache_name: str,
                 recorder: Recorder | None = None, log: CacheLog | None = None,
                 arrays: bool = True, offload: OffloadConfig | None = None) -> None:
        self.plan, self.cost, self.req, self.t = plan, cost, req, tallies
        self.cache_name = cache_name
        self.recorder, self.log = recorder, log
        self.L, self.E = plan.L, plan.E
        #: prefetch and the per-request hooks of the caches (sim/serving/prediction.py)
        self.pred = Prediction(plan, cost, req, prefetch, predictor, cache_name, recorder, log)
        #: the layers' time: copies, waits, experts, the all-to-all (sim/serving/layer_timing.py)
        self.timing = LayerTiming(plan, cost)
        #: where missed experts run when not copied (offload.expert_exec: sim/serving/offload.py)
        self.host = HostExperts(cost, offload, plan.expert_bytes, plan.L) \
            if offload is not None and offload.expert_exec != "copy" else None
        #: the pool's prefix counts, built when due (``arrays``: policy.cache_arrays; off, every
        #: token's keys are counted): :attr:`prefix`
        self.pool_prefix = PoolPrefix(plan.pool_keys, self.L * self.E, arrays)
        self.arrays = arrays  # (off: the general path, the fast paths' reference, throughout)
        #: called after each iteration :meth:`iteration` walks, with its :class:`IterationDone`
        self.on_iteration: list[Callable[[IterationDone], None]] = []
        self._seen: dict[int, CacheCounts] = {}  # replica -> its caches' counts at the last hook
        #: the compiled kernels (:func:`walk_kernels`) once ``compile_after`` iterations were
        #: walked (from the first where a replica's GPUs use sim.world.compiled anyway); the same
        #: bytes as the numpy references (tests/sim/serving/test_compiled_walk.py)
        self.kern: Any = None
        self.compile_after = 1 if plan.topo.expert_parallel >= COMPILED_MIN_GPUS else COMPILE_AFTER
        self.walked = 0
        #: the whole iteration compiled where its case holds (sim/serving/fused_walk.py)
        self.fused: FusedWalk | None = None
        #: a next-layer prefetch's iteration compiled where its case holds
        #: (sim/serving/prefetch_walk.py)
        self.pf_walk: PrefetchWalk | None = None

    @property
    def prefix(self) -> np.ndarray | None:
        """(N+1, L*E) int32: tokens per key over the pool's rows before each row, or None (not
        built yet, or never: each token's keys are counted, the same integers)."""
        return self.pool_prefix.counts

    # ------------------------------------------------------------------------------------------
    def iteration(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray, t0: float) -> float:
        """Walk the layers of one iteration; return its duration (s). Mutates caches and links."""
        L, E, plan, cost, tl, timing = self.L, self.E, self.plan, self.cost, self.t, self.timing
        self.walked += 1
        if self.walked == self.compile_after:
            self.pool_prefix.build()  # (the fused walk needs them: first)
            self.kern = walk_kernels()
            if self.kern is not None and fused_applies(self):
                self.fused = FusedWalk(self, self.kern)
            if self.kern is not None and prefetch_applies(self):
                self.pf_walk = PrefetchWalk(self, self.kern)
        kern = self.kern
        if not (len(alloc) and alloc.min() > 0):
            keep = alloc > 0
            batch, alloc = batch[keep], alloc[keep]
        self.pool_prefix.charge(alloc)
        if self.fused is not None:
            dur = self.fused.run(rep, batch, alloc, t0)
            if dur is not None:
                return dur
        # the tokens' pool rows: counted from when there are no prefix counts, or read by a
        # prefetch policy (the next-layer oracles, learned_next)
        shape = batch_shape(self.req, batch, alloc, self.prefix is None or self.pred.pf_rows, kern)
        G = len(rep.gpus)
        # (L*E,) tokens per key, and what the all-to-all needs of them (sim.serving.token_counts)
        counts_flat, a2a_tokens = batch_counts(plan, self.req, self.prefix, batch, alloc, shape, G,
                                               kern)
        tl.recorded_le += counts_flat.reshape(L, E)
        lc = layer_costs(plan, cost, counts_flat, shape, G, a2a_tokens, kern)
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
        for st in states:  # no copy is issued before t0 any more (sim/serving/link.py)
            st.link.floor(t0)
        rec = self.recorder if self.recorder is not None and self.recorder.want(t0) else None
        t = t0 + lc.pre + pred.take_inline(rep)
        gaps = (attn, gate, pf_cost, a2a)
        miss_lg = None
        if rep.stamps is not None and not pred.pf_next and self.host is None and \
                not any(st.inflight for st in states):
            miss_lg = self._serve_arrays(rep, used_flat, kern)
        if miss_lg is not None:  # every GPU's misses per layer, served with numpy
            t_fast = None if rec is not None or timing.pad_bytes else \
                timing.time_counts(miss_lg, t, gaps, comp_arr, states, stall, kern)
            t = t_fast if t_fast is not None else \
                timing.time_layers(enumerate(miss_lg.tolist()), t, gaps, comp_arr.tolist(), states,
                                  None, stall, rec)
        elif self.pf_walk is not None and rec is None and \
                (t_pf := self.pf_walk.run(rep, used_flat, comp_arr, gaps, stall, t)) is not None:
            t = t_pf  # a next-layer prefetch, compiled (sim/serving/prefetch_walk.py)
        else:
            comp = comp_arr.tolist()  # [L][G] seconds
            need, active = self.needs(states, used_flat)
            why = why_begin(states, need, active, plan.layer_slots)
            host = self.host
            decisions = self.decide(rep, used_flat, step0, need, active, stepwise=host is not None)
            if host is not None:  # misses split between the link and the host CPU
                decisions = host.run(decisions, Serve, counts_flat, comp, states, need, shape.tokens)
            if pred.pf_next:  # layer by layer: the prefetch for layer + 1 follows each layer
                t_gate = t
                for d in decisions:
                    if d.__class__ is Serve:
                        why_reused(why, d.miss)
                        t_gate = t + attn + gate + pf_cost
                        t = timing.time_layers(((d.layer, d.miss),), t, gaps, comp, states, need,
                                               stall, rec)
                    else:  # its copies start at the gate of the layer it followed
                        why_loaded(why, d.copies)
                        pred.issue(rep, d.copies, t_gate)
                        t += pred.take_inline(rep)
            elif host is None and self.arrays:  # (counted misses timed as counts: time_counts)
                t = timing.time_decided(decisions, t, gaps, comp_arr, comp, states, need, stall,
                                        rec, kern)
            else:
                t = timing.time_layers(((d.layer, d.miss) for d in decisions), t, gaps, comp,
                                       states, need, stall, rec)
            why_end(states, why, pred.pf_next)
        if miss_lg is not None and pred.observers:  # (decide observed them)
            for l in range(L):
                pred.observe(rep, l, used_flat)
        # busy += c layer by layer, per GPU (np.add.accumulate is sequential: the same floats)
        if self.host is not None:  # (the GPU's expert time with the host's part)
            comp_arr = np.asarray(comp, dtype=np.float64)
        busy = timing.sum_down([st.busy_s for st in states], comp_arr)
        for g, st in enumerate(states):
            st.busy_s = float(busy[g])
            st.stall_s = stall[g]
        rep.iteration_time_s += t - t0
        if self.on_iteration:
            self._done(rep, int(alloc.sum()), t0, t - t0)
        return t - t0

    def _done(self, rep: ReplicaState, tokens: int, t0: float, dur: float) -> None:
        """Call the ``on_iteration`` hooks with the iteration's record: its counts are what the
        replica's caches did since its previous iteration (a fault's fresh caches included)."""
        now = CacheCounts()
        for st in rep.states:
            now.add(st.counts())
        before = self._seen.get(rep.index) or CacheCounts()
        self._seen[rep.index] = now
        done = IterationDone(rep.index, tokens, t0, dur, CacheCounts(**{
            f: getattr(now, f) - getattr(before, f) for f in CacheCounts.__dataclass_fields__}))
        for hook in self.on_iteration:
            hook(done)

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, rep: ReplicaState, used_flat: np.ndarray, step0: int, need: list[list[Any]],
               active: list[Any], stepwise: bool = False) -> Iterator[Serve | Prefetch]:
        """The iteration's decisions, in order: per layer a :class:`Serve` (each GPU's cache served
        the keys it needs at that layer, cache step ``step0 + layer``), followed, with a
        next-layer prefetch policy, by a :class:`Prefetch` (the copies it decided for the next
        layer). ``need``, ``active``: :meth:`needs`. Lazy: a decision is made when the consumer
        asks for the next one, so the caches' resident sets are those right after it.

        Without next-layer prefetch and unless ``stepwise`` (realrun: one ``access`` per layer,
        the misses as lists of keys), each GPU's cache serves all layers in one ``access_steps``
        call before the first :class:`Serve` (the misses are counts then); the policies hold the
        two equal. The observers learn every layer's experts after the last layer."""
        L, states, pred = self.L, rep.states, self.pred
        if pred.pf_next or stepwise:
            # (a GPU without a cache needs no list: needs() gives it none)
            gpus = list(zip(states, need, active))
            for l in range(L):
                yield Serve(l, [self.serve_layer(st, step0 + l, ng[l], a) if ng else None
                                for st, ng, a in gpus])
                if pred.pf_next:
                    yield Prefetch(l, pred.next_layer(rep, l, used_flat, step0, need, active))
            if pred.pf_next:  # (next_layer observed them layer by layer)
                return
        else:
            nones = [None] * L
            miss_g = [self._serve_all(st, step0, need[g], active[g]) or nones
                      for g, st in enumerate(states)]
            for l, miss in enumerate(zip(*miss_g)):  # miss[g]: GPU g's misses at layer l
                yield Serve(l, miss)
        if pred.observers:
            for l in range(L):
                pred.observe(rep, l, used_flat)

    def _check(self, st: GpuState, cache: CachePolicy) -> None:
        nres = len(cache.resident)
        if nres > st.peak_resident:
            st.peak_resident = nres
            if nres > st.capacity:
                raise MoesimError(f"cache policy {self.cache_name!r} holds {nres} experts on GPU "
                                  f"{st.gpu}, over its budget {st.capacity}")

    def _serve_arrays(self, rep: ReplicaState, used_flat: np.ndarray, kern: Any = None
                      ) -> np.ndarray | None:
        """Every GPU's steps of the iteration (cache steps from ``rep.step - L``) through the
        replica's array caches (:data:`sim.serving.lru_arrays.ARRAY_FORMS`: LRU as stamps, FIFO,
        LIFO, LFU): the misses per layer and GPU, or None when a step is not in array form (the
        general path serves it). ``kern``: the store served compiled (the same decisions)."""
        stamps = rep.stamps
        miss = stamps.serve(used_flat, rep.step - self.L, kern)
        if miss is None:
            return None
        self.why_tallies(rep)
        return miss

    @staticmethod
    def why_tallies(rep: ReplicaState) -> None:
        """After the array store served an iteration: each GPU's peak residents and why-tallies
        (see GpuState) from the store's per-GPU figures."""
        why = rep.stamps.why
        for st, nres, n, reused in zip(rep.states, rep.stamps.nres.tolist(), *why.tolist()):
            book_why(st, nres, n, reused)

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
