"""metrics.json's request figures come from numpy columns (sim.engine.metrics.request_columns), not
a pandas table: the same figures as the table's, and a warm run's simulation imports no pandas
before its outputs are written (requests.parquet is where the table is made)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sim.engine.metrics import _pct, compute_metrics, request_columns, request_table, stable_float
from sim.engine.simulation import Simulation
from sim.serving.testing import StubCost, random_run, tiny_config

ROOT = Path(__file__).resolve().parents[3]


def _sim(seed: int, ttft_slo: float) -> Simulation:
    cfg = tiny_config(layers=2, experts=4, top_k=2, gpus_per_node=2)
    cfg = dataclasses.replace(cfg, serving=dataclasses.replace(cfg.serving, ttft_slo_s=ttft_slo,
                                                               tpot_slo_s=0.004))
    wl, pool, binding, rng = random_run(cfg, seed, n=20)
    sim = Simulation(cfg, wl, pool, binding, StubCost(), rng)
    sim.run()
    return sim


def test_request_figures_equal_the_tables():
    for seed, slo in ((3, 0.01), (4, 0.05), (5, 1e9)):
        sim = _sim(seed, slo)
        m = compute_metrics(sim)
        df = request_table(sim)  # the pandas reference of each figure
        done = df[df["completions"] > 0]
        assert m["requests_completed"] == len(done) == 20
        assert m["requests_completed_more_than_once"] == int((df["completions"] > 1).sum())
        assert m["output_tokens"] == int(done["output_tokens"].sum())
        for c in ("ttft_s", "tpot_s", "e2e_s"):
            assert m[c] == _pct(done[c].to_numpy())
        assert m["slo_attainment"] == stable_float(done["slo_met"].mean())
        cols = request_columns(sim)
        assert list(cols) == list(df.columns)
        for c in df.columns:
            assert np.array_equal(np.asarray(cols[c]), df[c].to_numpy()), c


def test_slo_attainment_by_hand():
    # a TTFT SLO of 1 ns: no request meets it; one of 10^9 s: the share of requests whose TPOT
    # is within 4 ms, worked out from the columns
    assert compute_metrics(_sim(3, 1e-9))["slo_attainment"] == 0.0
    sim = _sim(3, 1e9)
    cols = request_columns(sim)
    share = float(np.count_nonzero(cols["tpot_s"] <= 0.004)) / 20
    assert compute_metrics(sim)["slo_attainment"] == stable_float(share)


_CHILD = r"""
import json, os, sys
import sim.engine.run as run
from sim.app.cli import main
def write_outputs(*a, **k):
    print("LOADED " + json.dumps({m: m in sys.modules for m in ("pandas", "pyarrow")}), flush=True)
    os._exit(0)
run.write_outputs = write_outputs
sys.argv = ["moesim", "sim", *sys.argv[1:]]
main()
"""


def test_warm_simulation_imports_no_pandas(tmp_path):
    env = {**os.environ, "MOESIM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONHASHSEED": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["model=deepseek-v2-lite", "cluster=1x1", "hardware=a100-40gb", "trace.pool_size=2",
            "trace.pool_tokens=64", "workload.num_requests=5", "output.progress=off",
            "output.print_summary=false", f"hydra.run.dir={tmp_path / 'run'}"]
    seen = []
    for _ in range(2):  # the first samples the routing pool (pandas), the second reads it
        out = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        line = [x for x in out.stdout.splitlines() if x.startswith("LOADED ")]
        assert out.returncode == 0 and line, out.stdout + out.stderr
        seen.append(json.loads(line[0][7:]))
    assert seen[0]["pandas"]
    assert seen[1] == {"pandas": False, "pyarrow": False}
