"""Realrun serves the simulator's scenario for real: one replica on one device (EP 1).

The world is the simulator's own: :class:`sim.engine.simulation.Simulation` is built from the same config,
workload, routing pool and binding (and never run), which gives the requests, the cluster plan
(cache slots from :func:`sim.world.facts.cache_slots`), the warm-started cache policy, the prefetch
policy and predictor, the scheduler and the continuous :class:`sim.serving.batching.Batcher`. Realrun
drives that batcher in real time and, per iteration, makes the policy calls of
:class:`sim.serving.walk.LayerWalk` through the walk's own methods in the simulator's order:

- every request arrives at time 0: ``request_start`` (per-request reset, predicted set, request
  prefetch) for each, in arrival order, before the first iteration;
- per iteration: the batch's pool rows and attention shape (:func:`sim.serving.layer_costs.batch_shape`),
  the keys each layer needs (``LayerWalk.needs``), then per layer ``serve_layer`` (cache step
  ``rep.step + layer``, the iteration's keys ``active``) and, for a next-layer prefetch policy,
  ``next_layer``; the observers after the last layer.

The simulator serves a layer's keys with the batched ``access_steps`` when nothing is in flight;
the policies test that equal to one ``access`` per layer. So hits, misses, streamed, prefetched
and bytes equal the simulator's by construction.

What the policies decide becomes real work. The device holds ``capacity`` expert slots plus a
staging buffer of ``E`` slots: after every decision the slot table follows the cache's resident
set (evicted keys free their slot, new keys are copied in from host memory); a needed key that is
not resident (the layer needed more experts than the cache holds) is copied into the staging
buffer and dropped after the layer. On a GPU misses go on a copy stream the layer waits for and
prefetches on a side stream that overlaps compute; on the CPU copies are memory copies, in line.
Each layer runs attention, gating and the routed experts of :mod:`realrun.model`.

Every iteration is timed (CUDA events on a GPU; on the CPU both ``perf_counter`` and this
thread's CPU time, ``clock`` choosing which one is the measurement): from the batch formed to
the last layer's output. The request-start work (request prefetch copies) is timed into the
first iteration. Decisions reach the slots through :class:`FollowedCache`, which carries out each
``access`` and ``insert`` as it returns, so a key loaded and evicted again before the layer that
needed it is still copied: every load the policy counts is one real copy (checked at the end).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch

from realrun.model import DTYPES, Shapes, TinyMoE, expert_ffn
from sim.common.errors import ConfigError, MoesimError
from sim.serving.layer_costs import batch_shape
from sim.world.facts import CacheCounts

#: what a CPU iteration is timed by: wall clock, or this thread's CPU time
CLOCKS = ("wall", "cpu")


class _NoLink:
    """The walk's prefetch issues link transfers; realrun's copies are real, so they go nowhere."""

    latency_s = 0.0
    infinite = True

    def add(self, t: float, nbytes: float) -> int:
        return 0

    def finish_peek(self, tid: int) -> float:
        return 0.0


@dataclass
class IterationRecord:
    tokens: int
    decode: int
    requests: int
    pairs: int
    counts: CacheCounts
    measured_s: float  # on the server's clock
    wall_s: float = 0.0  # perf_counter (CUDA events on a GPU)
    cpu_s: float = 0.0  # this thread's CPU time (CPU only)


@dataclass
class ServeResult:
    iterations: list[IterationRecord] = field(default_factory=list)
    counts: CacheCounts = field(default_factory=CacheCounts)
    expert_bytes: int = 0
    copied_bytes: int = 0
    wall_s: float = 0.0

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"tokens": r.tokens, "decode": r.decode, "requests": r.requests,
                              "pairs": r.pairs, "hits": r.counts.hits, "misses": r.counts.misses,
                              "prefetched": r.counts.prefetched,
                              "bytes": r.counts.loads * self.expert_bytes,
                              "measured_s": r.measured_s, "wall_s": r.wall_s, "cpu_s": r.cpu_s}
                             for r in self.iterations])


class Slots:
    """Device expert slots following a cache policy's resident set; ``E`` staging slots after
    the ``capacity`` cache slots."""

    def __init__(self, moe: TinyMoE, capacity: int) -> None:
        sh, dev = moe.sh, moe.device
        self.moe, self.capacity = moe, capacity
        n = capacity + sh.E
        self.w13 = torch.empty((n, 2 * sh.I, sh.H), dtype=DTYPES[sh.dtype], device=dev)
        self.w2 = torch.empty((n, sh.H, sh.I), dtype=DTYPES[sh.dtype], device=dev)
        self.w13.zero_()  # touch every page before serving: no first-touch faults in the timing
        self.w2.zero_()
        self.slot: dict[int, int] = {}
        self.free = list(range(capacity - 1, -1, -1))
        self.copied = 0  # expert copies made (cache and staging)
        cuda = dev.type == "cuda"
        self.miss_stream = torch.cuda.Stream(dev) if cuda else None
        self.side_stream = torch.cuda.Stream(dev) if cuda else None
        self.ready: dict[int, Any] = {}  # key -> CUDA event its copy records (GPU only)

    def _copy(self, key: int, slot: int, stream: Any) -> None:
        m = self.moe
        if stream is None:
            self.w13[slot].copy_(m.host_w13[key])
            self.w2[slot].copy_(m.host_w2[key])
        else:
            # the slot may still be read by a layer enqueued on the compute stream (an evicted
            # expert, a staging slot): the copy waits for what is enqueued there
            stream.wait_stream(torch.cuda.current_stream(m.device))
            with torch.cuda.stream(stream):
                self.w13[slot].copy_(m.host_w13[key], non_blocking=True)
                self.w2[slot].copy_(m.host_w2[key], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(stream)
            self.ready[key] = ev
        self.copied += 1

    def follow(self, resident: Any, side: bool = False) -> None:
        """Free the slots of keys no longer resident, copy newly resident keys in (a prefetch:
        ``side`` stream)."""
        res = set(resident)
        for k in [k for k in self.slot if k not in res]:
            self.free.append(self.slot.pop(k))
            self.ready.pop(k, None)
        stream = self.side_stream if side else self.miss_stream
        for k in sorted(res.difference(self.slot)):
            s = self.slot[k] = self.free.pop()
            self._copy(k, s, stream)

    def stage(self, key: int, layer: int) -> int:
        """Copy ``key`` into its layer's staging slot."""
        s = self.capacity + (key - layer * self.moe.sh.E)
        self._copy(key, s, self.miss_stream)
        return s

    def layer_table(self, layer: int, keys: Any) -> list[int]:
        """Expert -> slot of layer ``layer`` for its needed ``keys``; a needed key without a cache
        slot is streamed into a staging slot. On a GPU the compute stream waits for the copies."""
        E = self.moe.sh.E
        table = [-1] * E
        for k in keys:
            s = self.slot.get(k)
            if s is None:
                s = self.stage(k, layer)
            table[k - layer * E] = s
            ev = self.ready.pop(k, None)
            if ev is not None:
                torch.cuda.current_stream(self.moe.device).wait_event(ev)
        return table


