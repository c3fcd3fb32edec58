"""The learned next-layer prefetcher that weighs each expert: it prefetches only what pays.

At layer l the layer-causal per-token predictor gives, for each expert e of layer l+1, the
probability p that the tokens being served need it (:func:`sim.predictor.table.next_layer_probs`;
a batch of tokens: 1 - prod(1 - p_t)). A copy started now is worth, if e is needed, the copy
time it takes off the layer's wait, ``saved = min(copy_s, window_s - backlog_s)``: the host link
is free for prefetches only between layer l's demand copies and layer l+1's (demand copies go
first, :mod:`sim.serving.link`), ``window_s`` of idle link per layer, less the prefetch bytes
already queued (``backlog_s``); a needed copy still in flight when its layer starts is waited
for after that layer's own demand copies, so a copy queued behind more than the window is worse
than none. If e is not needed, the copy evicts an expert the cache would have kept: expected
cost ``victim_value x copy_s``. So, candidates taken in order of p (ties: smaller id):

    prefetch e  iff  p x saved - (1 - p) x victim_value x copy_s > 0,

each chosen copy adding ``copy_s`` to the backlog (the first refused ends the list: later ones
have smaller p and a longer queue). Precision at which prefetch starts to pay (one copy, idle
link): ``victim_value x copy_s / (min(copy_s, window_s) + victim_value x copy_s)``
(:func:`break_even`). With a weak predictor it prefetches nothing and is demand LRU; with a
confident one it fills the link's idle time. A correct prefetch evicts what its demand miss
would have evicted, so it costs nothing more.

``rule: gate`` is the confidence-gated variant: every candidate with p >= ``gate``, no cost
weighed. In the cache replay (no link, no time) ``next_layer`` answers with the gate rule.

The simulator's side (the window measured from the walk's gate times, the backlog read from the
link, the candidates not resident) is :meth:`sim.serving.prediction.Prediction.next_layer`; it
also never evicts a layer-(l+1) expert with p >= ``protect_p``, nor one the batch needs at
layers l and l+1. Its compute is charged per layer as ``learned_topk``'s (``cost_s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.policies.base import PREFETCH, PrefetchContext, PrefetchPolicy

BINS, PRIOR = 10, 20.0  # online calibration: probability bins, pseudo-counts
WARM, BURST = 32, 16  # iterations the predictor runs before it is judged; a probe's iterations
_PROBS: dict[tuple[str, str, int], Any] = {}  # (checkpoint, trace, lead) -> (probs, experts)
MAX_LEAD = 4


@dataclass(frozen=True)
class LearnedNextConfig:
    checkpoint: str = ""  # predictor directory from 'moesim predictor train' (required)
    trace_path: str = ""  # the routing trace the driver replays (required; its probabilities)
    call_s_per_token: float | None = None  # seconds per token per layer (None: measured)
    rule: str = "ev"  # ev (expected value, above) | gate (every expert with p >= gate)
    gate: float = 0.8  # rule gate (and the replay): the least probability prefetched
    #: expected copies lost per expert a wrong prefetch evicts (null: from the cache's hit rate h,
    #: ``victim_scale`` x h / (1 - h), see :func:`victim_value`)
    victim_value: float | None = None
    victim_scale: float = 0.5
    protect_p: float = 0.5  # an expert of layers l+1..l+lead with p >= this is never evicted
    lead: int = 1  # layers ahead weighed at layer l: l+1 .. l+lead (1..4)
    #: while the expected gain per token has not paid the predictor's compute, it runs on one
    #: iteration in ``probe`` only (0: on every iteration)
    probe: int = 8


def expected_gain(p: float, saved_s: float, copy_s: float, victim_value: float) -> float:
    """Seconds a prefetch is expected to take off the stall (see the module doc)."""
    return p * saved_s - (1.0 - p) * victim_value * copy_s


def victim_value(hits: int, accesses: int, scale: float) -> float:
    """Copies a wrong prefetch is expected to cost by what it evicts. It holds a slot for a whole
    LRU cycle (C slots / m misses per access), as if the cache had one slot less: slope x C / m =
    -d ln m / d ln C, the elasticity of the miss rate m to the slots C. On DeepSeek-V2-Lite's
    trace (LRU, 25 / 50 / 75 % of the experts: hit rate 0.439 / 0.690 / 0.886) it is ~0.45 at
    25 % and ~4 at 75 %, which ``scale`` x h / (1 - h) with scale 0.5 follows (0.39, 3.9); h is
    the cache's hit rate so far, (hits + 1) / (accesses + 2), capped at 0.99."""
    h = min((hits + 1.0) / (accesses + 2.0), 0.99)
    return scale * h / (1.0 - h)


