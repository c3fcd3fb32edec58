"""Fast cache replay: a routing trace through cache (and prefetch) policies, with no timing.

The same registered policy classes as the simulator (``sim.policies.CACHE`` / ``PREFETCH``), driven
through their ``access`` / ``insert`` / ``replay`` methods; nothing here re-implements a policy.

Plain mode (exact semantics, tested in tests/sim/replay/test_replay.py):

- Requests one after another in trace order, tokens in order.
- One cache per MoE layer holding ``C = floor(fraction x experts)`` experts (the one slot rule,
  :func:`sim.world.facts.cache_slots`, shared with the simulator and realrun), kept across requests.
  A layer's steps are the trace's tokens: step ``t`` = token ``t``.
- A token's k experts are requested together: resident ones are hits, each missing one is loaded,
  evicting a resident expert not in the token's set; cold misses count. Missing experts load in
  increasing id order; ties are broken by expert id (see each policy's docstring). If ``C < k``
  the experts beyond the cache stream through (a miss, not kept).
- Layers are independent caches, so each layer's whole step sequence goes through one
  ``policy.replay(keys)`` call (the policies' fast path over the same state ``access`` uses).

Batch mode (Huang et al.'s setting, :func:`sim.world.facts.batch_executions`, the semantics realrun runs
too): a batch of B consecutive tokens (trace order, crossing request boundaries) requests the
union of its experts at each layer, executed one expert at a time in increasing id order; each
execution is one step needing only that expert, with the batch's union passed as ``active``
(Huang's buffering evicts inactive experts first). Accesses = executions.

Prefetch (``prefetch`` policy, optional): at each request's start ``on_request`` names experts per
layer, loaded with ``insert`` before the request's first token (their loads count in
``h2d_bytes``); ``next_layer`` predictions are inserted into layer l+1's cache right after layer
l's access of the same token (token-major replay). Hits on prefetched experts count as hits.

Per-request policies: policies with ``uses_requests`` (MoE-Infinity's priority) get
``begin_request`` at each request's first token; ``keep_predicted`` (eMoE) gets ``set_predicted``
at each request's start (the first C experts the ``prefetch`` policy names, or ``emoe_a`` when
there is none; one
predictor per layer pass; eMoE-A's prediction for a layer depends on that layer's history only).
In batch mode it gets no predicted set (it is then LRU).

Rerouting (eMoE, ``reroute=True``, plain mode, no next-layer prefetch): while a layer's cache is
not yet full at a request's start (the first prompts: eMoE loads everything first) the request is
served as above; once it is full, the request is served from what is resident after its
``on_request`` prefetch, with no load: each chosen expert that is absent is rerouted to a resident
one (eMoE: "the next-best resident expert"). ``rerouted`` counts those choices and
``routing_fidelity = 1 - rerouted / accesses``; rerouted choices are neither hits nor misses of the
demand path but are reported apart (``hits + misses + rerouted = accesses``).

Counts: the shared record (:class:`sim.world.facts.CacheCounts`, counted by the policies themselves):
``accesses`` = requested experts = ``hits + misses + rerouted``; ``loads`` = misses plus
``prefetched``; ``h2d_bytes = loads x expert bytes`` (the model config's expert, see
:func:`sim.world.facts.expert_bytes_of_trace`). ``bytes_moved`` and ``prefetch_loads`` repeat
``h2d_bytes`` and ``prefetched`` for one release.

:func:`replay_log` is the third entry: it serves the exact call sequence a simulator GPU's cache
received (``moesim sim output.cache_log=true``) and must count what the simulator counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.common.errors import ConfigError, MoesimError
from sim.common.files import gc_paused
from sim.policies import CACHE, PREFETCH
from sim.policies._predictor import fit_predicted, request_predictor
from sim.policies.base import CachePolicy, PrefetchContext, PrefetchPolicy
from sim.replay.why import batch_reused, plain_why, why_record
from sim.world.facts import CacheCounts, batch_executions, cache_slots, expert_bytes_of_trace, stable_float
from traces.format import RoutingTrace


def layer_capacity(fraction: float, num_experts: int) -> int:
    """A layer cache's slots: the one rule, :func:`sim.world.facts.cache_slots` (rounds down)."""
    return cache_slots(fraction, num_experts, "cluster.expert_budget_fractions")


