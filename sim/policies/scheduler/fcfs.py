"""First-come-first-served admission (the vLLM / Orca default): admit waiting requests in arrival
order while the iteration's token budget lasts; the last one admitted may be prefilled in chunks."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from sim.policies.base import SCHEDULER, RequestView, SchedulerPolicy, admit_in_order


@SCHEDULER.register("fcfs")
class FCFSScheduler(SchedulerPolicy):
    def admit(self, now_s: float, waiting: Sequence[RequestView], running: Sequence[RequestView],
              token_budget: int) -> list[int]:
        return admit_in_order(sorted(waiting, key=_ARRIVAL), token_budget)


#: arrival order, ties by index (a C-level key: the scheduler runs every iteration)
_ARRIVAL = attrgetter("arrival_s", "index")