def break_even(copy_s: float, window_s: float, victim_value: float) -> float:
    """The probability above which one copy on an idle link pays (1.0: none does)."""
    saved = min(copy_s, window_s)
    if saved <= 0:
        return 1.0
    cost = victim_value * copy_s
    return cost / (saved + cost)


def choose(prob: np.ndarray, copy_s: float, window_s: float, backlog_s: float,
           victim_value: float) -> np.ndarray:
    """Indices into ``prob`` (n,) of the candidates to prefetch, in the order chosen; a copy
    chosen for a layer d ahead has ``window_s`` = d windows."""
    p = np.asarray(prob, dtype=np.float64)
    order = np.lexsort((np.arange(len(p)), -p))
    out: list[int] = []
    b = float(backlog_s)
    for i in order.tolist():
        saved = min(copy_s, window_s - b)
        if saved <= 0 or expected_gain(float(p[i]), saved, copy_s, victim_value) <= 0:
            break
        out.append(i)
        b += copy_s
    return np.asarray(out, dtype=np.int64)


def _load(checkpoint: str, trace_path: str, lead: int) -> tuple[Any, np.ndarray]:
    """(probabilities at lead ``lead``, the trace's experts), loaded once per process."""
    key = (checkpoint, trace_path, lead)
    if key not in _PROBS:
        from sim.common.files import require_file
        from sim.predictor.table import next_layer_probs
        from traces.format import read_trace

        trace = read_trace(require_file(trace_path, "policy.prefetch_args.trace_path"))
        _PROBS[key] = (next_layer_probs(checkpoint, trace, lead=lead), np.asarray(trace.experts))
    return _PROBS[key]


