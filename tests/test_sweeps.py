"""Sweeps (-m): a killed sweep rerun completes only the missing runs; a failing job is reported at
the end while the others complete; the joblib launcher runs jobs in parallel."""

import json
import signal
import subprocess
import sys
import time

import pytest

TINY = ["model=deepseek-v2-lite", "cluster=1x1", "hardware=a100-40gb", "workload.num_requests=8",
        "output.progress=off", "output.print_summary=false", "output.requests_parquet=false",
        "trace.pool_size=2", "trace.pool_tokens=64", "cluster.expert_budget_fraction=0.5"]


def _sweep(d, caches, extra=()):
    return [sys.executable, "-m", "sim", "sim", "-m", f"hydra.sweep.dir={d}", *TINY,
            f"policy.cache={caches}", *extra]


@pytest.mark.slow
def test_killed_sweep_rerun_completes_only_the_missing_runs(tmp_path):
    d = tmp_path / "sw"
    cmd = _sweep(d, "lru,lifo,lfu,fifo")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (d / "0" / "done.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in d.glob("*/done.json")}
    assert "0" in finished and len(finished) < 4
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    skipped = {line.split()[3] for line in r.stderr.splitlines() if "finished before, skipped" in line}
    assert skipped == finished
    assert {p.parent.name for p in d.glob("*/done.json")} == {"0", "1", "2", "3"}
    assert all((d / n / "metrics.json").is_file() for n in "0123")


@pytest.mark.slow
def test_failing_job_is_reported_and_the_others_complete(tmp_path):
    d = tmp_path / "sw"
    r = subprocess.run(_sweep(d, "lru,nope,lifo", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "1 job(s) of the sweep failed" in r.stderr and "unknown cache policy 'nope'" in r.stderr
    assert (d / "0" / "metrics.json").is_file() and (d / "2" / "metrics.json").is_file()
    assert "nope" in json.loads((d / "1" / "failed.json").read_text())["error"]
    from analysis.results import load_runs

    df = load_runs(d)
    assert sorted(df["policy.cache"]) == ["lifo", "lru"]
    assert [f["label"] for f in df.attrs["failed"]][0].endswith("policy.cache=nope")
