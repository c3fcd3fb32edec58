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