@dataclass
class ReplayResult:
    """One (policy, capacity) replay: the shared cache-counts record (:class:`sim.world.facts.CacheCounts`)
    plus what only the replay knows."""

    policy: str
    capacity_frac: float
    capacity: int
    mode: str
    prefetch: str
    counts: CacheCounts
    per_layer_hit_rate: list[float] = field(default_factory=list)
    #: the figures that say why, under the simulator's names (sim/replay/why.py)
    why: dict[str, Any] = field(default_factory=dict)

    # the counts, read through (same names as the record)
    accesses = property(lambda self: self.counts.accesses)
    hits = property(lambda self: self.counts.hits)
    misses = property(lambda self: self.counts.misses)
    hit_rate = property(lambda self: self.counts.hit_rate)
    rerouted = property(lambda self: self.counts.rerouted)
    loads = property(lambda self: self.counts.loads)
    prefetched = property(lambda self: self.counts.prefetched)

    @property
    def routing_fidelity(self) -> float:
        n = self.counts.accesses
        return 1.0 - self.counts.rerouted / n if n else 1.0

    def record(self, expert_bytes: int) -> dict[str, Any]:
        rec = self.counts.record(expert_bytes)
        return {"policy": self.policy, "capacity_frac": self.capacity_frac,
                "capacity": self.capacity, "mode": self.mode, "prefetch": self.prefetch, **rec,
                "routing_fidelity": stable_float(self.routing_fidelity),
                "per_layer_hit_rate": self.per_layer_hit_rate, **self.why,
                # the names before the shared record (kept for one release; see the README)
                "bytes_moved": rec["h2d_bytes"], "prefetch_loads": rec["prefetched"]}


def _make_cache(name: str, capacity: int, num_keys: int, future: Any) -> CachePolicy:
    pol = CACHE.make(name, capacity=capacity, num_keys=num_keys)
    if pol.requires_future:
        pol.set_future(future)
    return pol


def _dims(trace: RoutingTrace) -> dict[str, int]:
    return dict(num_layers=trace.num_layers, num_experts=trace.num_experts, top_k=trace.top_k)


def _make_prefetch(name: str | None, trace: RoutingTrace, **kw: Any) -> PrefetchPolicy | None:
    if name in (None, "", "none"):
        return None
    pf = PREFETCH.make(name, **_dims(trace), **kw)
    if pf.requires_future:
        pf.set_trace(trace)
    return pf


def _contexts(trace: RoutingTrace) -> list[PrefetchContext]:
    bounds = trace.request_bounds()
    rids = trace.request_ids()
    tasks = trace.request_tasks()
    return [PrefetchContext(request_id=str(rids[r]), task=tasks[r],
                            prompt_tokens=int(bounds[r + 1] - bounds[r]), request_index=r,
                            extra={"first_token": int(bounds[r]), "last_token": int(bounds[r + 1])})
            for r in range(len(rids))]


def replay_plain(trace: RoutingTrace, policy: str, fraction: float, *, prefetch: str | None = None,
                 prefetch_kwargs: dict[str, Any] | None = None, reroute: bool = False
                 ) -> ReplayResult:
    """Plain mode (see the module docstring)."""
    with gc_paused():
        return _replay_plain(trace, policy, fraction, prefetch=prefetch,
                             prefetch_kwargs=prefetch_kwargs, reroute=reroute)


