"""Fast cache replay: a routing trace through cache (and prefetch) policies, with no timing.

The same registered policy classes as the simulator (``sim.policies.CACHE`` / ``PREFETCH``), driven
through their ``access`` / ``insert`` / ``replay`` methods; nothing here re-implements a policy.

Plain mode (exact semantics, tested in tests/sim/test_replay.py):

- Requests one after another in trace order, tokens in order.
- One cache per MoE layer holding ``C = round(fraction x experts)`` experts (half rounds up), kept
  across requests. A layer's steps are the trace's tokens: step ``t`` = token ``t``.
- A token's k experts are requested together: resident ones are hits, each missing one is loaded,
  evicting a resident expert not in the token's set; cold misses count. Missing experts load in
  increasing id order; ties are broken by expert id (see each policy's docstring). If ``C < k``
  the experts beyond the cache stream through (a miss, not kept).
- Layers are independent caches, so each layer's whole step sequence goes through one
  ``policy.replay(keys)`` call (the policies' fast path over the same state ``access`` uses).

Batch mode (Huang et al.'s setting): a batch of B consecutive tokens (trace order, crossing request
boundaries) requests the union of its experts at each layer, executed one expert at a time in
increasing id order; each execution is one step needing only that expert, with the batch's union
passed as ``active`` (Huang's buffering evicts inactive experts first). Accesses = executions.

Prefetch (``prefetch`` policy, optional): at each request's start ``on_request`` names experts per
layer, loaded with ``insert`` before the request's first token (their loads count in
``bytes_moved``); ``next_layer`` predictions are inserted into layer l+1's cache right after layer
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

Counts: ``accesses`` = requested experts, ``hits + misses = accesses``; ``loads`` = misses plus
prefetch loads; ``bytes_moved = loads x expert_bytes``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sim.errors import ConfigError
from sim.policies import CACHE, PREFETCH
from sim.policies.base import CachePolicy, PrefetchContext, PrefetchPolicy
from traces.format import RoutingTrace

#: bytes of one routed expert's weights (3 matrices, bf16), by model-name prefix (lower case)
EXPERT_BYTES: dict[str, int] = {
    "deepseek-v2-lite": 3 * 2048 * 1408 * 2,  # hidden 2048, moe_intermediate 1408
    "mixtral-8x7b": 3 * 4096 * 14336 * 2,  # hidden 4096, intermediate 14336
    "mixtral-8x22b": 3 * 6144 * 16384 * 2,
}


def expert_bytes_for(model: str, override: int | None = None) -> int:
    if override is not None:
        if int(override) <= 0:
            raise ConfigError(f"expert_bytes must be positive, got {override}")
        return int(override)
    m = model.lower()
    for prefix, b in EXPERT_BYTES.items():
        if m.startswith(prefix):
            return b
    raise ConfigError(f"no expert size known for model {model!r} (known: {sorted(EXPERT_BYTES)}); "
                      f"set expert_bytes=N")


def layer_capacity(fraction: float, num_experts: int) -> int:
    """C = round(fraction x experts), half rounding up; fraction must be in [0, 1]."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"capacity fraction must be in [0, 1], got {fraction}")
    return int(np.floor(float(fraction) * num_experts + 0.5))


