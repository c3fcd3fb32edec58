"""eMoE's SLO-aware scheduler, their Algorithm 1 (Tairin et al., "eMoE: task-aware memory-efficient
MoE inference", arXiv 2503.06823, Sec. 4.4).

Runs on every call (the simulator calls it on arrivals and completions):

1. Order the waiting queue by SLO stringency: earliest deadline ``arrival_s + slo_s`` first (ties:
   smaller ``slo_s``, arrival, index).
2. Walk it in that order; admit a request while (a) the admitted prompts fit the token budget
   ``T_max`` (``token_budget``: the sum of their ``prompt_tokens + done_tokens`` stays <= it) and
   (b) no running request -- the requests already running plus those admitted so far -- would then
   miss its SLO. The first request that fails either test stops admission.
3. Expected latency of running request i with candidate batch B (``n = |B|`` requests):
   ``t_i = dE + (W + n * G_i) * c + r_i`` with ``dE`` the profiled expert-loading latency
   (``load_latency_s``), ``W`` the prompt tokens B still has to prefill (the newly admitted
   requests' ``prompt_tokens``), ``c`` the profiled per-token cost (``per_token_s``), ``G_i`` the
   remaining predicted output ``predicted_output_tokens - done_tokens`` -- when it has run out it
   resets to ``reset_frac`` (5%) of the initial prediction -- and ``r_i = now - arrival_s`` the time
   already spent. Request i misses its SLO if ``t_i > slo_s``.
4. A running request that misses its SLO already with the batch as it is (``n`` = the running
   requests, ``W = 0``) is past saving: refusing newcomers cannot make it meet its SLO, so it does
   not stop admission (the algorithm's aim is that admission makes no running request miss). Read
   literally, one late request would block every admission until it completes; with the SLOs
   taken from the running mean of the task's completed outputs (short ones complete first), that
   stalled the queue under load (``moesim experiment emoe``'s report shows both).
   ``protect_late=true`` restores the literal reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.common.errors import ConfigError
from sim.policies.base import SCHEDULER, RequestView, SchedulerPolicy


def remaining_output(v: RequestView, reset_frac: float = 0.05) -> float:
    g = v.predicted_output_tokens - v.done_tokens
    return g if g > 0 else reset_frac * v.predicted_output_tokens


@dataclass(frozen=True)
class EMoESchedConfig:
    load_latency_s: float = 0.0  # dE: profiled expert-loading latency
    per_token_s: float = 1e-3  # c: profiled per-token cost
    reset_frac: float = 0.05  # G_i once the prediction ran out, as a share of it
    protect_late: bool = False  # a running request already past its SLO still stops admission


@SCHEDULER.register("emoe")
class EMoEScheduler(SchedulerPolicy):
    Config = EMoESchedConfig

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        load_latency_s, per_token_s = self.cfg.load_latency_s, self.cfg.per_token_s
        reset_frac = self.cfg.reset_frac
        if load_latency_s < 0 or per_token_s < 0 or not 0 <= reset_frac <= 1:
            raise ConfigError("emoe scheduler: load_latency_s, per_token_s >= 0 and reset_frac in "
                              "[0, 1] expected")
        self.dE, self.c, self.reset_frac = load_latency_s, per_token_s, reset_frac

    def expected_latency_s(self, now_s: float, v: RequestView, n: int, W: int) -> float:
        return self.dE + (W + n * remaining_output(v, self.reset_frac)) * self.c + (now_s - v.arrival_s)

    def admit(self, now_s: float, waiting: Sequence[RequestView], running: Sequence[RequestView],
              token_budget: int) -> list[int]:
        queue = sorted(waiting, key=lambda v: (v.arrival_s + v.slo_s, v.slo_s, v.arrival_s, v.index))
        batch = list(running)
        if not self.cfg.protect_late:  # past saving: they do not stop admission (step 4)
            n0 = len(batch)
            batch = [r for r in batch if self.expected_latency_s(now_s, r, n0, 0) <= r.slo_s]
        out: list[int] = []
        used, W = 0, 0
        for v in queue:
            need = v.prompt_tokens + v.done_tokens
            if used + need > token_budget:
                break
            n, W2 = len(running) + len(out) + 1, W + v.prompt_tokens
            if any(self.expected_latency_s(now_s, r, n, W2) > r.slo_s for r in batch):
                break
            out.append(v.index)
            batch.append(v)
            used, W = used + need, W2
        return out