@PREFETCH.register("learned_next")
class LearnedNext(PrefetchPolicy):
    Config = LearnedNextConfig
    predicts_next_layer = True
    batch_rows = True
    #: the simulator asks :meth:`weigh` with the link's state (sim.serving.prediction)
    weighs = True

    def setup(self) -> None:
        c = self.cfg
        if not c.checkpoint or not c.trace_path:
            raise ConfigError("prefetch policy learned_next needs checkpoint=DIR (from 'moesim "
                              "predictor train') and trace_path=FILE (the routing trace replayed)")
        if c.rule not in ("ev", "gate"):
            raise ConfigError(f"learned_next: rule={c.rule!r}; expected ev or gate")
        for key in ("gate", "victim_value", "victim_scale", "protect_p"):
            v = getattr(c, key)
            unit = key in ("gate", "protect_p")
            if v is not None and not 0.0 <= v <= (1.0 if unit else float("inf")):
                raise ConfigError(f"learned_next: {key}={v}; expected "
                                  f"{'in [0, 1]' if unit else '>= 0'}")
        if not c.probe >= 0:
            raise ConfigError(f"learned_next: probe={c.probe}; expected >= 0 (0: always runs)")
        if not 1 <= c.lead <= MAX_LEAD:
            raise ConfigError(f"learned_next: lead={c.lead}; expected 1 <= lead <= {MAX_LEAD}")
        cs = c.call_s_per_token
        if cs is not None and not cs >= 0:
            raise ConfigError(f"learned_next: call_s_per_token={cs}; expected >= 0")
        self.lead = int(c.lead)
        loaded = [_load(str(c.checkpoint), str(c.trace_path), k) for k in range(1, self.lead + 1)]
        probs, ex = loaded[0]
        if ex.shape[1:] != (self.num_layers, self.top_k) or probs.prob.shape[2] != self.num_experts:
            raise ConfigError(f"{c.trace_path}: routing has {ex.shape[1]} layers, top-"
                              f"{ex.shape[2]}; the model has {self.num_layers}, top-{self.top_k}")
        self._probs = [p.prob for p, _ in loaded]  # per lead k: (T, L, E) float16
        self._prob = self._probs[0]
        self._truth = ex  # (T, L, K)
        self.measured_s_per_token = float(probs.s_per_token)
        self.s_per_token_layer = float(cs) if cs is not None else probs.s_per_token / self.num_layers
        self._batch: np.ndarray | None = None
        #: per lead k - 1: experts chosen that the layer needed, chosen, needed
        self.hits_d, self.predicted_d, self.true_d = ([0] * self.lead for _ in range(3))
        self.copy_s = self.window_s = 0.0
        self.victim = c.victim_value if c.victim_value is not None else 0.0
        #: the predictor runs on this iteration; expected seconds saved per token it ran on
        self.running, self.gain_per_token = True, 0.0
        self._gain, self._tokens, self._off, self._every = 0.0, 0, 0, c.probe
        self._left = WARM  # iterations it runs before judging (warming up, or a probe)
        self._cal_n = np.zeros((self.lead, BINS))  # candidates seen per lead and probability bin
        self._cal_true = np.zeros((self.lead, BINS))  # of them, needed

    # -- simulator hooks (sim.serving.prediction) ------------------------------------------------
    def set_routing(self, experts: np.ndarray) -> None:
        """The simulator's pool must be the trace's tokens, or its first prompts."""
        ex = np.asarray(experts)
        n = len(ex)
        if ex.shape[1:] != self._truth.shape[1:] or n > len(self._truth) or \
                not np.array_equal(ex, self._truth[:n]):
            raise ConfigError(f"learned_next: the simulator's routing (trace.path) is not "
                              f"{self.cfg.trace_path}, the trace its predictions were computed on")

    def batch(self, rows: np.ndarray) -> None:
        """The next iteration serves pool rows ``rows``: the predictor runs on it (``running``)
        during its first :data:`WARM` iterations, while its expected gain per token (a moving
        mean, weight 1/16, over the iterations it ran) covers its compute per token (L layers),
        and in probes of :data:`BURST` iterations: ``probe`` iterations after it stopped paying,
        then twice as long after each probe (up to 1024 x ``probe``; ``probe`` 0: always runs;
        ``rule: gate`` weighs nothing and always runs)."""
        self._settle()
        self._batch = np.asarray(rows, dtype=np.int64)
        if self._left > 0:  # warming up, or a probe
            self._left -= 1
            self.running = True
        elif self.cfg.rule == "gate" or self.cfg.probe == 0 or \
                self.gain_per_token >= self.s_per_token_layer * self.num_layers:
            self._off, self._every = 0, self.cfg.probe
            self.running = True
        else:
            self._off += 1
            self.running = self._off >= self._every
            if self.running:  # a probe; the next one twice as late
                self._off, self._left = 0, BURST - 1
                self._every = min(2 * self._every, 1024 * self.cfg.probe)
        self._tokens = len(rows) if self.running else 0

    def _settle(self) -> None:
        """Fold the iteration just run into the gain per token."""
        if self._tokens:
            self.gain_per_token += (self._gain / self._tokens - self.gain_per_token) / 16.0
        self._gain, self._tokens = 0.0, 0

    def cost_s(self) -> float:
        if not self.running:
            return 0.0
        n = len(self._batch) if self._batch is not None else 1
        return self.s_per_token_layer * n

    # -- prediction --------------------------------------------------------------------------------
    def _rows(self, ctx: PrefetchContext) -> np.ndarray:
        if "token" in ctx.extra:
            rows = np.array([int(ctx.extra["token"])])
        elif self._batch is not None:
            rows = self._batch
        else:
            raise ConfigError("learned_next: the driver named no token or batch")
        if len(rows) and rows.max() >= len(self._prob):
            raise ConfigError(f"learned_next: token row {int(rows.max())} is past the "
                              f"{len(self._prob)} tokens of {self.cfg.trace_path}")
        return rows

    def next_probs(self, ctx: PrefetchContext, layer: int, k: int = 1) -> np.ndarray:
        """(E,) P(some token served needs expert e at layer ``layer + k``), known at ``layer``."""
        p = self._probs[k - 1][self._rows(ctx), layer + k].astype(np.float64)  # (T, E)
        return 1.0 - np.prod(1.0 - p, axis=0)

    def calibrated(self, prob: np.ndarray, k: int = 1) -> np.ndarray:
        """``prob`` at lead ``k`` mapped to the share of earlier candidates of its bin that were
        needed (:data:`BINS` bins of width 1/BINS; ``PRIOR`` pseudo-counts at the probability)."""
        p = np.asarray(prob, dtype=np.float64)
        b = np.minimum((p * BINS).astype(np.int64), BINS - 1)
        return (self._cal_true[k - 1, b] + PRIOR * p) / (self._cal_n[k - 1, b] + PRIOR)

    def weigh(self, ctx: PrefetchContext, layer: int, cands: list[np.ndarray], copy_s: float,
              window_s: float, backlog_s: float, hits: int = 0, accesses: int = 0
              ) -> list[np.ndarray]:
        """Per lead k = 1, 2, ..: the experts among the candidates ``cands[k - 1]`` (not
        resident) of layer ``layer + k`` to prefetch (the configured rule), weighed at their
        calibrated probabilities, nearer layers first (their copies queue first), a layer k
        ahead with k windows; then the calibration learns which candidates those layers needed
        (read only by later decisions). ``hits`` / ``accesses``: the GPU cache's so far (the
        victim value, unless configured). The copy time, window and victim value are kept
        (``copy_s``, ``window_s``, ``victim``)."""
        v = self.cfg.victim_value
        if v is None:
            v = victim_value(hits, accesses, self.cfg.victim_scale)
        self.copy_s, self.window_s, self.victim = copy_s, window_s, v
        out: list[np.ndarray] = []
        b = float(backlog_s)
        for k, cand in enumerate(cands, start=1):
            cand = np.asarray(cand, dtype=np.int64)
            raw = self.next_probs(ctx, layer, k)[cand]
            if self.cfg.rule == "gate":
                pick = np.flatnonzero(raw >= self.cfg.gate)
            else:
                pc = self.calibrated(raw, k)
                pick = choose(pc, copy_s, k * window_s, b, v)
                for j, i in enumerate(pick.tolist()):
                    self._gain += expected_gain(float(pc[i]), min(copy_s, k * window_s - b - j * copy_s),
                                                copy_s, v)
            b += len(pick) * copy_s
            hot = np.zeros(self.num_experts, dtype=bool)
            hot[self._truth[self._rows(ctx), layer + k].ravel()] = True
            bins = np.minimum((raw * BINS).astype(np.int64), BINS - 1)
            self._cal_n[k - 1] += np.bincount(bins, minlength=BINS)
            self._cal_true[k - 1] += np.bincount(bins, weights=hot[cand], minlength=BINS)
            out.append(cand[pick])
        return out

    def count(self, ctx: PrefetchContext, layer: int, chosen: np.ndarray, k: int = 1) -> None:
        """Count the experts chosen for layer ``layer + k`` against what it used."""
        pred = np.unique(np.asarray(chosen, dtype=np.int64))
        true = np.unique(self._truth[self._rows(ctx), layer + k])
        self.hits_d[k - 1] += len(np.intersect1d(pred, true, assume_unique=True))
        self.predicted_d[k - 1] += len(pred)
        self.true_d[k - 1] += len(true)

    def next_layer(self, ctx: PrefetchContext, layer: int, experts: np.ndarray) -> np.ndarray:
        """Without the link's state (the cache replay): the experts of layer ``layer + 1`` with
        p >= ``gate``."""
        if layer + 1 >= self.num_layers:
            return np.zeros(0, dtype=np.int64)
        pred = np.flatnonzero(self.next_probs(ctx, layer) >= self.cfg.gate).astype(np.int64)
        self.count(ctx, layer, pred)
        return pred

    def accuracy_by_lead(self) -> list[dict[str, float]]:
        """Per lead k: micro recall and precision of the sets chosen for layers k ahead."""
        return [{"lead": k + 1, "recall": self.hits_d[k] / max(self.true_d[k], 1),
                 "precision": self.hits_d[k] / max(self.predicted_d[k], 1),
                 "chosen": self.predicted_d[k]} for k in range(self.lead)]

    def accuracy(self) -> dict[str, float]:
        """Micro recall and precision of the sets chosen so far, all leads (against all the
        experts the layers used, resident or not)."""
        h, p, t = sum(self.hits_d), sum(self.predicted_d), sum(self.true_d)
        return {"recall": h / max(t, 1), "precision": h / max(p, 1)}