def _replay_plain(trace: RoutingTrace, policy: str, fraction: float, *, prefetch: str | None,
                  prefetch_kwargs: dict[str, Any] | None, reroute: bool = False) -> ReplayResult:
    T, L, K = trace.experts.shape
    E = trace.num_experts
    C = layer_capacity(fraction, E)
    cls = CACHE.get(policy)
    pf_kw = dict(prefetch_kwargs or {})
    needs_token_major = prefetch not in (None, "", "none") and _has_next_layer(prefetch, trace, pf_kw)
    if needs_token_major:
        if reroute:
            raise ConfigError(f"reroute=true needs a per-request prefetch policy (or none), not the "
                              f"next-layer policy {prefetch!r}")
        return _replay_token_major(trace, policy, fraction, prefetch, pf_kw)
    if reroute and cls.requires_future:
        reroute = False  # the oracle is the demand-loading bound: it never reroutes
    per_request = (cls.uses_requests or cls.uses_prediction
                   or prefetch not in (None, "", "none") or reroute)
    bounds = trace.request_bounds()
    ctxs = _contexts(trace) if per_request else []
    misses_l = np.zeros(L, dtype=np.int64)
    rerouted_l = np.zeros(L, dtype=np.int64)
    served_hits = 0
    counts = CacheCounts()
    for l in range(L):
        keys = trace.experts[:, l, :].astype(np.int64)  # (T, K)
        pol = _make_cache(policy, C, E, keys)
        if not per_request:
            misses_l[l] = pol.replay(keys, 0)
            counts.add(pol.counts)
            continue
        # one predictor per layer pass: it observes (and is asked about) this layer only
        pf = _make_prefetch(prefetch, trace, **pf_kw)
        # the prefetch policy, or eMoE-A for a cache that keeps a predicted set (with the prefetch
        # arguments, as given): the simulator's rule
        predictor = request_predictor(policy, pf, _dims(trace), **({} if pf is not None else pf_kw))
        m = 0
        for r, ctx in enumerate(ctxs):
            a, b = int(bounds[r]), int(bounds[r + 1])
            pol.begin_request(r)
            if predictor is not None:
                pred = predictor.on_request(ctx).get(l)
                pred = np.zeros(0, dtype=np.int64) if pred is None else np.asarray(pred)
                if cls.uses_prediction:
                    # the predicted set is what fits (one layer: its first C, most expected)
                    pol.set_predicted(fit_predicted([pred.tolist()], C))
                if pf is not None and len(pred):
                    pol.insert(a, pred[: max(C, 0)].tolist())
            if reroute and len(pol.resident) >= C > 0:
                resident = np.zeros(E, dtype=bool)  # (E,)
                resident[list(pol.resident)] = True
                absent = ~resident[keys[a:b]]  # (tokens, K)
                rerouted_l[l] += int(absent.sum())
                served_hits += int(absent.size - absent.sum())  # served as they are: no touch
            else:
                m += pol.replay(keys[a:b], a)
            if predictor is not None:
                predictor.observe(ctx, l, keys[a:b])
        misses_l[l] = m
        counts.add(pol.counts)
    counts.rerouted = int(rerouted_l.sum())
    counts.hits += served_hits
    return _result(policy, fraction, C, "plain", prefetch, T * L * K, counts, misses_l, T * K,
                   rerouted_l, why=plain_why(T, L, K, C, 0, counts.evictions))


def _has_next_layer(prefetch: str, trace: RoutingTrace, kw: dict[str, Any]) -> bool:
    cls = PREFETCH.get(prefetch)
    return cls.predicts_next_layer


