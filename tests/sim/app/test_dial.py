"""The accuracy dial (``noisy_oracle``), the next-layer oracles in the simulator, the learned
next-layer prefetcher (``learned_next`` + ``sim.predictor.table``) and the two experiment apps
(``moesim experiment accuracy`` / ``prefetch``) on tiny settings."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.engine.metrics import compute_metrics
from sim.engine.simulation import Policies, Recorder, Simulation
from sim.policies import PREFETCH
from sim.policies.base import PrefetchContext
from sim.policies.prefetch.noisy_oracle import corrupt
from sim.replay.cache import replay_plain
from sim.serving.binding import RoutingPool, bind
from sim.serving.testing import StubCost, pool_from_rows, tiny_config, workload
from tests.predictor_helpers import synth_trace as predictor_synth_trace
from tests.predictor_helpers import train_tiny
from traces.format import RoutingTrace, write_trace


def synth_trace(num_prompts: int = 12, **kw) -> RoutingTrace:
    """The predictor tests' learnable trace at this module's size: 10 pieces, prompts of 4-9
    tokens."""
    return predictor_synth_trace(num_prompts, pieces=10, lengths=(4, 10), **kw)


def _sim(tr: RoutingTrace, prefetch: str, args: dict | None = None, fraction: float = 0.5,
         cost: StubCost | None = None) -> tuple[dict, Simulation]:
    cfg = tiny_config(layers=tr.num_layers, experts=tr.num_experts, top_k=tr.top_k,
                      budget_fraction=fraction, token_budget=3)
    cfg.policy.prefetch = prefetch
    cfg.policy.prefetch_args = dict(args or {})
    pool = RoutingPool.from_trace(tr)
    b = pool.lengths
    wl = workload([0.01 * i for i in range(len(b))], b.tolist(), [2] * len(b))
    rng = np.random.default_rng(0)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), cost or StubCost(), rng)
    sim.run()
    return compute_metrics(sim), sim


# ------------------------------------------------------------------------------------------------
# noisy_oracle
# ------------------------------------------------------------------------------------------------
def test_noisy_oracle_at_one_is_perfect_in_replay_and_sim():
    tr = synth_trace()
    for f in (0.25, 0.5):
        a = replay_plain(tr, "lru", f, prefetch="perfect").record(6)
        b = replay_plain(tr, "lru", f, prefetch="noisy_oracle",
                         prefetch_kwargs={"recall": 1.0, "precision": 1.0, "seed": 3}).record(6)
        assert {k: v for k, v in a.items() if k != "prefetch"} == \
            {k: v for k, v in b.items() if k != "prefetch"}
        assert a["prefetched"] > 0
        ma, _ = _sim(tr, "perfect", fraction=f)
        mb, _ = _sim(tr, "noisy_oracle", {"recall": 1.0, "precision": 1.0, "seed": 3}, fraction=f)
        ma.pop("config", None), mb.pop("config", None)
        assert ma == mb and ma["prefetch"]["issued"] > 0


def test_noisy_oracle_hits_the_configured_recall_and_precision():
    rng = np.random.default_rng(0)
    for r, p in ((0.5, 1.0), (1.0, 0.5), (0.7, 0.4), (0.3, 0.8)):
        hits = pred = true = 0
        for t in range(4000):
            S = np.sort(rng.choice(64, 6, replace=False))
            out = corrupt(S, 64, r, p, seed=1, layer=t % 26, key=(t, 1))
            assert len(np.unique(out)) == len(out) and out.min(initial=0) >= 0 and out.max(initial=0) < 64
            hits += len(np.intersect1d(out, S))
            pred += len(out)
            true += len(S)
        assert hits / true == pytest.approx(r, abs=0.02)
        assert hits / pred == pytest.approx(p, abs=0.02)


def test_noisy_oracle_is_deterministic_and_independent_of_call_order():
    tr = synth_trace()
    kw = {"recall": 0.6, "precision": 0.5, "seed": 7}

    def calls(order):
        pol = PREFETCH.make("noisy_oracle", num_layers=4, num_experts=16, top_k=2, **kw)
        pol.set_trace(tr)
        out = {}
        for t, l in order:
            out[(t, l)] = pol.next_layer(PrefetchContext(request_id="p0", extra={"token": t}), l,
                                         np.zeros(0)).tolist()
        return out

    order = [(t, l) for t in range(20) for l in range(3)]
    assert calls(order) == calls(order[::-1])
    other = PREFETCH.make("noisy_oracle", num_layers=4, num_experts=16, top_k=2, **{**kw, "seed": 8})
    other.set_trace(tr)
    assert any(other.next_layer(PrefetchContext(extra={"token": t}), 0, np.zeros(0)).tolist()
               != calls([(t, 0)])[(t, 0)] for t in range(20))
    r1 = replay_plain(tr, "lru", 0.25, prefetch="noisy_oracle", prefetch_kwargs=kw).record(6)
    r2 = replay_plain(tr, "lru", 0.25, prefetch="noisy_oracle", prefetch_kwargs=kw).record(6)
    assert r1 == r2
    m1, _ = _sim(tr, "noisy_oracle", kw)
    m2, _ = _sim(tr, "noisy_oracle", kw)
    assert m1 == m2


@pytest.mark.parametrize("kw, msg", [({"recall": 1.5}, "recall=1.5"),
                                     ({"precision": 0.0}, "precision=0.0")])
def test_noisy_oracle_rejects_impossible_accuracy(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        PREFETCH.make("noisy_oracle", num_layers=2, num_experts=4, top_k=1, **kw)


def test_simulator_still_refuses_a_per_request_oracle():
    tr = synth_trace()
    with pytest.raises(ConfigError, match="perfect_request"):
        _sim(tr, "perfect_request")


# ------------------------------------------------------------------------------------------------
# lead time: late copies are stall
# ------------------------------------------------------------------------------------------------
def test_a_late_prefetch_copy_is_stall():
    # 2 layers x 4 experts, top-1; one token: L0 -> e0 (resident), L1 -> e2 (not resident).
    # Perfect prefetch issues e2's copy at L0's gate (t = 1 ms): 6 bytes at 1000 B/s = 6 ms,
    # done at 7 ms. L0's experts end at 3 ms, L1's attention at 4 ms: L1 waits 3 ms (stall).
    pool = pool_from_rows([[[0], [2]]])
    cfg = tiny_config(layers=2, experts=4, budget_fraction=0.25)
    wl = workload([0.0], [1], [1])
    rec = Recorder(0.0, float("inf"))
    pf = PREFETCH.make("perfect", num_layers=2, num_experts=4, top_k=1)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", np.random.default_rng(0)),
                     StubCost(host_link_bytes_per_s=1000.0), np.random.default_rng(0), recorder=rec,
                     policies=Policies(prefetch=pf))
    sim.run()
    m = compute_metrics(sim)
    assert m["prefetch"]["issued"] == m["prefetch"]["used"] == 1 and m["expert_misses"] == 0
    # e2 was resident but in flight when L1 needed it: a late prefetch hit, not a hit
    assert (m["hits"], m["late_prefetch_hits"], m["prefetch"]["late"]) == (1, 1, 1)
    assert m["fetch_stall_s"] == pytest.approx(0.003)
    ends = {e[0]: e for e in rec.events}
    assert ends["prefetch L1 e2"][3:] == pytest.approx((0.001, 0.007))
    assert ends["experts L1"][3:] == pytest.approx((0.007, 0.009))
    assert m["e2e_s"]["p50"] == pytest.approx(0.009)


# ------------------------------------------------------------------------------------------------
# the learned next-layer prefetcher
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("dial")
    path = d / "synth.parquet"
    write_trace(synth_trace(num_prompts=16, L=26, E=64, K=6, model="deepseek-v2-lite"), path)
    return path, train_tiny(path, d / "train", "predictor.token.mode=token_layers",
                            "predictor.token.epochs=2", timeout=300)


def test_table_is_cached_and_learned_topk_charges_its_time(tiny_checkpoint):
    from sim.predictor.table import calibration, next_layer_probs, next_layer_table
    from traces.format import read_trace

    path, ck = tiny_checkpoint
    tr = read_trace(path)
    t1 = next_layer_table(ck, tr)
    assert t1.top.shape == (tr.num_tokens, 26, 6) and t1.mode == "token_layers"
    assert t1.path.exists() and t1.s_per_token > 0
    t2 = next_layer_table(ck, tr)  # from the cache: same predictions, same measured time
    assert np.array_equal(t1.top, t2.top) and t2.s_per_token == t1.s_per_token

    p1 = next_layer_probs(ck, tr)
    assert p1.prob.shape == (tr.num_tokens, 26, 64) and p1.path.exists()
    assert 0.0 <= float(p1.prob.min()) and float(p1.prob.max()) <= 1.0
    assert np.array_equal(next_layer_probs(ck, tr).prob, p1.prob)  # from the cache
    cal = calibration(p1.prob, tr.experts)
    assert sum(c["n"] for c in cal) == tr.num_tokens * 25 * 64
    assert all(c["lo"] <= c["mean_p"] < c["lo"] + 0.1 + 1e-6 for c in cal)

    args = {"checkpoint": str(ck), "trace_path": str(path)}
    weighed, sw = _sim_ds(tr, {**args, "call_s_per_token": 0.0}, "learned_next")
    assert sw.prefetch.window_s >= 0 and sw.prefetch.copy_s >= 0
    charged, s1 = _sim_ds(tr, {**args, "call_s_per_token": 1e-3})
    free, s0 = _sim_ds(tr, {**args, "call_s_per_token": 0.0})
    assert charged["prefetch"]["issued"] == free["prefetch"]["issued"] > 0
    assert charged["sim_time_s"] > free["sim_time_s"]
    acc = s1.prefetch.accuracy()
    assert 0 < acc["recall"] <= 1 and 0 < acc["precision"] <= 1

    with pytest.raises(ConfigError, match="needs checkpoint"):
        PREFETCH.make("learned_next", num_layers=26, num_experts=64, top_k=6)


def _sim_ds(tr, args, name="learned_topk"):
    cfg = tiny_config(layers=26, experts=64, top_k=6, budget_fraction=0.5, token_budget=1)
    cfg.policy.prefetch = name
    cfg.policy.prefetch_args = args
    pool = RoutingPool.from_trace(tr)
    wl = workload([0.0, 0.01, 0.02], pool.lengths[:3].tolist(), [1, 1, 1])
    rng = np.random.default_rng(0)
    sim = Simulation(cfg, wl, pool, bind(pool, wl, "wrap", rng), StubCost(), rng)
    sim.run()
    return compute_metrics(sim), sim


def test_accuracy_and_prefetch_experiments_run_end_to_end(tiny_checkpoint, tmp_path):
    from sim.app.cli import main

    path, ck = tiny_checkpoint
    common = [f"trace.path={path}", f"dial.checkpoint={ck}", "replay_requests=3",
              "cluster.expert_budget_fractions=[0.25,0.75]"]
    d = tmp_path / "acc"
    assert main(["experiment", "accuracy", f"hydra.run.dir={d}", *common,
                 "dial.recalls=[0.5,1.0]", "dial.precisions=[0.5,1.0]"]) == 0
    rows = list(csv.DictReader((d / "accuracy.csv").open()))
    assert {(r["driver"], r["series"]) for r in rows} == {
        (drv, s) for drv in ("replay", "sim") for s in ("lru", "noisy_oracle", "learned_next")}
    assert len(rows) == 2 * 2 * (1 + 4 + 1)
    assert (d / "accuracy.png").stat().st_size > 0 and (d / "summary.md").exists()
    # the learned predictor is scored on the checkpoint's held-out prompts only
    import json

    from traces.format import read_trace

    test_ids = json.loads((ck / "config.json").read_text())["split"]["test"]
    replayed = read_trace(d / "trace.parquet").request_ids()
    assert replayed and set(replayed) <= set(test_ids)

    d = tmp_path / "pf"
    assert main(["experiment", "prefetch", f"hydra.run.dir={d}", *common, "dial.leads=[1,2]"]) == 0
    rows = list(csv.DictReader((d / "prefetch.csv").open()))
    assert [r["series"] for r in rows] == ["lru", "learned_next", "learned_gated", "learned_topk",
                                           "learned_free", "noisy_oracle", "perfect"] * 2
    perfect = [r["share_of_perfect_stall_reduction"] for r in rows if r["series"] == "perfect"]
    assert any(perfect), perfect  # blank where perfect prefetch stalled no less than LRU
    for share in filter(None, perfect):
        assert float(share) == pytest.approx(1.0)
    text = (d / "summary.md").read_text()
    assert "of perfect prefetch's stall reduction" in text and (d / "prefetch.png").exists()
    assert "(break-even)" in text and "Calibration" in text and "Lead time" in text
    leads = list(csv.DictReader((d / "lead.csv").open()))
    assert [(r["budget"], r["lead"]) for r in leads] == [("0.25", "1"), ("0.25", "2"),
                                                        ("0.75", "1"), ("0.75", "2")]
    for r in leads:  # stall hidden = LRU's stall - the series'
        assert float(r["hidden_perfect_s"]) == pytest.approx(
            float(r["stall_lru_s"]) - float(r["stall_perfect_s"]), rel=1e-4, abs=1e-5)  # (6 digits)
        assert "precision_d2" in r


def test_prefetch_experiment_needs_a_checkpoint(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(synth_trace(num_prompts=2, L=26, E=64, K=6, model="deepseek-v2-lite"), path)
    cmd = [sys.executable, "-m", "sim", "experiment", "prefetch", f"trace.path={path}",
           f"hydra.run.dir={tmp_path / 'o'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "dial.checkpoint is required" in out.stderr.strip().splitlines()[-1]
