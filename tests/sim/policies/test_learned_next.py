"""The weighing next-layer prefetcher (sim/policies/prefetch/learned_next.py) and the link state it
reads (sim/serving/prediction.py): figures worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.policies import PREFETCH
from sim.policies.base import PrefetchContext
from sim.policies.prefetch import learned_next as ln
from sim.serving.link import Link
from sim.serving.prediction import compute_start, link_backlog_s


def test_expected_gain_and_break_even_by_hand():
    # 0.8 x 0.3 - 0.2 x 0.5 x 0.7 = 0.24 - 0.07
    assert ln.expected_gain(0.8, 0.3, 0.7, 0.5) == pytest.approx(0.17)
    assert ln.expected_gain(1.0, 0.3, 0.7, 0.5) == pytest.approx(0.3)
    assert ln.expected_gain(0.0, 0.3, 0.7, 0.5) == pytest.approx(-0.35)
    # cost 0.5 x 1.0 against saved min(1.0, 0.5): 0.5 / (0.5 + 0.5)
    assert ln.break_even(1.0, 0.5, 0.5) == 0.5
    assert ln.break_even(1.0, 3.0, 0.5) == pytest.approx(1 / 3)  # saved capped at the copy
    assert ln.break_even(1.0, 0.0, 0.5) == 1.0  # no idle link: nothing pays
    assert ln.break_even(1.0, -0.1, 0.5) == 1.0
    assert ln.break_even(1.0, 0.5, 0.0) == 0.0  # evicting costs nothing: anything pays
    assert ln.break_even(2.0, 1.0, 0.5) == 0.5  # cost 0.5 x 2 against saved 1
    assert ln.break_even(1.0, 0.0, 0.0) == 1.0  # no window: nothing pays, even at no cost


def test_choose_fills_the_window_in_order_of_probability():
    # c = 1, W = 1.5: 0.95 first (saved 1.0), then 0.9 (saved 0.5: 0.45 - 0.05 > 0), then the
    # backlog (2.0) is past the window: 0.3 is refused
    got = ln.choose(np.array([0.9, 0.3, 0.95]), 1.0, 1.5, 0.0, 0.5)
    assert got.tolist() == [2, 0] and got.dtype == np.int64
    assert ln.choose(np.array([0.9, 0.3, 0.95]), 1.0, 1.5, 1.5, 0.5).tolist() == []
    assert ln.choose(np.array([0.9, 0.3, 0.95]), 1.0, 1.5, 0.5, 0.5).tolist() == [2]
    # ties: the smaller index first
    assert ln.choose(np.array([0.9, 0.9]), 1.0, 3.0, 0.0, 0.5).tolist() == [0, 1]
    # a gain of exactly 0 is refused: 0.5 x 0.5 - 0.5 x 0.5 x 1.0
    assert ln.choose(np.array([0.5]), 1.0, 0.5, 0.0, 0.5).tolist() == []
    assert ln.choose(np.array([0.5 + 1e-9]), 1.0, 0.5, 0.0, 0.5).tolist() == [0]
    # the first refused ends the list (a lower probability behind it is not tried)
    assert ln.choose(np.array([0.2, 0.99]), 1.0, 0.1, 0.0, 0.0).tolist() == [1]
    assert ln.choose(np.zeros(0), 1.0, 1.0, 0.0, 0.5).tolist() == []


def _policy(monkeypatch, **kw):
    # 3 tokens, 3 layers, 4 experts, top-1; probabilities for layer 1 of each token
    prob = np.zeros((3, 3, 4), dtype=np.float16)
    prob[:, 1] = [[0.875, 0.625, 0.125, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    prob[0, 2] = [0.9375, 0.0, 0.0, 0.0]
    experts = np.array([[[0], [0], [0]], [[1], [1], [1]], [[2], [3], [2]]])
    # lead 2: layer 2 of each token, from layer 0
    prob2 = np.zeros((3, 3, 4), dtype=np.float16)
    prob2[:, 2] = [[0.25, 0.0, 0.0, 0.75], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]]
    monkeypatch.setitem(ln._PROBS, ("ck", "tr", 1), (SimpleNamespace(prob=prob, s_per_token=3e-4),
                                                     experts))
    monkeypatch.setitem(ln._PROBS, ("ck", "tr", 2), (SimpleNamespace(prob=prob2, s_per_token=0.0),
                                                     experts))
    return PREFETCH.make("learned_next", num_layers=3, num_experts=4, top_k=1, checkpoint="ck",
                         trace_path="tr", **kw), experts


def test_policy_probabilities_cost_and_accuracy(monkeypatch):
    pol, experts = _policy(monkeypatch)
    assert pol.s_per_token_layer == pytest.approx(1e-4)  # measured 3e-4 per token over 3 layers
    assert pol.cost_s() == pytest.approx(1e-4)  # no batch named yet: one token
    pol.batch(np.array([0, 1]))
    assert pol.cost_s() == pytest.approx(2e-4)
    ctx = PrefetchContext(request_id="r")
    # a batch: 1 - 0.125 x 0.5, 1 - 0.375 x 0.5
    assert pol.next_probs(ctx, 0)[:2].tolist() == [0.9375, 0.8125]
    tok = PrefetchContext(request_id="r", extra={"token": 0})
    assert pol.next_layer(tok, 0, np.array([0])).tolist() == [0]  # gate 0.8: 0.875 only
    assert pol.next_layer(tok, 1, np.array([0])).tolist() == [0]  # the last layer's
    assert pol.next_layer(tok, 1, np.array([0])).dtype == np.int64
    assert pol.next_layer(tok, 2, np.array([0])).tolist() == []  # no layer after the last
    assert pol.accuracy() == {"recall": 1.0, "precision": 1.0}
    pol.count(tok, 0, np.array([0, 1]))  # one true of two
    assert pol.accuracy() == {"recall": 1.0, "precision": pytest.approx(4 / 5)}
    assert pol.accuracy_by_lead() == [{"lead": 1, "recall": 1.0, "precision": pytest.approx(4 / 5),
                                       "chosen": 5}]
    pol.set_routing(experts[:2])
    with pytest.raises(ConfigError, match="not tr"):
        pol.set_routing(experts[:, :, ::-1] + 1)
    with pytest.raises(ConfigError, match="past the 3 tokens"):
        pol.next_probs(PrefetchContext(request_id="r", extra={"token": 3}), 0)
    pol2, _ = _policy(monkeypatch, call_s_per_token=0.0)
    assert pol2.cost_s() == 0.0
    with pytest.raises(ConfigError, match="no token or batch"):
        pol2.next_probs(ctx, 0)


def test_weigh_calibrates_online(monkeypatch):
    pol, _ = _policy(monkeypatch)
    tok = PrefetchContext(request_id="r", extra={"token": 0})
    assert pol.calibrated(np.array([0.9, 0.3])) == pytest.approx([0.9, 0.3])  # nothing seen yet
    assert pol.calibrated(np.array([0.9], dtype=np.float16)).dtype == np.float64
    # candidates 0 (p 0.875, needed) and 1 (p 0.625, not): W = 1.5, c = 1: 0, then 1 (0.625 x
    # 0.5 - 0.375 x 0.5 > 0)
    got = pol.weigh(tok, 0, [np.array([1, 0])], 1.0, 1.5, 0.0)
    assert [g.tolist() for g in got] == [[0, 1]] and (pol.copy_s, pol.window_s) == (1.0, 1.5)
    assert pol.victim == 0.5  # no hits counted: h = 1/2
    # expected: 0.875 x 1 - 0.125 x 0.5, then 0.625 x 0.5 - 0.375 x 0.5
    assert pol._gain == pytest.approx(0.8125 + 0.125)
    # the bin of 0.875 saw one needed, that of 0.625 one not: (1 + 20 x 0.875) / 21, 12.5 / 21
    assert pol.calibrated(np.array([0.875, 0.625])) == pytest.approx([18.5 / 21, 12.5 / 21])
    assert pol.calibrated(np.array([0.95])) == pytest.approx([0.95])  # its bin saw none
    assert pol.weigh(tok, 0, [np.array([2, 3])], 1.0, 1.5, 0.0)[0].tolist() == []
    gate, _ = _policy(monkeypatch, rule="gate", gate=0.625)  # p >= gate, not >
    assert gate.weigh(tok, 0, [np.array([0, 1, 2])], 1.0, 0.0, 9.0)[0].tolist() == [0, 1]
    assert gate._gain == 0.0
    # a probability of 1 falls in the last bin
    pol.weigh(PrefetchContext(request_id="r", extra={"token": 2}), 0, [np.array([3])], 1.0, 1.5, 0.0)
    assert pol._cal_n[0, ln.BINS - 1] == 1 and pol._cal_true[0, ln.BINS - 1] == 1


def test_weigh_two_layers_ahead(monkeypatch):
    pol, _ = _policy(monkeypatch, lead=2)
    tok = PrefetchContext(request_id="r", extra={"token": 0})
    assert pol.next_probs(tok, 0, 2).tolist() == [0.25, 0.0, 0.0, 0.75]
    # c = 1, W = 0.75. Layer 1: 0.875 x 0.75 - 0.125 x 0.5 > 0: expert 0; backlog 1. Layer 2
    # (two windows, 1.5): 0.75 x min(1, 0.5) - 0.25 x 0.5 = 0.25 > 0: expert 3; then 0.25 with
    # backlog 2 is refused
    got = pol.weigh(tok, 0, [np.array([0, 2]), np.array([0, 3])], 1.0, 0.75, 0.0)
    assert [g.tolist() for g in got] == [[0], [3]]
    assert pol._gain == pytest.approx(0.875 * 0.75 - 0.0625 + 0.75 * 0.5 - 0.125)
    # without the nearer layer's copy ahead of it: 0.75 x 1 - 0.125 > 0, then 0.25 x 0.5 - 0.375
    got = pol.weigh(tok, 0, [np.array([], dtype=np.int64), np.array([0, 3])], 1.0, 0.75, 0.0)
    assert [g.tolist() for g in got] == [[], [3]]
    # expert 3 two layers ahead now calibrated at (0 + 15) / 21 (one candidate, not needed):
    # 15/21 x 1 - 6/21 x 0.5
    assert pol._gain == pytest.approx(0.84375 + 15 / 21 - 3 / 21)
    # copies of 2 s, window 1.5: layer 1 saves 1.5 (backlog 2 after it), layer 2 saves 3 - 2
    two, _ = _policy(monkeypatch, lead=2)
    got = two.weigh(tok, 0, [np.array([0]), np.array([3])], 2.0, 1.5, 0.0)
    assert [g.tolist() for g in got] == [[0], [3]]
    assert two._gain == pytest.approx(0.875 * 1.5 - 0.125 + 0.75 * 1.0 - 0.25)
    # the lead-2 calibration learned apart: expert 3 of layer 2 was not needed (token 0 uses 0)
    assert pol.calibrated(np.array([0.75]), 2)[0] == pytest.approx(15 / 22)
    assert pol.calibrated(np.array([0.75]), 1)[0] == pytest.approx(0.75)
    pol.count(tok, 0, np.array([3]), 2)
    assert pol.accuracy_by_lead()[1] == {"lead": 2, "recall": 0.0, "precision": 0.0, "chosen": 1}
    assert pol.accuracy() == {"recall": 0.0, "precision": 0.0}


@pytest.mark.parametrize("kw,msg", [({"rule": "best"}, "rule='best'"),
                                    ({"gate": 1.5}, "gate=1.5"),
                                    ({"victim_value": -1.0}, "victim_value=-1.0"),
                                    ({"protect_p": -0.1}, "protect_p=-0.1"),
                                    ({"lead": 0}, "lead=0"), ({"lead": 5}, "lead=5"),
                                    ({"probe": -1}, "probe=-1"),
                                    ({"call_s_per_token": -1.0}, "call_s_per_token=-1.0")])
def test_bad_arguments_are_one_clear_line(monkeypatch, kw, msg):
    """Each bad argument is refused with its own message (the full lines below)."""
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        _policy(monkeypatch, **kw)
    with pytest.raises(ConfigError, match="needs checkpoint"):
        PREFETCH.make("learned_next", num_layers=3, num_experts=4, top_k=1)


def test_link_backlog_reads_a_scratch_copy():
    lk = Link(1e9)
    assert link_backlog_s(lk, 0.0) == 0.0
    lk.add(0.0, 1e9)  # one second of prefetch from 0
    assert link_backlog_s(lk, 0.25) == pytest.approx(0.75)
    lk.fetch(0.5, 0.5e9)  # a demand copy 0.5..1.0 pauses it
    # served 0..0.5, paused to 1.0 (0.25 s past t = 0.75), 0.5 s left
    assert link_backlog_s(lk, 0.75) == pytest.approx(0.75)
    assert len(lk.pq) == 1 and lk.pt == 0.0  # the link itself unchanged
    assert link_backlog_s(Link(float("inf")), 0.0) == 0.0


def test_compute_start_after_demand_copies_and_waited_prefetches():
    lk = Link(1e9, latency_s=0.5)
    assert compute_start(lk, -1.0, 2.0) == 2.0  # no copy at all: the gate
    lk.fetch(3.0, 1e9)  # a demand copy booked at gate 3.0: starts 3.5, ends 4.5
    assert compute_start(lk, 2.0, 9.0) == 4.5  # this layer's: its end (the estimate is not used)
    assert compute_start(lk, 3.5, 9.0) == 9.0  # the previous layer's (started by 3.5): the gate
    assert compute_start(lk, 2.99, 2.0) == 4.5
    lk2 = Link(1e9)
    lk2.add(0.0, 2e9)
    lk2.finish(0)  # the layer waited for a prefetch that ended at 2.0
    assert compute_start(lk2, -1.0, 1.0) == 2.0
    assert compute_start(Link(float("inf")), -1.0, 1.5) == 1.5


def test_perfect_looks_lead_layers_ahead():
    ex = np.array([[[0], [1], [2], [3]], [[3], [2], [1], [0]]])  # 2 tokens, 4 layers, top-1
    pol = PREFETCH.make("perfect", num_layers=4, num_experts=4, top_k=1, lead=2)
    pol.set_routing(ex)
    pol.batch(np.array([0, 1]))
    ctx = PrefetchContext(request_id="r")
    assert pol.next_layer(ctx, 0, np.array([0])).tolist() == [1, 2]  # layer 2's
    assert pol.next_layer(ctx, 1, np.array([0])).tolist() == [0, 3]  # layer 3's
    assert pol.next_layer(ctx, 2, np.array([0])).tolist() == []
    one = PREFETCH.make("perfect", num_layers=4, num_experts=4, top_k=1)
    one.set_routing(ex)
    one.batch(np.array([0]))
    assert one.next_layer(ctx, 0, np.array([0])).tolist() == [1] and one.lead == 1
    for bad in (0, 4):
        with pytest.raises(ConfigError, match=f"lead={bad}"):
            PREFETCH.make("perfect", num_layers=4, num_experts=4, top_k=1, lead=bad)


def test_victim_value_follows_the_hit_rate():
    assert ln.victim_value(0, 0, 0.5) == 0.5  # nothing seen: h = 1/2
    # h = 440 / 1002: 0.5 x 440 / 562
    assert ln.victim_value(439, 1000, 0.5) == pytest.approx(0.5 * 440 / 562)
    assert ln.victim_value(10**6, 10**6, 0.5) == pytest.approx(49.5)  # h capped at 0.99
    assert ln.victim_value(439, 1000, 1.0) == pytest.approx(440 / 562)


def test_weigh_uses_the_caches_hit_rate_unless_configured(monkeypatch):
    tok = PrefetchContext(request_id="r", extra={"token": 0})
    pol, _ = _policy(monkeypatch)
    # h = 0.9 (v = 4.5): 0.875 x 1 - 0.125 x 4.5 x 1 = 0.3125 > 0; 0.625 x 0.5 - 0.375 x 4.5 < 0
    got = pol.weigh(tok, 0, [np.array([0, 1])], 1.0, 1.5, 0.0, hits=8999, accesses=9998)
    assert got[0].tolist() == [0] and pol.victim == pytest.approx(4.5)
    fixed, _ = _policy(monkeypatch, victim_value=0.0)
    got = fixed.weigh(tok, 0, [np.array([0, 1])], 1.0, 1.5, 0.0, hits=8999, accesses=9998)
    assert got[0].tolist() == [0, 1] and fixed.victim == 0.0


def test_the_predictor_runs_while_it_pays_for_itself(monkeypatch):
    pol, _ = _policy(monkeypatch)  # 1e-4 s per token per layer, 3 layers: 3e-4 per token
    ran = []
    for _ in range(ln.WARM + 1):
        pol.batch(np.array([0]))
        ran.append(pol.running)
    assert ran == [True] * ln.WARM + [False]  # warmed up, gained nothing: stops
    assert pol.cost_s() == 0.0 and pol.gain_per_token == 0.0
    for _ in range(7 + ln.BURST + 1):
        pol.batch(np.array([0]))
        ran.append(pol.running)
    # a probe of BURST iterations on the 8th after it stopped, the next 16 after that
    assert ran[ln.WARM + 1:] == [False] * 6 + [True] * ln.BURST + [False] * 2
    assert pol._every == 16 and pol.cost_s() == 0.0
    pol.batch(np.array([0]))
    assert not pol.running
    # an iteration that expects 1e-3 s on its 2 tokens: the mean moves 1/16 of the way to 5e-4
    pol.batch(np.array([0, 1]))
    pol.gain_per_token = g0 = 4e-4  # pays: the next iteration runs on its 2 tokens
    pol.batch(np.array([0, 1]))
    assert pol.running and pol._tokens == 2
    pol._gain = 1e-3
    pol.batch(np.array([0]))
    assert pol.gain_per_token == pytest.approx(g0 + (5e-4 - g0) / 16)
    # between the cost per token (3e-4) and the cost per token per layer: does not pay
    pol.gain_per_token = 1e-4
    pol.batch(np.array([0]))
    assert not pol.running and pol._tokens == 0
    pol.gain_per_token = 3e-4  # pays again: runs, probes back to every 8
    pol.batch(np.array([0]))
    assert pol.running and pol._every == 8 and pol.cost_s() == pytest.approx(1e-4)
    always, _ = _policy(monkeypatch, probe=0)
    for _ in range(ln.WARM + 2):
        always.batch(np.array([0]))
    assert always.running and always.cost_s() > 0
    gate, _ = _policy(monkeypatch, rule="gate")
    for _ in range(ln.WARM + 2):
        gate.batch(np.array([0]))
    assert gate.running


def test_probes_back_off_to_1024_times_probe(monkeypatch):
    for probe in (1, 2):
        pol, _ = _policy(monkeypatch, probe=probe)
        ran = []
        for _ in range(6000):
            pol.batch(np.array([0]))
            ran.append(pol.running)
        assert pol._every == 1024 * probe
        if probe == 1:  # a probe on the first iteration off, the next 2 after its burst
            w = ln.WARM
            assert ran[w:w + ln.BURST + 3] == [True] * ln.BURST + [False, True, True]


def test_messages_bounds_and_initial_state(monkeypatch):
    for kw, line in (({"gate": 1.5}, "learned_next: gate=1.5; expected in [0, 1]"),
                     ({"protect_p": 2.0}, "learned_next: protect_p=2.0; expected in [0, 1]"),
                     ({"victim_scale": -1.0}, "learned_next: victim_scale=-1.0; expected >= 0"),
                     ({"victim_value": -2.0}, "learned_next: victim_value=-2.0; expected >= 0"),
                     ({"lead": 5}, "learned_next: lead=5; expected 1 <= lead <= 4")):
        with pytest.raises(ConfigError) as err:
            _policy(monkeypatch, **kw)
        assert str(err.value) == line
    _policy(monkeypatch)
    for k in (3, 4):
        monkeypatch.setitem(ln._PROBS, ("ck", "tr", k), ln._PROBS[("ck", "tr", 2)])
    for kw in ({"gate": 1.0}, {"protect_p": 1.0}, {"victim_value": 1e9}, {"lead": 4}, {"gate": 0.0}):
        PREFETCH.make("learned_next", num_layers=3, num_experts=4, top_k=1, checkpoint="ck",
                      trace_path="tr", **kw)  # bounds are allowed
    need = ("prefetch policy learned_next needs checkpoint=DIR (from 'moesim predictor train') "
            "and trace_path=FILE (the routing trace replayed)")
    for kw in ({}, {"trace_path": "tr"}, {"checkpoint": "ck"}):
        with pytest.raises(ConfigError) as err:
            PREFETCH.make("learned_next", num_layers=3, num_experts=4, top_k=1, **kw)
        assert str(err.value) == need
    pol, _ = _policy(monkeypatch, victim_value=0.25)
    assert pol.victim == 0.25 and pol.measured_s_per_token == pytest.approx(3e-4)
    assert (pol.copy_s, pol.window_s, pol._tokens, pol._off, pol._every) == (0.0, 0.0, 0, 0, 8)
    fresh, _ = _policy(monkeypatch)
    assert fresh.victim == 0.0 and fresh.running and fresh.gain_per_token == 0.0
    with pytest.raises(ConfigError) as err:
        PREFETCH.make("learned_next", num_layers=4, num_experts=4, top_k=1, checkpoint="ck",
                      trace_path="tr")
    assert str(err.value) == "tr: routing has 3 layers, top-1; the model has 4, top-1"
    with pytest.raises(ConfigError, match="the model has 3, top-1"):
        PREFETCH.make("learned_next", num_layers=3, num_experts=5, top_k=1, checkpoint="ck",
                      trace_path="tr")


def test_gate_bounds_leads_and_backlog_by_hand(monkeypatch):
    """Figures for the mutation run's survivors. Gate 0.875: token 0's 0.875 is kept (>=); one
    true expert, predicted: recall and precision 1 / 1. The empty last layer is int64. A lead-2
    candidate that was needed trains lead 2's calibration only. A backlog adds up across leads;
    the second copy of a lead is saved against the backlog of the first (copy 0.5 s)."""
    pol, experts = _policy(monkeypatch, gate=0.875)
    tok = PrefetchContext(request_id="r", extra={"token": 0})
    assert pol.next_layer(tok, 0, np.array([0])).tolist() == [0]
    assert pol.accuracy() == {"recall": 1.0, "precision": 1.0}
    assert pol.accuracy_by_lead() == [{"lead": 1, "recall": 1.0, "precision": 1.0, "chosen": 1}]
    last = pol.next_layer(tok, 2, np.array([0]))
    assert last.tolist() == [] and last.dtype == np.int64
    pol.set_routing(experts)  # the whole trace is its own first prompts
    with pytest.raises(ConfigError) as err:
        pol.next_probs(PrefetchContext(request_id="r"), 0)
    assert str(err.value) == "learned_next: the driver named no token or batch"
    pol.batch([])  # an empty batch: no expert is needed
    assert pol.next_probs(PrefetchContext(request_id="r"), 0).tolist() == [0.0] * 4
    assert [c.tolist() for c in pol.weigh(tok, 0, [[]], 1.0, 1.5, 0.0)] == [[]]
    # lead 2: token 0 uses expert 0 at layer 2 (p 0.25, bin 2): lead 2's bin learns it, twice
    two, _ = _policy(monkeypatch, lead=2)
    for _ in range(2):
        two.weigh(tok, 0, [np.array([], dtype=np.int64), np.array([0])], 1.0, 0.0, 0.0)
    assert two.calibrated(np.array([0.25]), 2)[0] == pytest.approx((2 + 5) / (2 + 20))
    assert two.calibrated(np.array([0.25]), 1)[0] == 0.25
    # counted per lead: layer 1 of token 2 used 3 (a hit), layer 2 of token 0 used 0 (a miss)
    tok2 = PrefetchContext(request_id="r", extra={"token": 2})
    two.count(tok2, 0, np.array([3]), 1)
    two.count(tok2, 0, np.array([3]), 1)
    two.count(tok, 0, np.array([3]), 2)
    assert [(d["recall"], d["chosen"]) for d in two.accuracy_by_lead()] == [(1.0, 2), (0.0, 1)]
    # backlog 0.25, c = 1, W = 0.75: lead 1 saves 0.5 (0.875 x 0.5 - 0.125 x 0.5 = 0.375), the
    # backlog is then 1.25; lead 2 (1.5) saves 0.25 (0.75 x 0.25 - 0.25 x 0.5 = 0.0625)
    b, _ = _policy(monkeypatch, lead=2)
    got = b.weigh(tok, 0, [np.array([0]), np.array([3])], 1.0, 0.75, 0.25)
    assert [g.tolist() for g in got] == [[0], [3]] and b._gain == pytest.approx(0.4375)
    # c = 0.5, W = 0.75: 0.875 saves 0.5 (0.40625), 0.625 then 0.25 (0.15625 - 0.09375)
    h, _ = _policy(monkeypatch)
    assert h.weigh(tok, 0, [np.array([0, 1])], 0.5, 0.75, 0.0)[0].tolist() == [0, 1]
    assert h._gain == pytest.approx(0.46875)
    # a float16 probability is calibrated at its float64 value (20 x p in float16 would round)
    p16 = np.array([0.1], dtype=np.float16)
    assert h.calibrated(p16)[0] == float(p16[0])
    # and 1 - (1 - p) is taken in float64 (in float16 1 - p rounds: 0.10009765625)
    prob = np.zeros((1, 2, 2), dtype=np.float16)
    prob[0, 1] = [0.1, 0.0]
    monkeypatch.setitem(ln._PROBS, ("ck", "t16", 1), (SimpleNamespace(prob=prob, s_per_token=0.0),
                                                      np.array([[[0], [0]]])))
    q = PREFETCH.make("learned_next", num_layers=2, num_experts=2, top_k=1, checkpoint="ck",
                      trace_path="t16")
    assert q.next_probs(tok, 0).tolist() == [float(p16[0]), 0.0]


def test_a_paying_iteration_resets_the_probe_count(monkeypatch):
    pol, _ = _policy(monkeypatch)
    for _ in range(ln.WARM + 3):
        pol.batch(np.array([0]))
    assert not pol.running and pol._off == 3
    pol.gain_per_token = 1.0  # pays
    pol.batch(np.array([0]))
    assert pol.running and (pol._off, pol._every) == (0, 8)
