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


# ------------------------------------------------------------------------------------------------
# The same promise from outside: each bad input run as a user runs it (a subprocess of
# `python -m sim.app.cli`, so warnings, interpreter exit and stray files all count): exit status 1
# or 2, at most two lines on stdout and stderr together, no traceback, nothing left in the
# working directory (no run or sweep directory, no output file).
# ------------------------------------------------------------------------------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SUBPROCESS_CASES = [
    # (argv, words the output must contain)
    (["sim", "workload.rate_rps=nan"], ["workload.rate_rps=nan", "expected"]),
    (["sim", "workload.prompt_tokens_mean=-10"], ["workload.prompt_tokens_mean", ">= 1"]),
    (["sim", "workload.prompt_tokens_mean=nan"], ["workload.prompt_tokens_mean"]),
    (["sim", "workload.output_tokens_mean=0"], ["workload.output_tokens_mean", ">= 1"]),
    (["sim", "serving.ttft_slo_s=-1"], ["serving.ttft_slo_s=-1"]),
    (["sim", "serving.tpot_slo_s=inf"], ["serving.tpot_slo_s=inf"]),
    (["sim", "seed=-1"], ["seed=-1", "expected"]),
    (["sim", "cluster.expert_budget_fraction=0.001"], ["cluster.expert_budget_fraction=0.001", "0 of"]),
    (["sim", "cluster.expert_budget_bytes=5"], ["cluster.expert_budget_bytes=5"]),
    (["sim", "hardware.hbm_efficiency=1.5"], ["hardware.hbm_efficiency=1.5", "(0, 1]"]),
    (["sim", "model=deepseek-v3", "cluster=1x1"], ["cannot hold"]),
    (["sim", "cluster.reserved_bytes=1e12"], ["cluster.reserved_bytes", "1000.0 GB"]),
    (["sim", "cluster.faults=[{{tme_s:1,gpu:0}}]"], ["cluster.faults[0].tme_s"]),
    (["sim", "cluster.faults=[{{gpu:0}}]"], ["cluster.faults[0].time_s"]),
    (["sim", "workload.rates_rps=3"], ["workload.rate_rps"]),
    (["sim", "policy.caches=[lru]"], ["policy.cache"]),
    (["sim", "train_frac=0.3"], ["moesim placement"]),
    (["sim", "workload.path=/no/such.csv"], ["workload.path=/no/such.csv", "request trace"]),
    (["sim", "-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
     ["hydra.launcher.n_jobs=0"]),
    (["cache", "trace.path={many}", "model=mixtral-8x7b"], ["model=mixtral-8x7b", "32 layers", "2 x 4"]),
    (["cache", "trace.path={many}", "cluster.expert_budget_fractions=[0.1]"],
     ["cluster.expert_budget_fractions[0]=0.1", "0 of its 4"]),
    (["cache", "trace.path={many}", "cluster.expert_budget_fractions=[0.5,0]"],
     ["cluster.expert_budget_fractions[1]=0"]),
    (["cache", "trace.path={many}", "cluster.expert_budget_fractions=[nan]"], ["not a number"]),
    (["cache", "trace.path={many}", "policy.cache=lru"], ["policy.caches"]),
    (["cache", "trace.path={many}", "cluster.expert_budget_fraction=0.5"],
     ["cluster.expert_budget_fractions"]),
    (["cache", "trace.path={many}", "batch_size=0"], ["batch_size=0"]),
    (["cache", "trace.path={many}", "workload.max_requests=-1"], ["workload.max_requests=-1"]),
    (["placement", "trace.path={many}", "cluster.expert_parallel=1000"],
     ["cluster.expert_parallel=1000", "4 experts"]),
    (["placement", "trace.path={many}", "train_frac=1.5"], ["train_frac=1.5"]),
    (["placement", "trace.path={many}", "policy.placement=greedy"], ["policy.placements"]),
    (["placement", "trace.path={many}", "model=mixtral-8x7b"], ["model=mixtral-8x7b"]),
    (["trace", "validate", "{readme}"], ["cannot tell"]),
    (["trace", "stats", "/no/such.parquet"], ["no such file"]),
    (["trace", "capture", "/no/model", "--prompts", "/no/p.jsonl", "-o", "o.parquet", "--device", "gpu"],
     ["--device gpu", "cpu"]),
    (["trace", "import", "--format", "moe-beyond-csv", "{badcsv}", "-o", "o.parquet"], ["bad.csv"]),
    (["trace", "synth", "--requests", "-3", "-o", "o.parquet"], ["requests"]),
    (["report", "no_such_dir"], ["no_such_dir", "no such directory"]),
    (["predictor", "train", "trace.path={one}", "predictor.token.lr=-1"], ["predictor.token.lr=-1"]),
    (["predictor", "eval", "trace.path={one}", "checkpoint=/no/ckpt", "threads=0"], ["threads=0"]),
    (["realrun", "replay", "cluster.expert_budget_fraction=0.01"],
     ["cluster.expert_budget_fraction=0.01", "0 of its 64"]),
    (["realrun", "replay", "seed=-1"], ["seed=-1"]),
    (["realrun", "calibrate", "tokens=[0]"], ["tokens[0]=0"]),
    (["realrun", "validate", "shrink=0"], ["shrink=0"]),
    (["experiment", "emoe", "workload.rates_rps=[-1]"], ["workload.rates_rps[0]=-1"]),
    (["kernels", "bench", "rep_ms=0"], ["rep_ms=0"]),
    (["demo", "workload.rate_rps=-1"], ["workload.rate_rps=-1"]),
    (["demo", "runs.a.seed=-1"], ["runs.a: seed=-1"]),  # checked before the first run
    (["cache", "trace.path={many}", "policy.caches=[nope]"], ["'nope'"]),  # before the progress
    (["cache", "trace.path={many}", "mode=weird"], ["mode='weird'"]),
    (["placement", "trace.path={many}", "policy.placements=[nope]"], ["'nope'"]),
    (["trace", "synth", "--seed", "-1", "-o", "o.parquet"], ["--seed", "-1"]),
    (["realrun", "replay", "device=gpu"], ["device=gpu", "cpu"]),
    (["sim", "hydra.launcher.n_jobs=0", "-m", "seed=1,2"], ["n_jobs"]),
]


