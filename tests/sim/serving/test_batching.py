"""Continuous batching (sim/serving/batching.py) driven by hand, no simpy: a timeline of admissions,
preemptions and recomputes whose right answer differs from every plausible wrong rule."""

from __future__ import annotations

import numpy as np
import pytest

from sim.common.errors import ConfigError, MoesimError
from sim.policies import SCHEDULER
from sim.serving.batching import Batcher, allocate
from sim.serving.state import ReplicaState, Requests, Tallies
from sim.world.config import ServingConfig


def _setup(prompt, output, kv, token_budget=64, max_batch=16, scheduler="fcfs", arrival=None,
           window=64):
    R = len(prompt)
    req = Requests(request_id=[f"r{i}" for i in range(R)], task=["chat"] * R,
                   arrival_s=np.asarray(arrival if arrival is not None else np.arange(R) * 0.001,
                                        dtype=np.float64),
                   prompt=np.asarray(prompt, dtype=np.int64), output=np.asarray(output, dtype=np.int64),
                   offset=np.zeros(R, dtype=np.int64), length=np.ones(R, dtype=np.int64))
    s = ServingConfig(token_budget=token_budget, max_batch_requests=max_batch,
                      scheduler_window=window)
    t = Tallies(1, 1, 1, 1)
    b = Batcher(req, s, SCHEDULER.make(scheduler), kv, t, scheduler)
    rep = ReplicaState(index=0, gpus=[0], waiting=list(range(R)))
    return req, b, rep, t


def _drive(req, b, rep, limit=100):
    """Iterations until every request completed: [(batch, alloc, kv_used after)]."""
    out = []
    now = 0.0
    while rep.running or rep.waiting:
        batch, alloc = b.form(rep, now)
        b.begin(rep, batch, alloc)
        now += 1.0
        b.finish(rep, batch, alloc, now)
        assert 0 <= rep.kv_used <= b.kv_capacity_tokens
        assert rep.kv_used == int(req.ctx[rep.running].sum())  # KV held = running contexts
        assert (req.ctx[rep.waiting] == 0).all()  # a waiting request holds no KV
        out.append((batch.tolist(), alloc.tolist(), rep.kv_used))
        assert len(out) < limit
    return out


def test_allocate_in_order_within_budget():
    assert allocate(np.array([3, 3, 3]), 7).tolist() == [3, 3, 1]
    assert allocate(np.array([3, 3, 3]), 9).tolist() == [3, 3, 3]
    assert allocate(np.array([3, 3, 3]), 2).tolist() == [2, 0, 0]
    assert allocate(np.array([1, 5, 1]), 100).tolist() == [1, 5, 1]


def test_preemption_takes_the_newest_and_recomputes_its_context():
    # three requests of 3 prompt + 5 output tokens in 12 KV tokens. Iteration 1 admits all three
    # (each needs its 3 + the token it generates: 12); iteration 2 decodes (KV 12). Iteration 3:
    # 12 + 3 > 12 -> the most recently admitted (2) is preempted (4 tokens freed and recomputed
    # later); iteration 5 preempts 1 (6 tokens). Re-admission prefills the whole context
    # (prompt + generated): 1 recomputes 3 + 4 = 7 tokens, 2 recomputes 3 + 2 = 5.
    req, b, rep, t = _setup([3, 3, 3], [5, 5, 5], kv=12)
    log = _drive(req, b, rep)
    assert log == [
        ([0, 1, 2], [3, 3, 3], 9),
        ([0, 1, 2], [1, 1, 1], 12),
        ([0, 1], [1, 1], 10),   # 2 preempted (the newest), not 0 (the oldest)
        ([0, 1], [1, 1], 12),   # 2 cannot come back: it needs 3 + 2 + 1 > 0 free
        ([0], [1], 0),          # 1 preempted; 0 completes
        ([1], [7], 0),          # 1 recomputes its whole context and generates its last token
        ([2], [5], 5),
        ([2], [1], 6),
        ([2], [1], 0),
    ]
    assert req.preemptions.tolist() == [0, 1, 1]
    assert t.preemptions == 2 and t.tokens_recomputed == 4 + 6
    assert req.processed.tolist() == [7, 13, 11]
    assert t.tokens_processed == 31 == int(req.processed.sum())
    # what was processed beyond each request's context is exactly what was recomputed
    need = req.prompt + req.output - 1
    assert int((req.processed - need).sum()) == t.tokens_recomputed
    assert (req.generated == req.output).all() and (req.completions == 1).all()
    assert req.finish_s.tolist() == [5.0, 6.0, 9.0]
    assert req.first_token_s.tolist() == [1.0, 1.0, 1.0]
    assert rep.iterations == 9 and rep.kv_peak == 12
    assert t.completed == 3 and t.last_finish_s == 9.0