def _replay_token_major(trace: RoutingTrace, policy: str, fraction: float, prefetch: str,
                        pf_kw: dict[str, Any]) -> ReplayResult:
    """Plain-mode semantics with next-layer prefetch: tokens in order, layers in order."""
    T, L, K = trace.experts.shape
    E = trace.num_experts
    C = layer_capacity(fraction, E)
    ex = trace.experts.astype(np.int64)  # (T, L, K)
    caches = [_make_cache(policy, C, E, ex[:, l, :]) for l in range(L)]
    pf = _make_prefetch(prefetch, trace, **pf_kw)
    assert pf is not None
    bounds = trace.request_bounds()
    misses_l = np.zeros(L, dtype=np.int64)
    rows = ex.tolist()
    reused = 0  # victims of a next-layer insert that the token then needs there
    for r, ctx in enumerate(_contexts(trace)):
        a, b = int(bounds[r]), int(bounds[r + 1])
        for c in caches:
            c.begin_request(r)
        for l, pred in sorted(pf.on_request(ctx).items()):
            if len(pred):
                caches[l].insert(a, np.asarray(pred)[:C].tolist())
        for t in range(a, b):
            ctx.extra["token"] = t
            row_t = rows[t]
            for l in range(L):
                keys = row_t[l]
                misses_l[l] += len(caches[l].access(t, keys)[0])
                arr = ex[t, l]
                if l + 1 < L:
                    nxt = pf.next_layer(ctx, l, arr)
                    if len(nxt):
                        ev = caches[l + 1].insert(t, np.asarray(nxt)[:C].tolist())[1]
                        if ev:
                            reused += len(set(ev).intersection(row_t[l + 1]))
                pf.observe(ctx, l, arr[None, :])
    counts = CacheCounts.total(c.counts for c in caches)
    return _result(policy, fraction, C, "plain", prefetch, T * L * K, counts, misses_l, T * K,
                   why=plain_why(T, L, K, C, reused, counts.evictions))


def replay_batch(trace: RoutingTrace, policy: str, fraction: float, batch_size: int) -> ReplayResult:
    """Batch mode (see the module docstring)."""
    with gc_paused():
        return _replay_batch(trace, policy, fraction, batch_size)


def _replay_batch(trace: RoutingTrace, policy: str, fraction: float, batch_size: int
                  ) -> ReplayResult:
    T, L, K = trace.experts.shape
    E = trace.num_experts
    C = layer_capacity(fraction, E)
    cls = CACHE.get(policy)
    misses_l = np.zeros(L, dtype=np.int64)
    acc_l = np.zeros(L, dtype=np.int64)
    counts = CacheCounts()
    distinct = over = reused = 0  # (why: per batch, experts over all layers; see sim/replay/why.py)
    for l in range(L):
        starts, ids = batch_executions(trace.experts[:, l, :], batch_size, E)  # runs, in order
        steps = ids[:, None]  # (S, 1)
        acc_l[l] = len(ids)
        pol = _make_cache(policy, C, E, steps)
        evicted: list[list[int]] = []
        if not cls.uses_active:
            # the active set changes nothing: one call (``replay``'s, with the victims kept)
            misses_l[l] = pol._serve(0, steps.tolist(), frozenset(), evicted=evicted)
        else:
            el = ids.tolist()
            m = 0
            for b in range(len(starts) - 1):
                union = frozenset(el[starts[b]:starts[b + 1]])
                for s in range(starts[b], starts[b + 1]):
                    miss, ev = pol.access(s, (el[s],), union)
                    m += len(miss)
                    evicted.append(ev)
            misses_l[l] = m
        counts.add(pol.counts)
        size = np.diff(starts)  # (batches,)
        distinct = distinct + size
        over += int((size > C).sum())
        reused += batch_reused(starts, ids, evicted)
    nb = len(distinct) if L else 0
    why = why_record(np.asarray(distinct), L * C, over, nb * L, reused, counts.evictions, "batch")
    return _result(policy, fraction, C, "batch", None, int(acc_l.sum()), counts, misses_l, acc_l,
                   why=why)