class FollowedCache:
    """A cache policy whose every decision the device slots carry out as it is made: an
    ``access`` (misses: the copy stream) or an ``insert`` (prefetch: the side stream). A key an
    insert loaded and evicted again in the same call is still copied (staging): it was a load."""

    def __init__(self, cache: Any, slots: Slots, layer_of: Any) -> None:
        self._cache, self._slots, self._layer_of = cache, slots, layer_of

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def access(self, step: int, keys: Any, active: Any = None) -> Any:
        out = self._cache.access(step, keys, active)
        self._slots.follow(self._cache.resident)
        return out

    def insert(self, step: int, keys: Any, protect: Any = ()) -> Any:
        loaded, evicted = out = self._cache.insert(step, keys, protect=protect)
        self._slots.follow(self._cache.resident, side=True)
        for k in loaded:
            if k not in self._slots.slot:
                self._slots.stage(k, self._layer_of(k))
        return out


class RealServer:
    """Serve ``world`` (a :class:`sim.engine.simulation.Simulation`, built, not run) for real."""

    def __init__(self, world: Any, device: str = "cpu", seed: int = 0, block_size: int = 16,
                 clock: str = "wall") -> None:
        """``clock`` (CPU only): ``wall`` (``perf_counter``) or ``cpu`` (this thread's CPU time,
        ``time.thread_time``: what the iteration cost a core of its own, whatever else the
        machine runs; torch runs on this one thread)."""
        if clock not in CLOCKS:
            raise ConfigError(f"clock={clock!r}; expected one of {list(CLOCKS)}")
        self.clock = clock
        if world.topo.expert_parallel != 1 or world.topo.num_replicas != 1:
            raise ConfigError("realrun serves one replica on one device: cluster.expert_parallel=1 "
                              "and one GPU (cluster=1x1)")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device=cuda asked for, but torch sees no CUDA GPU")
        self.world = w = world
        self.rep = w.replicas[0]
        self.st = self.rep.states[0]
        self.st.link = _NoLink()
        self.sh = Shapes.of(w.model, block_size)  # the world's model: shrunk already
        self.moe = TinyMoE(self.sh, device, seed)
        self.device = self.moe.device
        self.slots = Slots(self.moe, self.st.capacity)
        if self.st.cache is not None:
            E = self.sh.E
            self.st.cache = FollowedCache(self.st.cache, self.slots, lambda k: k // E)
        g = torch.Generator().manual_seed(seed + 1)
        self.emb = torch.randn((1024, self.sh.H), generator=g).to(DTYPES[self.sh.dtype]).to(self.device)
        self.kv: dict[int, torch.Tensor] = {}
        with one_thread(self.device):
            self.warm_up()

    def warm_up(self) -> None:
        """Every op once, untimed (first-call costs: allocator, dispatch, kernel compilation)."""
        sh, dev = self.sh, self.device
        for n, start in ((4, 0), (2, 3), (1, 5)):
            x = self.emb[:n]
            kv = self.moe.new_kv(start + n)
            x = self.moe.attention(0, x, [(kv, start, n)])
            experts = torch.arange(n * sh.K, device=dev).reshape(n, sh.K) % sh.E
            routed = self.moe.gate(0, x, experts)
            table = [self.slots.capacity + e for e in range(sh.E)]  # staging slots (garbage is fine)
            expert_ffn(x, routed, table, self.slots.w13, self.slots.w2, sh.K, sh.block_size)
        self._sync()

    # ------------------------------------------------------------------------------------------
    def run(self, progress: bool = False) -> ServeResult:
        """Serve every request; on the CPU torch runs on this one thread (as calibrated)."""
        with one_thread(self.device):
            return self._run(progress)

    def _run(self, progress: bool) -> ServeResult:
        w, rep, st = self.world, self.rep, self.st
        cache = st.cache
        # the warm start (weights loaded before serving, not loads): the cache's resident set, or
        # every expert where they all fit
        self.slots.follow(cache.resident if cache is not None else np.flatnonzero(st.home_mask).tolist())
        self.slots.copied = 0
        self._sync()
        out = ServeResult(expert_bytes=int(w.plan.expert_bytes))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=w.R, unit="req", desc="realrun")
        t_start = time.perf_counter()
        before = st.counts()
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(w.R):  # every request arrives at time 0, in order
            w.req.replica[i] = rep.index
            rep.waiting.append(i)
            w.walk.pred.request_start(rep, i, 0.0)
        st.inflight.clear()
        self._sync()
        setup = (time.perf_counter() - t0, time.thread_time() - c0)
        while w.tallies.completed < w.R:
            now = time.perf_counter() - t_start
            batch, alloc = w.batcher.form(rep, now)
            w.batcher.begin(rep, batch, alloc)
            rec = self.iteration(batch, alloc)
            rec.wall_s += setup[0]
            rec.cpu_s += setup[1]
            rec.measured_s = rec.cpu_s if self.clock == "cpu" and self.device.type != "cuda" \
                else rec.wall_s
            setup = (0.0, 0.0)
            after = st.counts()
            rec.counts = counts_minus(after, before)
            before = after
            out.iterations.append(rec)
            fin = w.batcher.finish(rep, batch, alloc, time.perf_counter() - t_start)
            for i in fin.tolist():
                self.kv.pop(i, None)
            if bar is not None and len(fin):
                bar.update(len(fin))
        if bar is not None:
            bar.close()
        out.wall_s = time.perf_counter() - t_start
        out.counts = st.counts()
        out.copied_bytes = self.slots.copied * self.sh.expert_bytes
        if self.slots.copied != out.counts.loads:
            raise MoesimError(f"internal: realrun made {self.slots.copied} expert copies for "
                              f"{out.counts.loads} loads counted by the policy")
        return out

    def iteration(self, batch: np.ndarray, alloc: np.ndarray) -> IterationRecord:
        """One iteration: the simulator's decisions (:class:`sim.serving.walk.LayerWalk`'s own
        methods, in its order) carried out with real weights, copies and compute."""
        w, rep, st, sh = self.world, self.rep, self.st, self.sh
        walk, plan, req = w.walk, w.plan, w.req
        L, E, K = sh.L, sh.E, sh.K
        timer = _Timer(self.device)
        keep = alloc > 0
        batch, alloc = batch[keep], alloc[keep]
        shape = batch_shape(req, batch, alloc)
        keys_tok = plan.pool_keys[shape.rows].astype(np.int64)  # (T, L*K)
        counts_flat = np.bincount(keys_tok.ravel(), minlength=L * E)  # (L*E,)
        used_flat = counts_flat > 0
        step0 = rep.step
        rep.step += L
        need, active = walk.needs(rep.states, used_flat)
        experts = torch.as_tensor((keys_tok % E).reshape(-1, L, K)).to(self.device)  # (T, L, K)
        seqs = []
        for i, n in zip(batch.tolist(), alloc.tolist()):
            kv = self.kv.get(i)
            if kv is None:
                kv = self.kv[i] = self.moe.new_kv(int(req.prompt[i] + req.output[i]))
            seqs.append((kv, int(req.ctx[i]), n))
        x = self.emb[torch.as_tensor(shape.rows % len(self.emb)).to(self.device)]  # (T, H)
        cache = st.cache
        for l in range(L):
            x = self.moe.attention(l, x, seqs)
            routed = self.moe.gate(l, x, experts[:, l])
            keys = sorted(need[0][l]) if cache is not None else \
                (l * E + np.flatnonzero(counts_flat[l * E:(l + 1) * E])).tolist()
            if cache is not None:
                walk.serve_layer(st, step0 + l, need[0][l], active[0])
            table = self.slots.layer_table(l, keys)
            x = x + expert_ffn(x, routed, table, self.slots.w13, self.slots.w2, K, sh.block_size)
            if walk.pred.pf_next and cache is not None:
                walk.pred.next_layer(rep, l, used_flat, step0, 0.0, need)
                st.inflight.clear()
        if not walk.pred.pf_next and walk.pred.observers:
            for l in range(L):
                walk.pred.observe(rep, l, used_flat)
        return IterationRecord(tokens=len(shape.rows), decode=shape.decode, requests=len(batch),
                               pairs=shape.pairs, counts=CacheCounts(), measured_s=0.0,
                               **timer.stop())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _Timer:
    """Wall time (CUDA events on a GPU) and this thread's CPU time of a stretch of work."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.a = torch.cuda.Event(enable_timing=True)
            self.b = torch.cuda.Event(enable_timing=True)
            self.a.record()
        self.t0, self.c0 = time.perf_counter(), time.thread_time()

    def stop(self) -> dict[str, float]:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            return {"wall_s": self.a.elapsed_time(self.b) / 1e3, "cpu_s": 0.0}
        return {"wall_s": time.perf_counter() - self.t0, "cpu_s": time.thread_time() - self.c0}


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """torch on the calling thread only (CPU), the thread count restored after."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def counts_minus(a: CacheCounts, b: CacheCounts) -> CacheCounts:
    """``a - b`` field by field (what a cache did between two snapshots)."""
    return CacheCounts(**{f.name: getattr(a, f.name) - getattr(b, f.name) for f in fields(a)})
