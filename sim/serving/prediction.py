"""Prediction and prefetch in a replica: what the layer walk (:mod:`sim.serving.walk`) does with the
prefetch policy and the request predictor, and the per-request hooks of the cache policies.

- :meth:`Prediction.request_start`: a request reaches a replica; caches that keep per-request
  state reset it (``begin_request``), the request predictor (the prefetch policy, or eMoE-A for a
  cache that keeps a predicted set) names the experts it expects (``set_predicted``), and a
  per-request prefetch policy loads them: on each GPU the predicted set that fits its slots
  (:func:`sim.policies._predictor.fit_predicted`, ranked across layers), in one ``insert``, once
  per prediction (a request whose prediction is the one already loaded on the GPU loads nothing).
- :meth:`Prediction.next_layer` / :meth:`Prediction.observe`: after a layer, the predictors learn
  what it used and a next-layer prefetch policy loads its guess for the layer after.
- :meth:`Prediction.prefetch_keys`: the prefetch decisions (the caches' ``insert``: the experts of
  the layer being computed and of the target layer are protected, the iteration's active set is
  passed as Huang et al.'s rule asks; a key with no victim it may evict is skipped), returned as
  copies (GPU, keys loaded, keys evicted); the simulator starts them on the GPUs' host links with
  :meth:`Prediction.issue` (or, on a device whose copies run in line with compute, charges them
  as time by :meth:`take_inline`); realrun copies them for real.

Shape legend: L MoE layers, E experts per layer; a cache key is ``layer * E + expert``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from sim.common.errors import MoesimError
from sim.policies._predictor import fit_predicted
from sim.policies.base import CACHE, PrefetchContext, PrefetchPolicy
from sim.serving.cache_log import CacheLog
from sim.serving.link import Link
from sim.serving.plan import ClusterPlan
from sim.serving.state import GpuState, Recorder, ReplicaState, Requests

_INF = float("inf")


class Prediction:
    def __init__(self, plan: ClusterPlan, cost: Any, req: Requests, prefetch: PrefetchPolicy,
                 predictor: PrefetchPolicy | None, cache_name: str,
                 recorder: Recorder | None = None, log: CacheLog | None = None) -> None:
        self.cost, self.req = cost, req
        self.prefetch, self.predictor = prefetch, predictor
        self.cache_name = cache_name
        self.recorder, self.log = recorder, log
        self.L, self.E = plan.L, plan.E
        self.eb = plan.expert_bytes
        pf = type(prefetch)
        self.pf_next = pf.predicts_next_layer
        self.pf_req = pf.plans_requests
        #: a next-layer policy that reads the batch's routing rows (the oracles, ``learned_next``):
        #: given the pool once here, and each iteration's pool rows by :meth:`begin`
        self.pf_rows = pf.batch_rows
        #: a next-layer policy that weighs each candidate against the link's state
        #: (``learned_next``): :meth:`_weighed` asks it, with the window measured by :meth:`issue`
        self.pf_weighs = bool(getattr(pf, "weighs", False))
        #: a next-layer policy's layers ahead: at layer l it loads for layer l + lead (1: next)
        #: replica -> (layer, when its experts could start: :func:`compute_start`)
        self._gate: dict[int, tuple[int, float]] = {}
        self._pending: dict[int, int] = {}  # replica -> the layer whose prefetch issue() starts
        self.window_sum, self.window_n = 0.0, 0  # idle link seconds per layer, measured
        if self.pf_rows:
            N = len(plan.pool_keys)
            base = (np.arange(plan.L, dtype=np.int64) * plan.E)[None, :, None]  # (1, L, 1)
            prefetch.set_routing(plan.pool_keys.reshape(N, plan.L, plan.K).astype(np.int64) - base)
        self.observers = [p for p in dict.fromkeys([prefetch, predictor])
                          if p is not None and type(p).observes]
        #: a device whose copies run in line with compute (``copies_in_line``: the CPU profile of
        #: realrun calibrate): a prefetch costs its copy time where it is issued (the next layer,
        #: or the next iteration for a request's prefetch) instead of overlapping on the link
        self.inline = bool(getattr(cost, "copies_in_line", False))
        self._inline_s: dict[int, float] = {}  # replica -> in-line copy seconds not yet charged
        cache_cls = CACHE.get(cache_name)
        self.cache_uses_requests = cache_cls.uses_requests
        self.cache_uses_prediction = cache_cls.uses_prediction
        #: GPU id -> the predicted set last loaded there by a request prefetch (once per prediction)
        self._loaded: dict[int, tuple[Any, list[int]]] = {}  # (the cache, its keys)

    def cost_s(self) -> float:
        """Seconds one prediction call costs per layer (charged when a prefetch policy predicts)."""
        return self.prefetch.cost_s() if (self.pf_next or self.pf_req) else 0.0

    def begin(self, rows: np.ndarray) -> float:
        """An iteration serves the tokens of pool rows ``rows`` (T,): a policy that reads them
        is told (its cost may depend on the batch); returns :meth:`cost_s`."""
        if self.pf_rows:
            self.prefetch.batch(rows)
        return self.cost_s()

    def take_inline(self, rep: ReplicaState) -> float:
        """In-line prefetch copy time of replica ``rep`` not yet charged (0 on a device whose
        copies overlap compute)."""
        return self._inline_s.pop(rep.index, 0.0) if self.inline else 0.0

    def observe(self, rep: ReplicaState, l: int, used_flat: np.ndarray) -> np.ndarray:
        E = self.E
        experts = np.flatnonzero(used_flat[l * E:(l + 1) * E])
        for p in self.observers:
            p.observe(rep.ctx, l, experts)
        return experts

    def next_layer(self, rep: ReplicaState, l: int, used_flat: np.ndarray, step0: int,
                   need: list[list[Any]], active: list[Any] | None = None
                   ) -> list[tuple[int, list[int], list[int]]]:
        """After layer ``l``: the observers learn what it used and a next-layer prefetch policy
        loads its guess for layer ``l + 1``, never evicting an expert of layer ``l`` (computing
        while the copies start) or one layer ``l + 1`` needs, and evicting keys outside the
        iteration's ``active`` set first; returns the copies decided (see :meth:`prefetch_keys`)."""
        E = self.E
        experts = self.observe(rep, l, used_flat) if self.observers else \
            np.flatnonzero(used_flat[l * E:(l + 1) * E])
        if l + 1 < self.L and self.pf_weighs:
            return self._weighed(rep, l, step0, need, active)
        d = int(getattr(self.prefetch, "lead", 1))
        if l + d < self.L:
            pred = np.asarray(self.prefetch.next_layer(rep.ctx, l, experts), dtype=np.int64)
            if len(pred):
                return self.prefetch_keys(rep, (l + d) * E + pred, step0 + l, need, l + d, active,
                                          in_use=l)
        return []

    def window_s(self) -> float:
        """Mean idle host-link seconds per layer measured so far (0: none yet): from a layer's
        gate, or its demand copies' end if later, to the next layer's gate."""
        return self.window_sum / self.window_n if self.window_n else 0.0

    def _weighed(self, rep: ReplicaState, l: int, step0: int, need: list[list[Any]],
                 active: list[Any] | None) -> list[tuple[int, list[int], list[int]]]:
        """A weighing policy's prefetch after layer ``l``, for layers l+1 .. l+lead: per GPU, the
        candidates (its experts of those layers not resident), the copy time on its link, the
        window and the link's prefetch backlog now (:func:`link_backlog_s`) go to the policy's
        ``weigh``; the experts it picks are loaded, those of probability >= ``protect_p`` and
        what the batch needs at layers l .. l+lead protected."""
        E, L, pf = self.E, self.L, self.prefetch
        self._pending[rep.index] = l
        if not pf.running:  # (the predictor does not run on this iteration)
            return []
        ks = [k for k in range(1, int(pf.lead) + 1) if l + k < L]
        homes = [(l + k) * E + np.arange(E, dtype=np.int64) for k in ks]
        w = self.window_s()
        prev = self._gate.get(rep.index)
        after = prev[1] if prev is not None else -_INF
        gate = prev[1] + w if prev is not None else 0.0  # this layer's gate, as estimated
        chosen: list[list[int]] = [[] for _ in ks]
        for st in rep.states:
            cache = st.cache
            if cache is None:
                continue
            res = cache.resident
            cands = [np.array([e for e in range(E) if st.home_mask[h[e]] and h[e] not in res],
                              dtype=np.int64) for h in homes]
            if not any(len(c) for c in cands):
                continue
            lk = st.link
            copy_s = lk.latency_s + (0.0 if lk.infinite else self.eb / lk.bytes_per_s)
            now = compute_start(lk, after, gate)
            n = cache.counts
            hits = n.hits + n.late_prefetch_hits
            picks = pf.weigh(rep.ctx, l, cands, copy_s, w, link_backlog_s(lk, now), hits,
                             hits + n.misses)
            for i, pick in enumerate(picks):
                chosen[i].extend(pick.tolist())
        keys: list[int] = []
        extra: list[int] = []
        for i, k in enumerate(ks):
            got = np.array(sorted(set(chosen[i])), dtype=np.int64)
            pf.count(rep.ctx, l, got, k)
            keys.extend((homes[i][got]).tolist())
            extra.extend(homes[i][pf.next_probs(rep.ctx, l, k) >= pf.cfg.protect_p].tolist())
        if not keys:
            return []
        return self.prefetch_keys(rep, np.array(keys, dtype=np.int64), step0 + l, need, l + ks[-1],
                                  active, in_use=l, extra=extra)

    def prefetch_keys(self, rep: ReplicaState, keys: np.ndarray, step: int, need: list[list[Any]],
                      layer: int, active: list[Any] | None = None, in_use: int | None = None,
                      extra: list[int] | None = None) -> list[tuple[int, list[int], list[int]]]:
        """Load predicted keys of layers up to ``layer`` into the GPUs that hold them (the
        decision: the caches' ``insert``), protecting what GPU g's ``need[g]`` says the layers
        from ``in_use`` (the layer computing while the copies start) to ``layer`` need, and the
        keys ``extra``, under GPU g's ``active[g]`` set;
        returns the copies that makes, ``(GPU index in the replica, keys loaded, keys evicted)``
        per GPU that loaded any, in the order decided, for the driver to carry out (the
        simulator: :meth:`issue`; realrun copies the loaded keys into the evicted ones' slots)."""
        copies: list[tuple[int, list[int], list[int]]] = []
        for g, st in enumerate(rep.states):
            cache = st.cache
            if cache is None:
                continue
            mine = keys[st.home_mask[keys]]
            if not len(mine):
                continue
            ng = need[g]
            protect = ng[layer] if layer < len(ng) else ()
            if in_use is not None and in_use < len(ng):  # (and the layers between, loading ahead)
                for j in range(in_use, min(layer, len(ng))):
                    if ng[j]:
                        protect = set(protect).union(ng[j])
            if extra:
                protect = set(protect).union(extra)
            act = active[g] if active is not None else None
            if self.log is not None and act is not None:
                self.log.add(st.gpu, "active", step, act)
            self._insert(g, st, step, mine.tolist(), protect, act, copies)
        return copies

    def _insert(self, g: int, st: GpuState, step: int, keys: list[int], protect: Any, active: Any,
                copies: list[tuple[int, list[int], list[int]]]) -> None:
        """One prefetch ``insert`` into GPU ``g``'s cache (logged), held to its budget; what it
        loaded, with its victims, appended to ``copies``."""
        cache = st.cache
        if self.log is not None:
            self.log.add(st.gpu, "insert", step, keys, protect)
        loaded, evicted = cache.insert(step, keys, protect=protect, active=active)
        if len(cache.resident) > st.capacity:
            raise MoesimError(f"cache policy {self.cache_name!r} went over budget on GPU "
                              f"{st.gpu} during prefetch")
        st.peak_resident = max(st.peak_resident, len(cache.resident))
        if loaded:
            copies.append((g, loaded, evicted))

    def issue(self, rep: ReplicaState, copies: list[tuple[int, list[int], list[int]]],
              t_issue: float) -> None:
        """The simulator's side of prefetch ``copies`` (:meth:`prefetch_keys`): each starts on its
        GPU's host link at ``t_issue`` (the key is then in flight until the layer needing it
        waits for it), or, on a device whose copies run in line, costs its copy time where it
        is issued (:meth:`take_inline`; the key is then landed when needed). A key loaded again
        while an earlier prefetch of it is on record was evicted before use: counted unused.
        For a weighing policy it measures the idle link window (:meth:`window_s`)."""
        if self.pf_weighs:
            self._measure(rep, t_issue)
        for g, loaded, _ in copies:
            st = rep.states[g]
            for k in loaded:
                old = st.inflight.pop(k, None)
                if old is not None:  # (loaded again: the earlier copy was evicted unused)
                    st.prefetch_evicted_unused += 1
                    if old >= 0:
                        st.link.forget(old)
        if self.inline:
            stall = 0.0  # the replica's GPUs copy side by side: the longest stalls it
            for g, loaded, _ in copies:
                stall = max(stall, self.cost.copy_s(len(loaded) * self.eb))
                rep.states[g].inflight.update(dict.fromkeys(loaded, -1))  # landed when needed
            if stall:
                self._inline_s[rep.index] = self._inline_s.get(rep.index, 0.0) + stall
            return
        rec = self.recorder
        for g, loaded, _ in copies:
            st = rep.states[g]
            for k in loaded:
                tid = st.inflight[k] = st.link.add(t_issue, self.eb)
                if rec is not None and rec.want(t_issue):
                    # finish as known now (later copies on the link may stretch it)
                    rec.add(f"prefetch L{k // self.E} e{k % self.E}", "copy", st.gpu,
                            t_issue + st.link.latency_s, st.link.finish_peek(tid))

    def _measure(self, rep: ReplicaState, t_gate: float) -> None:
        """Layer ``l``'s gate is ``t_gate`` (its prefetch starts now): the link was free for
        prefetches from layer l-1's compute start (:func:`compute_start`) until now."""
        l = self._pending.pop(rep.index, -1)
        prev = self._gate.get(rep.index)
        after = -_INF
        if prev is not None:
            after = prev[1]
            if l >= 1 and prev[0] == l - 1 and t_gate >= prev[1]:
                self.window_sum += t_gate - prev[1]
                self.window_n += 1
        cs = max(compute_start(st.link, after, t_gate) for st in rep.states)
        self._gate[rep.index] = (l, cs)

    def request_start(self, rep: ReplicaState, i: int) -> list[tuple[int, list[int], list[int]]]:
        """Request ``i`` reaches replica ``rep``: the caches that keep per-request state reset it,
        the request predictor (the prefetch policy, or eMoE-A for a cache that keeps a predicted
        set) names the experts it expects, and the prefetch policy loads them. Returns the
        prefetch copies decided (:meth:`prefetch_keys`), all its layers' in order."""
        if self.predictor is None and not self.cache_uses_requests:
            return []  # (no prediction, so no predicted set nor request prefetch: nothing to do)
        r = self.req
        pred_plan: dict[int, Any] = {}
        if self.predictor is not None:
            ctx = PrefetchContext(request_id=r.request_id[i], task=r.task[i],
                                  prompt_tokens=int(r.prompt[i]), request_index=i)
            pred_plan = self.predictor.on_request(ctx)
        plan_keys = self._plan_keys(pred_plan)
        fitted: dict[int, list[int]] = {}  # GPU -> its fitted set (the same for both uses)
        for st in rep.states:
            cache = st.cache
            if cache is None:
                continue
            if self.cache_uses_requests:
                if self.log is not None:
                    self.log.add(st.gpu, "begin", i)
                cache.begin_request(i)
            if self.cache_uses_prediction and self.predictor is not None:
                keys = fitted[st.gpu] = self._predicted_keys(st, plan_keys)
                if self.log is not None:
                    self.log.add(st.gpu, "predict", 0, keys)
                cache.set_predicted(keys)
        copies: list[tuple[int, list[int], list[int]]] = []
        if self.pf_req and pred_plan:
            for g, st in enumerate(rep.states):
                cache = st.cache
                if cache is None:
                    continue
                keys = fitted.get(st.gpu)
                if keys is None:
                    keys = self._predicted_keys(st, plan_keys)
                if not keys or self._loaded.get(st.gpu) == (cache, keys):
                    continue  # nothing predicted, or this prediction is loaded already
                self._loaded[st.gpu] = (cache, keys)
                # one insert for the whole set: its resident keys are protected, so no layer's
                # load evicts what another layer's load brought
                self._insert(g, st, rep.step, keys, keys, None, copies)
        return copies

    def _plan_keys(self, plan: dict[int, Any]) -> tuple[np.ndarray, np.ndarray]:
        """A request predictor's plan (layer -> its predicted experts, most expected first) as
        cache keys (int64), layer after layer in increasing order, and each layer's end in them:
        built once per request for all the replica's GPUs."""
        E = self.E
        parts = [int(layer) * E + np.asarray(experts, dtype=np.int64).reshape(-1)
                 for layer, experts in sorted(plan.items())]
        ends = np.cumsum([len(p) for p in parts], dtype=np.int64)
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return keys, ends

    def _predicted_keys(self, st: GpuState, plan_keys: tuple[np.ndarray, np.ndarray]) -> list[int]:
        """The predicted set that fits a GPU's cache: the predicted experts the GPU holds, taken
        rank by rank across layers (every layer's first, then every layer's second, ...) up to
        its slots; with one cache per layer this is the replay's rule (each layer's first C).
        ``plan_keys``: :meth:`_plan_keys`."""
        keys, ends = plan_keys
        held = st.home_mask[keys]
        kept = keys[held].tolist()  # the keys the GPU holds, layer after layer
        csum = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(held, out=csum[1:])
        cut = csum[ends].tolist()  # ... where each layer's end
        per_layer = [kept[a:b] for a, b in zip([0, *cut], cut)]
        return fit_predicted(per_layer, st.capacity)