def _result(policy: str, fraction: float, C: int, mode: str, prefetch: str | None, accesses: int,
            counts: CacheCounts, misses_l: np.ndarray, acc_l: Any, rerouted_l: Any = 0,
            why: dict[str, Any] | None = None) -> ReplayResult:
    if counts.accesses != accesses:
        raise MoesimError(f"internal: {policy} served {counts.accesses} accesses, the trace has "
                          f"{accesses}")
    rerouted_l = np.broadcast_to(np.asarray(rerouted_l, dtype=np.int64), misses_l.shape)
    acc_l = np.broadcast_to(np.asarray(acc_l, dtype=np.float64), misses_l.shape)
    per_layer = [round(float(x), 6) for x in 1.0 - (misses_l + rerouted_l) / np.maximum(acc_l, 1)]
    return ReplayResult(policy=policy, capacity_frac=float(fraction), capacity=C, mode=mode,
                        prefetch=prefetch or "none", counts=counts, per_layer_hit_rate=per_layer,
                        why=why or {})


def run_replay(trace: RoutingTrace, policies: list[str], fractions: list[float], *,
               mode: str = "plain", batch_size: int = 16, prefetch: str | None = None,
               prefetch_kwargs: dict[str, Any] | None = None, expert_bytes: int | None = None,
               reroute: bool = False, model: Any = None,
               on_step: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Every (policy, fraction) pair, plus Belady at each fraction for the gap; records in order.
    ``on_step(policy, fraction)`` is called after each replay (progress)."""
    if mode not in ("plain", "batch"):
        raise ConfigError(f"mode must be 'plain' or 'batch', got {mode!r}")
    if reroute and mode != "plain":
        raise ConfigError("reroute=true is a plain-mode option")
    for p in policies:
        CACHE.get(p)  # unknown names fail before any work
    eb = expert_bytes_of_trace(trace.meta, model, expert_bytes)
    names = list(dict.fromkeys([*policies, "belady"]))
    out: list[dict[str, Any]] = []
    for frac in fractions:
        recs = []
        for name in names:
            if mode == "plain":
                pf = None if name == "belady" else prefetch  # the oracle: demand loading only
                res = replay_plain(trace, name, frac, prefetch=pf, prefetch_kwargs=prefetch_kwargs,
                                   reroute=reroute)
            else:
                res = replay_batch(trace, name, frac, batch_size)
            recs.append(res.record(eb))
            if on_step is not None:
                on_step(name, frac)
        bel = next(r for r in recs if r["policy"] == "belady")
        for r in recs:
            r["gap_to_belady_hit_rate"] = round(bel["hit_rate"] - r["hit_rate"], 9)
            r["gap_to_belady_misses"] = r["misses"] - bel["misses"]
            r["oracle"] = r["policy"] == "belady"
        out.extend(recs)
    return out


def replay_log(events: list[tuple[str, int, tuple, tuple]], policy: str, capacity: int,
               num_keys: int, cache_args: dict[str, Any] | None = None) -> CacheCounts:
    """Serve one GPU's recorded cache calls (:class:`sim.serving.cache_log.CacheLog` events, in order)
    through a fresh ``policy`` cache and return what it counted: the cross-driver check that the
    simulator counts what the replay counts on the same sequence."""
    def make() -> CachePolicy:
        return CACHE.make(policy, capacity=capacity, num_keys=num_keys, **(cache_args or {}))

    pol = make()
    retired = CacheCounts()
    active: tuple | None = None  # the active set of the next insert ("active" event)
    for kind, step, keys, other in events:
        if kind == "access":
            pol.access(step, keys, other)
        elif kind == "active":
            active = keys
        elif kind == "insert":
            pol.insert(step, keys, protect=other, active=active)
            active = None
        elif kind == "warm":
            pol.insert(step, keys)
            pol.counts = CacheCounts()  # weights loaded before serving are not loads
        elif kind == "begin":
            pol.begin_request(step)
        elif kind == "predict":
            pol.set_predicted(keys)
        elif kind == "reset":
            retired.add(pol.counts)
            pol = make()
        else:
            raise ConfigError(f"cache log: unknown event {kind!r}")
    return retired.add(pol.counts)
