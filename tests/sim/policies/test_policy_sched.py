"""Scheduling policies: eMoE's Algorithm 1 on a hand-computed queue, SPF ordering."""

from __future__ import annotations

import math

from sim.policies import SCHEDULER
from sim.policies.base import RequestView


def rv(i, arrival, prompt, pred, slo, done=0, task="chat"):
    return RequestView(index=i, arrival_s=arrival, prompt_tokens=prompt, done_tokens=done,
                       predicted_output_tokens=pred, task=task, slo_s=slo)


# dE = 1 s, c = 0.1 s/token, now = 10 s. Running A: arrived 0, SLO 30, predicted 50, 10 done
# (G_A = 40, r_A = 10). Waiting, by deadline: C (9 + 50 = 59), D (5 + 60 = 65), B (8 + 100 = 108).
#   admit C: n=2, W=40: t_A = 1 + (40 + 2*40)*0.1 + 10 = 23 <= 30
#   admit D: n=3, W=50: t_A = 1 + (50 + 3*40)*0.1 + 10 = 28 <= 30; t_C = 1 + (50 + 3*10)*0.1 + 1 = 9
#   admit B: n=4, W=70: t_A = 1 + (70 + 4*40)*0.1 + 10 = 34 > 30 -> stop
A = rv(0, 0.0, 100, 50, 30.0, done=10)
B = rv(1, 8.0, 20, 30, 100.0)
C = rv(2, 9.0, 40, 10, 50.0)
D = rv(3, 5.0, 10, 20, 60.0)


def _emoe():
    return SCHEDULER.make("emoe", load_latency_s=1.0, per_token_s=0.1)


def test_emoe_algorithm1_hand_computed_queue():
    s = _emoe()
    assert s.admit(10.0, [B, C, D], [A], token_budget=1000) == [2, 3]
    assert math.isclose(s.expected_latency_s(10.0, A, 3, 50), 28.0)


def test_emoe_algorithm1_token_budget_stops_admission():
    assert _emoe().admit(10.0, [B, C, D], [A], token_budget=45) == [2]  # C 40, then D would be 50


def test_emoe_algorithm1_admits_all_without_running_slo_pressure():
    # no running request: only the budget and the admitted ones' SLOs matter (all loose here)
    assert _emoe().admit(10.0, [B, C, D], [], token_budget=1000) == [2, 3, 1]


def test_emoe_remaining_output_resets_to_five_percent():
    s = _emoe()
    over = rv(9, 0.0, 10, 40, 100.0, done=45)  # ran past its prediction: G = 0.05 * 40 = 2
    assert math.isclose(s.expected_latency_s(10.0, over, 2, 0), 1 + 2 * 2 * 0.1 + 10)


def test_spf_orders_by_predicted_output():
    s = SCHEDULER.make("spf")
    assert s.admit(10.0, [B, C, D], [], token_budget=1000) == [2, 3, 1]
    assert s.admit(10.0, [B, C, D], [], token_budget=30) == [2]  # chunked: budget used up by C


# A queue whose three orders all differ, and where a newly admitted request's SLO stops admission.
# dE = 1 s, c = 0.1 s/token, now = 25 s. Running R (loose SLO). Waiting, all prompts 100:
#   X: arrival 0,  SLO 115 (deadline 115), G 50
#   Y: arrival 10, SLO 100 (deadline 110), G 200
#   Z: arrival 20, SLO 97  (deadline 117), G 50
# deadline order Y, X, Z; SLO order Z, Y, X; arrival order X, Y, Z.
#   admit Y: n=2, W=100: t_R = 1 + (100 + 2*10)*0.1 + 25 = 38 <= 1000
#   admit X: n=3, W=200: t_Y = 1 + (200 + 3*200)*0.1 + 15 = 96 <= 100; t_X is not checked yet
#   admit Z: n=4, W=300: t_Y = 1 + (300 + 4*200)*0.1 + 15 = 126 > 100 -> stop (Y, admitted in
#            this call, stops it; the running R alone would have let Z in: t_R = 60 <= 1000)
# By SLO order the answer would be [Z, Y]; by arrival [X, Y]; checking R only, [Y, X, Z].
R_ = rv(0, 0.0, 10, 20, 1000.0, done=10)
X_ = rv(1, 0.0, 100, 50, 115.0)
Y_ = rv(2, 10.0, 100, 200, 100.0)
Z_ = rv(3, 20.0, 100, 50, 97.0)


def test_emoe_orders_by_deadline_and_admitted_slos_stop_admission():
    s = _emoe()
    assert s.admit(25.0, [X_, Y_, Z_], [R_], token_budget=10_000) == [2, 1]
    assert s.admit(25.0, [Z_, Y_, X_], [R_], token_budget=10_000) == [2, 1]  # input order is irrelevant
    assert math.isclose(s.expected_latency_s(25.0, Y_, 4, 300), 126.0)
    assert math.isclose(s.expected_latency_s(25.0, Y_, 3, 200), 96.0)
    # without the running request the admitted ones still decide
    assert s.admit(25.0, [X_, Y_, Z_], [], token_budget=10_000) == [2, 1]


def test_emoe_slo_exactly_met_admits():
    # t_Y = 96 with X admitted: an SLO of exactly 96 is met (t > slo misses, t == slo does not)
    y = rv(2, 10.0, 100, 200, 96.0)
    s = _emoe()
    assert s.admit(25.0, [X_, y, Z_], [R_], token_budget=10_000)[:2] == [2, 1]
    y_tight = rv(2, 10.0, 100, 200, 95.9)
    assert s.admit(25.0, [X_, y_tight, Z_], [R_], token_budget=10_000) == [2]