def compute_start(link: Link, after: float, gate: float) -> float:
    """When a layer whose gate is ``gate`` (or estimated so) can start its experts, as far as
    ``link`` knows, hence when the link is next free for prefetches: after the layer's demand
    copies (booked at its gate; a demand copy starting after ``after``, the previous layer's
    compute start, is this layer's: its start is then the exact gate) and after the prefetched
    copies it waited for (the link has served its prefetch queue up to ``pt``)."""
    t = gate
    if link._solo and not link.infinite:
        g = link.t - link.latency_s
        if g > after:
            t = max(g, link.t + link._solo / link.bytes_per_s)
    return max(t, link.pt)


def link_backlog_s(link: Link, t: float) -> float:
    """Seconds of prefetch copies queued on ``link`` still to run at ``t`` (their bytes at the
    full rate, plus any wait before the queue is served from ``t``), read from a scratch copy of
    its queue served up to ``t``; the link itself is unchanged."""
    if link.infinite or not link.pq:
        return 0.0
    s = Link(link.bytes_per_s, link.latency_s)
    s.pq = deque([list(x) for x in link.pq])
    s.queued = {x[0]: x for x in s.pq if x[0] >= 0}
    s.pt, s.gaps = link.pt, list(link.gaps)
    s._serve(None, t)
    left = sum(x[1] for x in s.pq)
    return max(0.0, s.pt - t) + left / link.bytes_per_s
