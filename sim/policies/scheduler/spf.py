"""Shortest predicted output first: admit waiting requests in increasing predicted output length
(ties: arrival, then index) while the token budget lasts; like FCFS, the last one admitted may be
prefilled in chunks. The classic SJF baseline of LLM serving schedulers (e.g. Qiu et al.,
"Efficient interactive LLM serving with proxy model-based sequence length prediction", 2024);
``predicted_output_tokens`` comes from the caller's predictor, never the true length."""

from __future__ import annotations

from collections.abc import Sequence

from sim.policies.base import SCHEDULER, RequestView, SchedulerPolicy, admit_in_order


@SCHEDULER.register("spf")
class ShortestPredictedFirst(SchedulerPolicy):
    def admit(self, now_s: float, waiting: Sequence[RequestView], running: Sequence[RequestView],
              token_budget: int) -> list[int]:
        order = sorted(waiting, key=lambda v: (v.predicted_output_tokens, v.arrival_s, v.index))
        return admit_in_order(order, token_budget)