def test_emoe_deadline_ties_break_by_slo_then_arrival_then_index():
    s = _emoe()
    u = rv(5, 0.0, 1, 1, 50.0)   # deadline 50
    v = rv(6, 10.0, 1, 1, 40.0)  # deadline 50, smaller SLO: first
    w = rv(4, 10.0, 1, 1, 40.0)  # same deadline, SLO and arrival as v: smaller index first
    x = rv(7, 5.0, 1, 1, 45.0)   # deadline 50, SLO 45: between
    assert s.admit(10.0, [u, v, w, x], [], token_budget=100) == [4, 6, 7, 5]


def test_emoe_token_budget_is_inclusive_and_counts_done_tokens():
    s = _emoe()
    # C (40) + D (10) = 50 fit a budget of exactly 50
    assert s.admit(10.0, [B, C, D], [A], token_budget=50) == [2, 3]
    # a preempted request's done tokens are recomputed: they count against the budget
    c_done = rv(2, 9.0, 40, 10, 50.0, done=6)
    assert s.admit(10.0, [c_done, D], [], token_budget=46) == [2]
    assert s.admit(10.0, [c_done, D], [], token_budget=56) == [2, 3]
    assert s.admit(10.0, [c_done], [], token_budget=45) == []


def test_emoe_config_is_checked():
    import pytest

    from sim.common.errors import ConfigError

    for bad in (dict(load_latency_s=-1.0), dict(per_token_s=-0.1), dict(reset_frac=1.5),
                dict(reset_frac=-0.1)):
        with pytest.raises(ConfigError, match="emoe scheduler"):
            SCHEDULER.make("emoe", **bad)
    SCHEDULER.make("emoe", load_latency_s=0.0, per_token_s=0.0, reset_frac=1.0)  # bounds allowed
    SCHEDULER.make("emoe", reset_frac=0.0)


def test_emoe_reset_fraction_is_configurable():
    s = SCHEDULER.make("emoe", load_latency_s=0.0, per_token_s=1.0, reset_frac=0.5)
    over = rv(9, 0.0, 10, 40, 100.0, done=40)  # ran out exactly: G = 0.5 * 40 = 20
    assert math.isclose(s.expected_latency_s(0.0, over, 1, 0), 20.0)
    under = rv(9, 0.0, 10, 40, 100.0, done=39)  # one left: G = 1
    assert math.isclose(s.expected_latency_s(0.0, under, 3, 2), 2 + 3 * 1)


def test_fcfs_orders_by_arrival_and_spf_by_prediction_with_index_ties():
    f = SCHEDULER.make("fcfs")
    p = rv(3, 1.0, 5, 9, 10.0)
    q = rv(1, 1.0, 5, 2, 10.0)
    r = rv(2, 0.5, 5, 2, 10.0)
    assert f.admit(0.0, [p, q, r], [], token_budget=100) == [2, 1, 3]
    assert f.admit(0.0, [p, q, r], [], token_budget=6) == [2, 1]  # the last may overrun (chunked)
    assert f.admit(0.0, [p, q, r], [], token_budget=5) == [2]
    assert f.admit(0.0, [p, q, r], [], token_budget=0) == []
    s = SCHEDULER.make("spf")
    assert s.admit(0.0, [p, q, r], [], token_budget=100) == [2, 1, 3]  # q, r tie on 2: arrival
    q0 = rv(0, 1.0, 5, 2, 10.0)  # ties q on prediction and arrival: the smaller index first
    assert s.admit(0.0, [p, q, q0, r], [], token_budget=100) == [2, 0, 1, 3]
    assert f.admit(0.0, [p, q, q0, r], [], token_budget=100) == [2, 0, 1, 3]


def test_emoe_a_running_request_already_late_does_not_stop_admission():
    # dE = 1, c = 0.1, now = 10. Running L: G = 40, r = 10: with the batch as it is (n = 1,
    # W = 0) t_L = 1 + 40 * 0.1 + 10 = 15. Admitting X (prompt 10): t_L = 1 + (10 + 2*40)*0.1 + 10
    # = 20. An SLO of exactly 15 is still met: L counts and stops X; an SLO under 15 is past
    # saving: L no longer stops admission (unless protect_late, the literal reading).
    x = rv(1, 9.0, 10, 10, 100.0)
    s = _emoe()
    on_time = rv(0, 0.0, 10, 50, 15.0, done=10)
    assert math.isclose(s.expected_latency_s(10.0, on_time, 1, 0), 15.0)
    assert s.admit(10.0, [x], [on_time], token_budget=100) == []
    late = rv(0, 0.0, 10, 50, 14.9, done=10)
    assert s.admit(10.0, [x], [late], token_budget=100) == [1]
    strict = SCHEDULER.make("emoe", load_latency_s=1.0, per_token_s=0.1, protect_late=True)
    assert strict.admit(10.0, [x], [late], token_budget=100) == []
    assert strict.admit(10.0, [x], [on_time], token_budget=100) == []


def test_emoe_remaining_output_default_reset_fraction_and_message():
    from sim.policies.scheduler.emoe import remaining_output

    assert math.isclose(remaining_output(rv(0, 0.0, 1, 40, 1.0, done=40)), 0.05 * 40)
    assert remaining_output(rv(0, 0.0, 1, 40, 1.0, done=30)) == 10
    import pytest

    from sim.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^emoe scheduler: load_latency_s, per_token_s >= 0 and "
                                          r"reset_frac in \[0, 1\] expected$"):
        SCHEDULER.make("emoe", reset_frac=2.0)