def test_preempted_request_keeps_generated_tokens_and_waits_at_the_head():
    req, b, rep, t = _setup([3, 3, 3, 2], [5, 5, 5, 2], kv=12)
    rep.waiting = [0, 1, 2]  # request 3 arrives later
    for now in (0.0, 1.0):
        batch, alloc = b.form(rep, now)
        b.begin(rep, batch, alloc)
        b.finish(rep, batch, alloc, now + 1)
    rep.waiting.append(3)
    batch, alloc = b.form(rep, 2.0)
    assert batch.tolist() == [0, 1] and rep.waiting == [2, 3]  # at the head, before 3
    assert req.generated[2] == 2 and req.ctx[2] == 0 and rep.kv_used == 8


def test_one_running_request_is_never_preempted():
    # a lone request whose next token overflows KV keeps running (finish then raises: the
    # replica can hold no more), rather than preempting itself forever
    req, b, rep, t = _setup([4], [4], kv=5)
    log = []
    with pytest.raises(MoesimError, match="KV use 6 tokens outside"):
        for now in range(10):
            batch, alloc = b.form(rep, float(now))
            b.begin(rep, batch, alloc)
            b.finish(rep, batch, alloc, now + 1.0)
            log.append(alloc.tolist())
    assert log == [[4], [1]] and t.preemptions == 0  # the third token overflows


def test_admission_respects_max_batch_and_token_budget_chunks():
    req, b, rep, t = _setup([10, 10, 10], [2, 2, 2], kv=1000, token_budget=15, max_batch=2)
    batch, alloc = b.form(rep, 0.0)
    assert batch.tolist() == [0, 1] and alloc.tolist() == [10, 5]  # chunked prefill of 1
    b.begin(rep, batch, alloc)
    b.finish(rep, batch, alloc, 1.0)
    assert req.generated.tolist() == [1, 0, 0] and req.ctx.tolist() == [10, 5, 0]
    batch, alloc = b.form(rep, 1.0)
    assert batch.tolist() == [0, 1] and alloc.tolist() == [1, 5]  # 2 waits: max 2 requests
    assert rep.waiting == [2]


def test_admission_needs_room_for_the_generated_token():
    # 5 free KV tokens: a 4-token prompt fits (4 + 1), a 5-token one does not
    req, b, rep, t = _setup([4, 5], [1, 1], kv=5)
    batch, alloc = b.form(rep, 0.0)
    assert batch.tolist() == [0] and rep.waiting == [1]
    req2, b2, rep2, _ = _setup([5], [1], kv=5)
    with pytest.raises(ConfigError, match="needs 6 KV tokens, the replica holds 5"):
        b2.form(rep2, 0.0)


def test_scheduler_window_limits_what_the_scheduler_sees():
    req, b, rep, t = _setup([1, 1, 1], [1, 1, 1], kv=100, window=2,
                            arrival=[0.3, 0.2, 0.1], scheduler="fcfs")
    batch, _ = b.form(rep, 0.0)
    assert batch.tolist() == [1, 0]  # 2 (earliest) is outside the window of 2


def test_a_scheduler_admitting_a_request_not_waiting_is_an_error():
    from sim.policies.base import SchedulerPolicy

    class Bad(SchedulerPolicy):
        def admit(self, now_s, waiting, running, token_budget):
            return [waiting[0].index, waiting[0].index]

    req, b, rep, t = _setup([1, 1], [1, 1], kv=100)
    b.scheduler = Bad()
    with pytest.raises(MoesimError, match="^scheduler 'fcfs' admitted request 0, which is not waiting"):
        b.form(rep, 0.0)
    anonymous = Batcher(req, b.s, Bad(), 100, t)
    with pytest.raises(MoesimError, match=r"^scheduler '\?' admitted request 0"):
        anonymous.form(ReplicaState(index=0, gpus=[0], waiting=[0, 1]), 0.0)