@dataclass
class ReplayResult:
    policy: str
    capacity_frac: float
    capacity: int
    mode: str
    prefetch: str
    accesses: int
    hits: int
    misses: int
    hit_rate: float
    loads: int
    prefetch_loads: int
    bytes_moved: int
    per_layer_hit_rate: list[float] = field(default_factory=list)
    rerouted: int = 0
    routing_fidelity: float = 1.0

    def record(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The replay allocates millions of short-lived lists and ints and no reference cycles;
    pausing the cyclic collector while it runs saves ~20% (restored afterwards)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _make_cache(name: str, capacity: int, num_keys: int, future: Any) -> CachePolicy:
    pol = CACHE.make(name, capacity=capacity, num_keys=num_keys)
    if pol.requires_future:
        pol.set_future(future)
    return pol


def _make_prefetch(name: str | None, trace: RoutingTrace, **kw: Any) -> PrefetchPolicy | None:
    if name in (None, "", "none"):
        return None
    pf = PREFETCH.make(name, num_layers=trace.num_layers, num_experts=trace.num_experts,
                       top_k=trace.top_k, **kw)
    if getattr(pf, "requires_future", False) and hasattr(pf, "set_trace"):
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
    with _gc_paused():
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
    per_request = (getattr(cls, "uses_requests", False) or getattr(cls, "uses_prediction", False)
                   or prefetch not in (None, "", "none") or reroute)
    bounds = trace.request_bounds()
    ctxs = _contexts(trace) if per_request else []
    misses_l = np.zeros(L, dtype=np.int64)
    rerouted_l = np.zeros(L, dtype=np.int64)
    pre_loads = 0
    for l in range(L):
        keys = trace.experts[:, l, :].astype(np.int64)  # (T, K)
        pol = _make_cache(policy, C, E, keys)
        if not per_request:
            misses_l[l] = pol.replay(keys, 0)
            continue
        # one predictor per layer pass: it observes (and is asked about) this layer only
        pf = _make_prefetch(prefetch, trace, **pf_kw)
        predictor = pf
        if predictor is None and getattr(cls, "uses_prediction", False):
            predictor = _make_prefetch("emoe_a", trace, **pf_kw)
        m = 0
        for r, ctx in enumerate(ctxs):
            a, b = int(bounds[r]), int(bounds[r + 1])
            pol.begin_request(r)
            if predictor is not None:
                pred = predictor.on_request(ctx).get(l)
                pred = np.zeros(0, dtype=np.int64) if pred is None else np.asarray(pred)
                if getattr(cls, "uses_prediction", False):
                    # the predicted set is what fits: its first C (most expected) experts
                    pol.set_predicted(pred[:C].tolist())  # type: ignore[attr-defined]
                if pf is not None and len(pred):
                    loaded, _ = pol.insert(a, pred[: max(C, 0)].tolist())
                    pre_loads += len(loaded)
            if reroute and len(pol.resident) >= C > 0:
                resident = np.zeros(E, dtype=bool)  # (E,)
                resident[list(pol.resident)] = True
                rerouted_l[l] += int((~resident[keys[a:b]]).sum())
            else:
                m += pol.replay(keys[a:b], a)
            if predictor is not None:
                predictor.observe(ctx, l, keys[a:b])
        misses_l[l] = m
    return _result(policy, fraction, C, "plain", prefetch, T * L * K, misses_l, T * K, pre_loads,
                   rerouted_l)


def _has_next_layer(prefetch: str, trace: RoutingTrace, kw: dict[str, Any]) -> bool:
    cls = PREFETCH.get(prefetch)
    return cls.next_layer is not PrefetchPolicy.next_layer


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
    pre_loads = 0
    rows = ex.tolist()
    for r, ctx in enumerate(_contexts(trace)):
        a, b = int(bounds[r]), int(bounds[r + 1])
        for c in caches:
            c.begin_request(r)
        for l, pred in sorted(pf.on_request(ctx).items()):
            if len(pred):
                pre_loads += len(caches[l].insert(a, np.asarray(pred)[:C].tolist())[0])
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
                        pre_loads += len(caches[l + 1].insert(t, np.asarray(nxt)[:C].tolist())[0])
                pf.observe(ctx, l, arr[None, :])
    return _result(policy, fraction, C, "plain", prefetch, T * L * K, misses_l, T * K, pre_loads)


def replay_batch(trace: RoutingTrace, policy: str, fraction: float, batch_size: int) -> ReplayResult:
    """Batch mode (see the module docstring)."""
    with _gc_paused():
        return _replay_batch(trace, policy, fraction, batch_size)


def _replay_batch(trace: RoutingTrace, policy: str, fraction: float, batch_size: int
                  ) -> ReplayResult:
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    T, L, K = trace.experts.shape
    E = trace.num_experts
    C = layer_capacity(fraction, E)
    cls = CACHE.get(policy)
    nb = -(-T // batch_size)
    misses_l = np.zeros(L, dtype=np.int64)
    acc_l = np.zeros(L, dtype=np.int64)
    for l in range(L):
        # (nb, E) bool: which experts each batch needs at this layer
        need = np.zeros((nb * batch_size, E), dtype=bool)
        need[np.repeat(np.arange(T), K), trace.experts[:, l, :].reshape(-1)] = True
        need = need.reshape(nb, batch_size, E).any(axis=1)
        bi, ei = np.nonzero(need)  # executions in batch order, increasing id inside a batch
        steps = ei.astype(np.int64)[:, None]  # (S, 1)
        acc_l[l] = len(ei)
        pol = _make_cache(policy, C, E, steps)
        if not getattr(cls, "uses_active", False) and not getattr(cls, "uses_prediction", False):
            misses_l[l] = pol.replay(steps, 0)
            continue
        starts = np.concatenate([[0], np.cumsum(need.sum(axis=1))])
        el = ei.tolist()
        m = 0
        for b in range(nb):
            union = frozenset(el[starts[b]:starts[b + 1]])
            for s in range(starts[b], starts[b + 1]):
                m += len(pol.access(s, (el[s],), union)[0])
        misses_l[l] = m
    return _result(policy, fraction, C, "batch", None, int(acc_l.sum()), misses_l, acc_l, 0)


def _result(policy: str, fraction: float, C: int, mode: str, prefetch: str | None, accesses: int,
            misses_l: np.ndarray, acc_l: Any, pre_loads: int, rerouted_l: Any = 0) -> ReplayResult:
    rerouted_l = np.broadcast_to(np.asarray(rerouted_l, dtype=np.int64), misses_l.shape)
    rerouted = int(rerouted_l.sum())
    misses = int(misses_l.sum())
    acc_l = np.broadcast_to(np.asarray(acc_l, dtype=np.float64), misses_l.shape)
    per_layer = [round(float(x), 6) for x in 1.0 - (misses_l + rerouted_l) / np.maximum(acc_l, 1)]
    return ReplayResult(
        policy=policy, capacity_frac=float(fraction), capacity=C, mode=mode,
        prefetch=prefetch or "none", accesses=int(accesses), hits=int(accesses - misses - rerouted),
        misses=misses, hit_rate=(accesses - misses - rerouted) / accesses if accesses else 0.0,
        loads=misses + pre_loads, prefetch_loads=pre_loads, bytes_moved=0,
        per_layer_hit_rate=per_layer, rerouted=int(rerouted),
        routing_fidelity=1.0 - rerouted / accesses if accesses else 1.0)


def run_replay(trace: RoutingTrace, policies: list[str], fractions: list[float], *,
               mode: str = "plain", batch_size: int = 16, prefetch: str | None = None,
               prefetch_kwargs: dict[str, Any] | None = None, expert_bytes: int | None = None,
               reroute: bool = False) -> list[dict[str, Any]]:
    """Every (policy, fraction) pair, plus Belady at each fraction for the gap; records in order."""
    if mode not in ("plain", "batch"):
        raise ConfigError(f"mode must be 'plain' or 'batch', got {mode!r}")
    if reroute and mode != "plain":
        raise ConfigError("reroute=true is a plain-mode option")
    for p in policies:
        CACHE.get(p)  # unknown names fail before any work
    eb = expert_bytes_for(trace.meta.model, expert_bytes)
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
            res.bytes_moved = res.loads * eb
            recs.append(res.record())
        bel = next(r for r in recs if r["policy"] == "belady")
        for r in recs:
            r["gap_to_belady_hit_rate"] = round(bel["hit_rate"] - r["hit_rate"], 9)
            r["gap_to_belady_misses"] = r["misses"] - bel["misses"]
            r["oracle"] = r["policy"] == "belady"
        out.extend(recs)
    return out
