"""Realrun serves the simulator's scenario for real: one replica on one device (EP 1).

The world is the simulator's own: a :class:`sim.serving.assemble.World` built from the same
config, workload, routing pool and binding (no Simulation, no simpy), which gives the requests,
the cluster plan (cache slots from :func:`sim.world.facts.cache_slots`), the warm-started cache
policy, the prefetch policy and predictor, the scheduler and the continuous
:class:`sim.serving.batching.Batcher`. Realrun drives that batcher in real time and executes the
walk's own decision stream (:meth:`sim.serving.walk.LayerWalk.decide`), in the simulator's order:

- every request arrives at time 0: :meth:`sim.serving.assemble.World.route` (per-request reset,
  predicted set, request prefetch) for each, in arrival order, before the first iteration; the
  prefetch copies it decided are made;
- per iteration: the batch's pool rows and attention shape (:func:`sim.serving.layer_costs.batch_shape`),
  the keys each layer needs (``LayerWalk.needs``), then per layer the walk's :class:`~sim.serving.walk.Serve`
  decision (one ``access`` at cache step ``rep.step + layer``, the iteration's keys ``active``)
  and, for a next-layer prefetch policy, its :class:`~sim.serving.walk.Prefetch` decision; the
  observers after the last layer.

The simulator serves a layer's keys with the batched ``access_steps`` when nothing is in flight;
the policies test that equal to one ``access`` per layer. So hits, misses, streamed, prefetched
and bytes equal the simulator's by construction.

What the policies decide becomes real work. The device holds ``capacity`` expert slots plus a
staging buffer of ``E`` slots. Each decision is carried out as it is made: the slots of keys the
cache evicted are freed and the decision's keys (a layer's misses, each prefetch insert's loads)
that the cache now holds are copied in from host memory; a needed key that is not resident (the
layer needed more experts than the cache holds: it streams) is copied into the staging buffer
and dropped after the layer, and so is a key a prefetch insert loaded and evicted again (it was
a load). So every load the policy counts is one real copy (checked at the end). On a GPU misses
go on a copy stream the layer waits for and prefetches on a side stream that overlaps compute;
on the CPU copies are memory copies, in line. Each layer runs attention, gating and the routed
experts of :mod:`realrun.model`.

Every iteration is timed (CUDA events on a GPU; on the CPU both ``perf_counter`` and this
thread's CPU time, ``clock`` choosing which one is the measurement): from the batch formed to
the last layer's output. The request-start work (request prefetch copies) is timed into the
first iteration.
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
from realrun.slot_table import SlotTable
from sim.common.errors import ConfigError, MoesimError
from sim.serving.layer_costs import batch_shape
from sim.world.facts import CacheCounts

#: what a CPU iteration is timed by: wall clock, or this thread's CPU time
CLOCKS = ("wall", "cpu")


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
        #: the cache slots (realrun/slot_table.py, shared with realrun/expert_cache.py)
        self.table = SlotTable(capacity, self._copy, self._freed)
        self.slot = self.table.slot  # key -> slot
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

    def follow(self, resident: Any) -> None:
        """Free the slots of keys no longer ``resident``; copy the resident keys without a slot in
        (the warm start: the weights loaded before serving)."""
        self.release(resident)
        for k in sorted(set(resident).difference(self.slot)):
            self.load(k, self.miss_stream)

    def _freed(self, key: int) -> None:
        self.ready.pop(key, None)  # (a copy it waited for is moot: the slot is given back)

    def release(self, resident: Any) -> None:
        """Free the slots of keys no longer in ``resident`` (the cache evicted them)."""
        self.table.release_absent(resident)

    def load(self, key: int, stream: Any) -> None:
        """Copy ``key`` into a free cache slot."""
        self.table.load(key, stream)

    def serve(self, resident: Any, misses: list[int]) -> None:
        """A layer's :class:`~sim.serving.walk.Serve` decision made real: ``resident`` is the
        cache's resident set right after it. Evicted keys free their slots; each miss now
        resident is copied into a slot (the copy stream); a miss not resident streams (staged by
        :meth:`layer_table`)."""
        self.release(resident)
        for k in misses:
            if k in resident and k not in self.slot:
                self.load(k, self.miss_stream)

    def prefetch(self, loaded: list[int], evicted: list[int], E: int) -> None:
        """One prefetch ``insert`` made real (the side stream): the ``evicted`` keys free their
        slots, each ``loaded`` key is copied into one; a key the same insert loaded and evicted
        again is still copied (it was a load), into its staging slot."""
        gone = set(evicted)
        self.table.release(evicted)
        for k in loaded:
            if k in gone:
                self.stage(k, k // E)
            else:
                self.load(k, self.side_stream)

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


class RealServer:
    """Serve ``world`` (a :class:`sim.serving.assemble.World`) for real."""

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
        self.sh = Shapes.of(w.model, block_size)  # the world's model: shrunk already
        self.moe = TinyMoE(self.sh, device, seed)
        self.device = self.moe.device
        self.slots = Slots(self.moe, self.st.capacity)
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
            to, copies = w.route(i)
            if to is not rep:
                raise MoesimError(f"internal: request {i} routed to {to} instead of the one replica")
            self._prefetch(copies)
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
        """One iteration: the walk's decisions (:meth:`sim.serving.walk.LayerWalk.decide`, in its
        order) carried out with real weights, copies and compute."""
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
        decisions = walk.decide(rep, used_flat, step0, need, active, stepwise=True)
        experts = torch.as_tensor((keys_tok % E).reshape(-1, L, K)).to(self.device)  # (T, L, K)
        seqs = []
        for i, n in zip(batch.tolist(), alloc.tolist()):
            kv = self.kv.get(i)
            if kv is None:
                kv = self.kv[i] = self.moe.new_kv(int(req.prompt[i] + req.output[i]))
            seqs.append((kv, int(req.ctx[i]), n))
        x = self.emb[torch.as_tensor(shape.rows % len(self.emb)).to(self.device)]  # (T, H)
        cache = st.cache
        pf_next = walk.pred.pf_next
        for l in range(L):
            x = self.moe.attention(l, x, seqs)
            routed = self.moe.gate(l, x, experts[:, l])
            keys = sorted(need[0][l]) if cache is not None else \
                (l * E + np.flatnonzero(counts_flat[l * E:(l + 1) * E])).tolist()
            d = next(decisions)  # the layer's Serve
            miss = d.miss[0]
            if miss:
                self.slots.serve(cache.resident, miss)
            table = self.slots.layer_table(l, keys)
            x = x + expert_ffn(x, routed, table, self.slots.w13, self.slots.w2, K, sh.block_size)
            if pf_next:
                self._prefetch(next(decisions).copies)  # the layer's Prefetch
        for _ in decisions:  # (the observers learn the iteration's experts)
            raise MoesimError("internal: the walk decided more layers than the model has")
        return IterationRecord(tokens=len(shape.rows), decode=shape.decode, requests=len(batch),
                               pairs=shape.pairs, counts=CacheCounts(), measured_s=0.0,
                               **timer.stop())

    def _prefetch(self, copies: list[tuple[int, list[int]]]) -> None:
        """Carry out the prefetch copies the walk decided (one GPU: index 0)."""
        for _, loaded, evicted in copies:
            self.slots.prefetch(loaded, evicted, self.sh.E)

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