def test_predicted_output_is_the_running_per_task_mean():
    req, b, rep, t = _setup([1, 1, 1], [2, 4, 1], kv=100)
    req.task[:] = ["a", "a", "b"]
    assert b.predicted_output(0) == 128.0  # the configured default before any completion
    _drive(req, b, rep)
    assert b.predicted_output(0) == 3.0 and b.predicted_output(2) == 1.0
    v = b.view(1)
    assert v.predicted_output_tokens == 3.0
    assert v.slo_s == pytest.approx(2.0 + 0.2 * 3.0)
    assert v.done_tokens == 4 and v.prompt_tokens == 1


def test_a_batch_with_nothing_to_process_is_a_clear_error():
    # a running request whose KV already covers its whole context (a state only a bug reaches:
    # e.g. a re-routed request that kept its old context) and nothing waiting: one line naming
    # the replica and the request, not an IndexError
    req, b, rep, t = _setup([3], [5], kv=100)
    rep.waiting, rep.running = [], [0]
    req.ctx[0] = 3
    with pytest.raises(MoesimError, match=r"replica 0: no tokens to process for running request\(s\) "
                                          r"\['r0'\]"):
        b.form(rep, 0.0)


def test_a_request_preempted_twice_counts_twice():
    # (found by a search over small cases) three requests of 2 + 5 tokens, 8 KV tokens, 3 tokens
    # an iteration: request 2 is preempted, re-admitted and preempted again
    req, b, rep, t = _setup([2, 2, 2], [5, 5, 5], kv=8, token_budget=3)
    _drive(req, b, rep)
    assert req.preemptions.tolist() == [0, 1, 2]
    assert int(req.preemptions.sum()) == t.preemptions
    need = req.prompt + req.output - 1
    assert int((req.processed - need).sum()) == t.tokens_recomputed


def test_the_scheduler_sees_running_requests_as_views():
    from sim.policies.base import SchedulerPolicy

    seen = []

    class Spy(SchedulerPolicy):
        def admit(self, now_s, waiting, running, token_budget):
            seen.append((now_s, [v.index for v in running], [v.index for v in running[0:2]],
                         [(v.index, v.task, v.done_tokens) for v in waiting]))
            return [v.index for v in waiting][:1]

    req, b, rep, t = _setup([2, 2, 2], [3, 3, 3], kv=100)
    req.task[:] = ["a", "b", "c"]
    b.scheduler = Spy()
    for now in range(3):
        batch, alloc = b.form(rep, float(now))
        b.begin(rep, batch, alloc)
        b.finish(rep, batch, alloc, now + 1.0)
    assert seen == [(0.0, [], [], [(0, "a", 0), (1, "b", 0), (2, "c", 0)]),
                    (1.0, [0], [0], [(1, "b", 0), (2, "c", 0)]),
                    (2.0, [0, 1], [0, 1], [(2, "c", 0)])]


def test_admission_stops_when_the_token_budget_is_spent_whatever_the_scheduler_picks():
    from sim.policies.base import SchedulerPolicy

    class Greedy(SchedulerPolicy):  # picks every waiting request, budget or not
        def admit(self, now_s, waiting, running, token_budget):
            return [v.index for v in waiting]

    req, b, rep, t = _setup([10, 10, 10], [2, 2, 2], kv=1000, token_budget=15)
    b.scheduler = Greedy()
    batch, alloc = b.form(rep, 0.0)
    assert batch.tolist() == [0, 1] and alloc.tolist() == [10, 5] and rep.waiting == [2]
    req, b, rep, t = _setup([10, 10, 10], [2, 2, 2], kv=1000, token_budget=100, max_batch=2)
    b.scheduler = Greedy()
    batch, alloc = b.form(rep, 0.0)
    assert batch.tolist() == [0, 1] and alloc.tolist() == [10, 10] and rep.waiting == [2]