def _moesim(argv, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-m", "sim.app.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(traces, tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "bad.csv").write_text('Layer ID,Batch Number,Token,Activated Expert IDs\n1,0,hi,"[1,2]",x\n')
    (d / "readme.md").write_text("# not a trace\n")
    return {**traces, "badcsv": str(d / "bad.csv"), "readme": str(d / "readme.md")}


@pytest.mark.parametrize("argv,words", SUBPROCESS_CASES, ids=[" ".join(a) for a, _ in SUBPROCESS_CASES])
def test_bad_input_as_a_user_runs_it(argv, words, files, tmp_path):
    p = _moesim([a.format(**files) for a in argv], tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode in (1, 2), out
    assert len(out.strip().splitlines()) <= 2 and "Traceback" not in out, out
    for w in words:
        assert w in out, (w, out)
    assert list(tmp_path.iterdir()) == [], out


def test_capture_on_cpu_torch_says_cuda_is_missing(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    p = _moesim(["trace", "capture", str(tmp_path), "--prompts", "p.jsonl", "-o", "o.parquet",
                 "--device", "cuda"], tmp_path)
    assert p.returncode == 2 and "CUDA is not available" in p.stderr and "--device cpu" in p.stderr
    assert len((p.stdout + p.stderr).strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_numbers_a_user_writes_are_read(files, tmp_path):
    """1e10 for an integer key, a policy argument without '+': accepted; the run's metrics.json
    is strict JSON (no NaN or Infinity: json.loads with parse_constant refusing them)."""
    import json

    p = _moesim(["sim", "cluster.reserved_bytes=1e10", "workload.num_requests=3",
                 "policy.prefetch=emoe_a", "policy.prefetch_args.period=2", "output.progress=off",
                 "output.print_summary=false", "hydra.run.dir=run"], tmp_path)
    assert p.returncode == 0, p.stderr

    def refuse(name):
        raise AssertionError(f"metrics.json holds {name}")

    m = json.loads((tmp_path / "run" / "metrics.json").read_text(), parse_constant=refuse)
    assert m["requests"]["completed"] == 3 if "requests" in m else True
    assert not (tmp_path / "run" / "sim.log").exists()  # no empty job log
    p = _moesim(["sim", "policy.prefetch=emoe_a", "policy.prefetch_args.period=0"], tmp_path)
    assert p.returncode == 2 and "period" in p.stderr and "+" not in p.stderr, p.stderr


def test_cache_prints_progress_and_writes_strict_json(files, tmp_path):
    import json

    p = _moesim(["cache", f"trace.path={files['many']}", "plot=false", "hydra.run.dir=run",
                 "policy.caches=[lru,fifo]", "cluster.expert_budget_fractions=[0.5,0.75]"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "moesim cache: 0/6 replays" in p.stderr  # (lru, fifo, belady) x 2 budgets
    json.loads((tmp_path / "run" / "metrics.json").read_text(),
               parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))


def test_report_on_a_file_instead_of_a_dir_makes_nothing(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    p = _moesim(["report", "f.txt"], tmp_path)
    assert p.returncode == 2 and "not a directory" in p.stderr
    assert [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_a_wrapped_workload_is_a_line_of_the_summary(tmp_path):
    """Requests longer than their routing trace replay it from its start (trace.overflow=wrap):
    the summary says so in a line, not only binding.tokens_past_trace in metrics.json."""
    import json

    p = _moesim(["trace", "synth", "--params", "mixtral-8x7b", "--requests", "2",
                 "--tokens-per-request", "8", "-o", "t.parquet"], tmp_path)
    assert p.returncode == 0, p.stderr
    p = _moesim(["sim", "trace=file", "trace.path=t.parquet", "workload.num_requests=2",
                 "workload.prompt_tokens_mean=40", "workload.output_tokens_mean=4",
                 "output.progress=off", "hydra.run.dir=run"], tmp_path)
    assert p.returncode == 0, p.stderr
    wrapped = json.loads((tmp_path / "run" / "metrics.json").read_text())["binding"]["tokens_past_trace"]
    assert wrapped > 0
    assert f"note: {wrapped} tokens ran past their routing trace" in p.stdout
