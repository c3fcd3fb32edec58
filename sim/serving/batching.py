"""Continuous batching, pure (no simpy): admission, preemption and KV accounting of one replica.

The shape of Vidur's replica scheduler: before each iteration :meth:`Batcher.form` gives every
running request up to its pending tokens (decode: 1; prefill or recompute: a chunk) out of
``serving.token_budget``, in running order; then it admits the waiting requests the scheduler
policy picks while the budget, ``serving.max_batch_requests`` and the replica's KV memory allow.
After the iteration :meth:`Batcher.finish` books the processed tokens, the generated tokens and
the completions.

KV accounting: a request holds KV for the tokens it has processed. If the running requests' next
tokens do not fit, the most recently admitted request is preempted (its KV is freed; it keeps its
generated tokens and recomputes its context on re-admission, as vLLM's recompute preemption) until
they fit or one request is left. Admission needs room for the request's whole pending context plus
the token it generates.

The simulator drives it from SimPy processes (:mod:`sim.engine.simulation`); realrun can drive the very same
object in real time: it needs only the request arrays, a replica state and the clock.

Per iteration the array work (pending tokens and their allocation, the processed tokens, an
iteration's end) runs with numpy here, the reference, or, once :data:`sim.serving.walk.COMPILE_AFTER`
iterations were formed, in one compiled call each (:mod:`sim.serving.compiled_batching`: the same
bytes). The running requests' array is kept with their list (admitted requests appended, finished
ones removed by the kernel) instead of being built from it, and a view is refreshed only for a
request that ran since its view was last set (:attr:`Batcher._ran`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sim.common.errors import ConfigError, MoesimError
from sim.policies.base import RequestView, SchedulerPolicy
from sim.serving import walk
from sim.serving.state import ReplicaState, Requests, Tallies
from sim.world.config import ServingConfig


def batch_kernels() -> Any:
    """:mod:`sim.serving.compiled_batching` (imported here, lazily: numba), or None without numba."""
    try:
        from sim.serving import compiled_batching
    except ImportError:
        return None
    return compiled_batching


class _LazyViews(Sequence):
    """The running requests as RequestViews, built only when a scheduler looks at them."""

    def __init__(self, indices: list[int], view: Any) -> None:
        self._indices, self._view = list(indices), view

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._view(j) for j in self._indices[i]]
        return self._view(self._indices[i])


def allocate(pending: np.ndarray, budget: int) -> np.ndarray:
    """Tokens per request this iteration: in order, up to its pending tokens, within budget."""
    before = np.cumsum(pending) - pending
    return np.minimum(np.maximum(budget - before, 0), pending)  # np.clip, without its overhead


class Batcher:
    def __init__(self, req: Requests, serving: ServingConfig, scheduler: SchedulerPolicy,
                 kv_capacity_tokens: int, tallies: Tallies, scheduler_name: str = "?") -> None:
        self.req, self.s, self.scheduler = req, serving, scheduler
        self.kv_capacity_tokens = kv_capacity_tokens
        self.tallies = tallies
        self.scheduler_name = scheduler_name
        self._views: dict[int, RequestView] = {}
        self._task_outputs: dict[str, tuple[int, int]] = {}  # task -> (completed, output tokens)
        self._window_cache: dict[int, tuple[list[int], tuple[RequestView, ...]]] = {}
        self._run_cache: dict[int, tuple[list[int], np.ndarray]] = {}  # replica -> running, array
        #: the requests admitted since their view's done_tokens was last set: every other view's
        #: is its request's generated tokens (only running requests generate)
        self._ran: set[int] = set()
        #: the compiled kernels (:func:`batch_kernels`) once ``compile_after`` iterations were
        #: formed (the walk's threshold, :data:`sim.serving.walk.COMPILE_AFTER`); the same bytes
        #: as the numpy here (tests/sim/serving/test_compiled_batching.py)
        self.kern: Any = None
        self.compile_after = walk.COMPILE_AFTER
        self.formed = 0

    # -- what a scheduler sees ------------------------------------------------------------------
    def view(self, i: int) -> RequestView:
        v = self._views.get(i)
        if v is not None:
            v.done_tokens = int(self.req.generated[i])
            return v
        r, s = self.req, self.s
        pred = self.predicted_output(i)
        v = self._views[i] = RequestView(
            index=i, arrival_s=float(r.arrival_s[i]), prompt_tokens=int(r.prompt[i]),
            done_tokens=int(r.generated[i]), predicted_output_tokens=pred, task=r.task[i],
            slo_s=s.ttft_slo_s + s.tpot_slo_s * pred)
        return v

    def predicted_output(self, i: int) -> float:
        """Output length a serving system would predict: the mean over completed requests of the
        same task so far (eMoE's per-task profile), ``serving.predicted_output_tokens`` before any."""
        n, total = self._task_outputs.get(self.req.task[i], (0, 0))
        return total / n if n else float(self.s.predicted_output_tokens)

    # -- before an iteration --------------------------------------------------------------------
    def form(self, rep: ReplicaState, now: float) -> tuple[np.ndarray, np.ndarray]:
        """The iteration's batch (request indices) and tokens per request; preempts and admits."""
        r, s, cap = self.req, self.s, self.kv_capacity_tokens
        self.formed += 1
        if self.formed == self.compile_after:
            self.kern = batch_kernels()
        kern = self.kern
        alloc = np.zeros(0, dtype=np.int64)
        run = None
        used = 0  # alloc.sum()
        while rep.running:
            run = self._running_array(rep)
            if kern is not None:
                alloc, used = kern.pending_alloc(run, r.prompt, r.generated, r.ctx, s.token_budget)
            else:
                pend = r.prompt[run] + r.generated[run] - r.ctx[run]  # (B,) pending tokens
                alloc = allocate(pend, s.token_budget)
                used = int(alloc.sum())
            if rep.kv_used + used <= cap or len(run) == 1:
                break
            # (two or more ran: one is left and the loop goes round again, all three renewed)
            self.preempt(rep, rep.running.pop())
        budget = s.token_budget - used
        kv_free = cap - rep.kv_used - used
        if budget > 0 and rep.waiting and len(rep.running) < s.max_batch_requests:
            admitted, extra = self._admit(rep, now, budget, kv_free)
            if admitted:
                self._ran.update(admitted)
                waiting, k = rep.waiting, len(admitted)
                w = min(len(waiting), self.s.scheduler_window)
                adm = set(admitted)  # all from the scheduler's window: the head of the queue
                if adm.isdisjoint(waiting[k:w]):  # (then they are its first k, in some order)
                    del waiting[:k]  # (the usual case: what the filter below leaves)
                else:
                    waiting[:w] = [i for i in waiting[:w] if i not in adm]
                rep.running.extend(admitted)
                new = np.asarray(admitted, dtype=np.int64)
                alloc = np.concatenate([alloc, np.asarray(extra, dtype=np.int64)])
                used += sum(extra)
                # the running requests' array: the one before admission, then the admitted
                run = new if run is None else np.concatenate([run, new])
                self._run_cache[rep.index] = (list(rep.running), run)
        if not rep.running or used == 0:
            if not rep.waiting:  # running requests with no pending token: an inconsistent state
                ids = [r.request_id[j] for j in rep.running]
                raise MoesimError(f"replica {rep.index}: no tokens to process for running "
                                  f"request(s) {ids} (their KV already covers their context)")
            i = rep.waiting[0]
            raise MoesimError(f"replica {rep.index}: cannot admit request {r.request_id[i]!r} "
                              f"({int(r.prompt[i])} prompt tokens) into {cap} KV tokens")
        return run, alloc  # (something runs: the loop or the admission set ``run``)

    def _running_array(self, rep: ReplicaState) -> np.ndarray:
        """``rep.running`` as an int64 array, reused while the list is unchanged (comparing two
        lists of ints is cheaper than building the array)."""
        key, arr = self._run_cache.get(rep.index, (None, None))
        if key != rep.running:
            key, arr = list(rep.running), np.asarray(rep.running, dtype=np.int64)
            self._run_cache[rep.index] = (key, arr)
        return arr

    def preempt(self, rep: ReplicaState, i: int) -> None:
        """Free request ``i``'s KV; it waits at the head of the queue to recompute its context."""
        r, t = self.req, self.tallies
        rep.kv_used -= int(r.ctx[i])
        t.tokens_recomputed += int(r.ctx[i])
        r.ctx[i] = 0
        r.preemptions[i] += 1
        t.preemptions += 1
        rep.waiting.insert(0, i)

    def _admit(self, rep: ReplicaState, now: float, budget: int, kv_free: int
               ) -> tuple[list[int], list[int]]:
        r, s = self.req, self.s
        window = rep.waiting[: s.scheduler_window]
        cached = self._window_cache.get(rep.index)
        if cached is not None and cached[0] == window:
            # the same waiting requests as last time: their views are as self.view leaves them
            # but where one ran since (only finish() changes a request's generated tokens, and
            # only of running requests: one admitted, run and preempted back into this window)
            wviews = list(cached[1])
        else:  # every view as self.view(i) leaves it
            get, view = self._views.get, self.view
            wviews = [get(i) or view(i) for i in window]  # (a view is never false)
            self._window_cache[rep.index] = (window, tuple(wviews))
        stale = self._ran.intersection(window)  # the others' done_tokens are their generated
        if stale:
            views, gen = self._views, r.generated
            for i in stale:
                views[i].done_tokens = int(gen[i])
            self._ran -= stale
        picked = self.scheduler.admit(now, wviews,
                                      _LazyViews(rep.running, self.view), budget)
        admitted: list[int] = []
        extra: list[int] = []
        for i in picked:  # (a pick is near the window's head: the list is searched from there)
            if i not in window or i in admitted:
                raise MoesimError(f"scheduler {self.scheduler_name!r} admitted request {i}, which is "
                                  f"not waiting (or twice)")
            if budget <= 0 or len(rep.running) + len(admitted) >= s.max_batch_requests:
                break
            need = int(r.prompt[i] + r.generated[i])  # whole context + the token it generates
            if need + 1 > kv_free:
                if not rep.running and not admitted:  # (nothing holds KV: kv_free is all of it)
                    raise ConfigError(
                        f"request {r.request_id[i]!r} needs {need + 1} KV tokens, the replica holds "
                        f"{self.kv_capacity_tokens}; give the replica more memory")
                break
            n = min(need, budget)
            admitted.append(i)
            extra.append(n)
            budget -= n
            kv_free -= need + 1
        return admitted, extra

    def begin(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray) -> None:
        """Book the work an iteration starts (counted even if a fault interrupts it)."""
        if self.kern is not None:
            self.tallies.tokens_processed += self.kern.begin_arrays(self.req.processed, batch, alloc)
        else:
            self.req.processed[batch] += alloc
            self.tallies.tokens_processed += int(alloc.sum())
        rep.iterations += 1

    # -- after an iteration ---------------------------------------------------------------------
    def finish(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray, now: float
               ) -> np.ndarray:
        """Book an iteration that ended at ``now``; returns the requests that completed."""
        r, kern = self.req, self.kern
        if kern is not None:
            fin, added, freed, rest = kern.finish_arrays(
                batch, alloc, r.ctx, r.generated, r.prompt, r.output, r.first_token_s, r.finish_s,
                r.completions, now)
            rep.kv_used += added - freed
        else:
            fin = self._finish_arrays(rep, batch, alloc, now)
        if len(fin):
            # the running requests' array after the removal below: the kernel's ``rest`` where
            # the batch is the cached array of the running requests (their list's very values)
            cached = self._run_cache.get(rep.index) if kern is not None else None
            keep = cached is not None and cached[1] is batch and cached[0] == rep.running
            fs = set(fin.tolist())
            self._ran -= fs
            for i in fs:
                self._views.pop(i, None)
                n, total = self._task_outputs.get(r.task[i], (0, 0))
                self._task_outputs[r.task[i]] = (n + 1, total + int(r.output[i]))
            if keep:  # the list of the kernel's array (every occurrence removed)
                rep.running[:] = rest.tolist()
                self._run_cache[rep.index] = (list(rep.running), rest)
            elif len(fs) <= 4:  # a few completions: removed in place (every occurrence)
                running = rep.running
                for i in fs:
                    while i in running:
                        running.remove(i)
            else:
                rep.running = [i for i in rep.running if i not in fs]
            self.tallies.completed += len(fin)
            self.tallies.last_finish_s = now
        rep.kv_peak = max(rep.kv_peak, rep.kv_used)
        if rep.kv_used > self.kv_capacity_tokens or rep.kv_used < 0:
            raise MoesimError(f"replica {rep.index}: KV use {rep.kv_used} tokens outside [0, "
                              f"{self.kv_capacity_tokens}]")
        return fin

    def _finish_arrays(self, rep: ReplicaState, batch: np.ndarray, alloc: np.ndarray, now: float
                       ) -> np.ndarray:
        """:meth:`finish`'s array work with numpy (the reference of
        :func:`sim.serving.compiled_batching.finish_arrays`): context, generated tokens, first-token
        and finish times, completions and the KV they hold; returns the finished requests."""
        r = self.req
        if len(alloc) and alloc.min() > 0:  # (a negative count is dropped as a zero)
            b, a = batch, alloc
        else:
            keep = alloc > 0
            b, a = batch[keep], alloc[keep]
        ctx = r.ctx[b] + a  # (the batch's requests are distinct)
        r.ctx[b] = ctx
        rep.kv_used += int(a.sum())
        generated = r.generated[b]
        caught_up = ctx == r.prompt[b] + generated
        gen = b[caught_up]
        ngen = generated[caught_up] + 1
        r.generated[gen] = ngen
        first = gen[np.isnan(r.first_token_s[gen])]
        r.first_token_s[first] = now
        fin = gen[ngen >= r.output[gen]]
        if len(fin):
            r.finish_s[fin] = now
            r.completions[fin] += 1
            rep.kv_used -= int(r.ctx[fin].sum())
        return fin