def test_a_view_keeps_the_prediction_it_was_first_given():
    # the scheduler's view of a request (its predicted output, so its SLO) is fixed when first
    # built; only done_tokens follows the request. A request of the same task completing in the
    # meantime changes the prediction of views built after it.
    req, b, rep, t = _setup([1, 1, 1], [2, 2, 2], kv=100, max_batch=1)
    v2 = b.view(2)
    assert v2.predicted_output_tokens == 128.0
    now = 0
    while req.completions[0] == 0:
        batch, alloc = b.form(rep, float(now))
        b.begin(rep, batch, alloc)
        b.finish(rep, batch, alloc, now + 1.0)
        now += 1
    assert b.predicted_output(2) == 2.0
    assert b.view(2).predicted_output_tokens == 128.0 and b.view(2) is v2
    assert b.view(2).task == "chat"


def test_a_new_request_gets_what_the_running_ones_leave_of_the_budget():
    req, b, rep, t = _setup([4, 10], [3, 3], kv=1000, token_budget=8)
    rep.waiting = [0]
    batch, alloc = b.form(rep, 0.0)
    b.begin(rep, batch, alloc)
    b.finish(rep, batch, alloc, 1.0)
    rep.waiting.append(1)
    batch, alloc = b.form(rep, 1.0)
    assert batch.tolist() == [0, 1] and alloc.tolist() == [1, 7]  # 8 - 1 decode token
    assert batch.dtype == np.int64 and alloc.dtype == np.int64


def test_a_scheduler_that_never_admits_is_a_clear_error():
    # eMoE's token budget T_max keeps out a prompt longer than it: with nothing running the
    # replica can never serve it
    req, b, rep, t = _setup([100, 1], [3, 3], kv=1000, token_budget=64, scheduler="emoe")
    with pytest.raises(MoesimError, match=r"^replica 0: cannot admit request 'r0' \(100 prompt tokens\) "
                                          r"into 1000 KV tokens$"):
        b.form(rep, 0.0)


@pytest.mark.parametrize("full", ["batch", "budget"])
def test_the_scheduler_is_not_asked_while_the_batch_or_the_budget_is_full(full):
    # a request that arrives while nothing can be admitted is first seen by the scheduler once
    # there is room; by then a request of its task has completed, so its prediction is that
    # request's output (2), not the configured default (128)
    kw = dict(max_batch=1) if full == "batch" else dict(token_budget=1)
    req, b, rep, t = _setup([1, 1], [2, 5], kv=100, **kw)
    rep.waiting = [0]
    for now in range(3):
        if now == 1:
            rep.waiting.append(1)
        batch, alloc = b.form(rep, float(now))
        assert batch.tolist() == ([0] if now < 2 else [1])
        b.begin(rep, batch, alloc)
        b.finish(rep, batch, alloc, now + 1.0)
    assert b.view(1).predicted_output_tokens == 2.0


def test_many_completions_in_one_iteration_leave_the_others_running_in_order():
    """Seven one-token prompts admitted at once; five of them want one output token, so after the
    first iteration five complete together (more than the few removed one by one): requests 1
    and 5 (three output tokens) are left running, in admission order, holding 1 KV token each."""
    req, b, rep, t = _setup([1] * 7, [1, 3, 1, 1, 1, 3, 1], kv=64)
    batch, alloc = b.form(rep, 0.0)
    assert batch.tolist() == list(range(7)) and alloc.tolist() == [1] * 7
    b.begin(rep, batch, alloc)
    fin = b.finish(rep, batch, alloc, 1.0)
    assert sorted(fin.tolist()) == [0, 2, 3, 4, 6]
    assert rep.running == [1, 5] and rep.kv_used == 2 and t.completed == 5
    batch, alloc = b.form(rep, 1.0)
    assert batch.tolist() == [1, 5] and alloc.tolist() == [1, 1]


def test_requests_that_ran_stay_marked_until_seen_again():
    """A request admitted is marked as run (its view's done_tokens are refreshed when a window
    next shows it); another's completion does not unmark it."""
    req, b, rep, t = _setup([1, 1, 1], [1, 4, 4], kv=64)
    batch, alloc = b.form(rep, 0.0)
    b.begin(rep, batch, alloc)
    assert b._ran == {0, 1, 2}
    fin = b.finish(rep, batch, alloc, 1.0)
    assert fin.tolist() == [0] and b._ran == {1, 2}
