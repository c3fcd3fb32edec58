"""Bad input to any command: one line on stderr naming the key (or flag), exit status 2, no
traceback, and no run directory left behind; ``--help`` is the app's own usage and keys."""

from __future__ import annotations

import numpy as np
import pytest

from sim.app.cli import main as moesim


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    from traces.format import RoutingTrace, TraceMeta, make_tokens, write_trace

    d = tmp_path_factory.mktemp("traces")
    ex = np.tile(np.array([[0, 1], [2, 3]], dtype=np.int16), (8, 1, 1))  # (8, 2, 2)
    many = RoutingTrace(ex, None, make_tokens(np.arange(8) // 2, np.arange(8) % 2, "prefill", "x",
                                              [f"w{i}" for i in range(8)]),
                        TraceMeta("DeepSeek-V2-Lite", 2, 4, 2))
    one = RoutingTrace(ex, None, make_tokens(np.zeros(8, dtype=int), np.arange(8), "prefill", "x",
                                             [f"w{i}" for i in range(8)]),
                       TraceMeta("DeepSeek-V2-Lite", 2, 4, 2))
    write_trace(many, d / "many.parquet")
    write_trace(one, d / "one.parquet")
    return {"many": str(d / "many.parquet"), "one": str(d / "one.parquet")}


def _run(argv, capsys):
    try:
        rc = moesim(argv)
    except SystemExit as exc:
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_one_line(rc, err, *words):
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "HYDRA_FULL_ERROR" not in err, err
    assert ": error: " in err, err
    for w in words:
        assert w in err, (w, err)


CASES = [
    # (argv with {many}/{one} for the traces, words the one line must contain)
    (["cache", "trace.path={many}", "cluster.expert_budget_fractions=0.5"],
     ["cluster.expert_budget_fractions", "[0.5]"]),
    (["cache", "trace.path={many}", "policy.caches=lru"], ["policy.caches", "[lru]"]),
    (["cache"], ["trace.path", "give trace.path="]),
    (["cache", "trace.path="], ["trace.path", "empty"]),
    (["cache", "trace.path=/no/such.parquet"], ["trace.path=/no/such.parquet", "no such file"]),
    (["cache", "trace.path={many}", "bogus=1"], ["unknown key 'bogus'"]),
    (["cache", "trace.path={many}", "batch_size=x"], ["batch_size=x"]),
    (["cache", "trace.path={many}", "policy.caches=[lru"], ["bad override 'policy.caches=[lru'"]),
    (["cache", "trace.path={many}", "model=nope"], ["model=nope", "mixtral-8x7b"]),
    (["cache", "trace.path={many}", "--frobnicate"], ["--frobnicate"]),
    (["cache", "trace.path={many}", "+foo=1"], ["unknown key 'foo'"]),
    (["cache", "trace.path={many}", "model.num_layers=4"], ["model=NAME"]),
    (["sim", "+model.bogus=1"], ["unknown key 'model.bogus'"]),
    (["placement"], ["trace.path"]),
    (["placement", "trace.path={many}", "num_gpus=8"], ["unknown key 'num_gpus'", "cluster.expert_parallel"]),
    (["cache", "trace.path={many}", "capacity_fracs=[0.5]"],
     ["unknown key 'capacity_fracs'", "cluster.expert_budget_fractions"]),
    (["placement", "trace.path={many}", "cluster.expert_parallel=[8]"], ["cluster.expert_parallel"]),
    (["sim", "seed=x"], ["seed=x"]),
    (["sim", "model=nope"], ["model=nope"]),
    (["sim", "cost_model=table"], ["unknown key 'cost_model'"]),
    (["demo", "replay=maybe"], ["replay"]),
    (["demo", "-m", "--cfg", "job"], ["--multirun"]),
    (["predictor", "train"], ["trace.path"]),
    (["predictor", "train", "trace.path={one}", "predictor=tiny"], ["split=", "no val prompts"]),
    (["predictor", "eval", "trace.path={many}"], ["checkpoint", "give checkpoint="]),
    (["realrun", "replay", "shrink=x"], ["shrink=x"]),
    (["realrun", "calibrate", "tokens=1"], ["tokens", "[1]"]),
    (["report", "{many}", "--bogus"], ["--bogus"]),
]


@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_leaves_no_run_dir(argv, words, traces, capsys, monkeypatch,
                                                     tmp_path):
    monkeypatch.chdir(tmp_path)  # the default run directories (outputs/...) land here
    rc, _, err = _run([a.format(**traces) for a in argv], capsys)
    _assert_one_line(rc, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_kernels_bench_bad_value_is_one_line(capsys, tmp_path):
    from sim.app.kernels_cmd import main

    assert main(["bench", "sizes=4", f"out_dir={tmp_path}"]) == 2
    _assert_one_line(2, capsys.readouterr().err, "sizes", "[4]")
    assert list(tmp_path.iterdir()) == []


def test_report_out_under_a_file(traces, capsys, tmp_path):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"hit_rate": 0.5}))
    (tmp_path / "afile").write_text("x")
    rc, _, err = _run(["report", str(run), "--out", str(tmp_path / "afile" / "rep")], capsys)
    _assert_one_line(rc, err, "--out", "afile", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run"]
    assert [p.name for p in run.iterdir()] == ["metrics.json"]


def test_failed_run_removes_the_run_dir_it_created(traces, capsys, tmp_path):
    new = tmp_path / "a" / "b" / "run"
    rc, _, err = _run(["cache", "trace.path=/no/such.parquet", f"hydra.run.dir={new}"], capsys)
    _assert_one_line(rc, err, "trace.path")
    assert list(tmp_path.iterdir()) == []  # and the parents it made
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    rc, _, err = _run(["cache", "trace.path=/no/such.parquet", f"hydra.run.dir={old}"], capsys)
    _assert_one_line(rc, err, "trace.path")
    assert (old / "keep.txt").read_text() == "mine"  # existed before: kept


def test_failed_sim_run_removes_its_default_run_dir(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(["sim", "policy.cache=nope"], capsys)
    _assert_one_line(rc, err, "nope")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,key", [
    (["cache"], "cluster.expert_budget_fractions"), (["placement"], "train_frac"),
    (["sim"], "serving.cost_table"),
    (["demo"], "runs"), (["predictor", "train"], "predictor.token.mode"),
    (["predictor", "eval"], "staleness_periods"), (["realrun", "replay"], "cluster.expert_budget_fraction"),
    (["realrun", "calibrate"], "copy_experts"), (["kernels", "bench"], "capacity_factor"),
])
def test_app_help_is_its_usage_and_keys(argv, key, capsys):
    rc, out, _ = _run([*argv, "--help"], capsys)
    assert rc == 0
    assert out.startswith(f"usage: moesim {' '.join(argv)} ") and key in out
    assert "powered by Hydra" not in out
    if argv == ["cache"]:
        assert "hardware" not in out and "trace.path" in out and "model" in out
