"""benchmarks/sim_scaling.py: one small point end to end (table, CSV, captioned plot, replot)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_point_grid_writes_csv_and_plot(tmp_path):
    shared_path("requests", "azure-llm-2023", "AzureLLMInferenceTrace_conv.csv")
    out = tmp_path / "s"
    cmd = [sys.executable, "benchmarks/sim_scaling.py", str(out), "--gpus", "16", "--rates", "2",
           "--window", "10"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stderr
    assert "sim s/wall s" in r.stdout
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert len(rows) == 1
    row = rows[0]
    # 2x the rate over 10 simulated s = the merged trace's first 20 s (31 requests), 2 replicas
    assert (row["gpus"], row["replicas"], row["rate"], row["requests"]) == ("16", "2", "2.0", "31")
    assert float(row["sim_s"]) >= 10 and float(row["peak_rss_mib"]) > 50
    assert float(row["sim_s_per_cpu_s"]) > 0
    assert row["requests_asked"] == "31" and float(row["sys_cpu_s"]) >= 0  # every one completed
    assert "all done" in r.stdout and r.stdout.splitlines()[1].split()[-1] == "yes"
    png = (out / "scaling.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    assert (out / "command.txt").read_text().startswith("python benchmarks/sim_scaling.py")
    r = subprocess.run([sys.executable, "benchmarks/sim_scaling.py", str(out), "--replot", "--y",
                        "user_cpu_s"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (out / "scaling.png").read_bytes() != png


def test_bad_gpu_count_is_refused(tmp_path):
    shared_path("requests", "azure-llm-2023", "AzureLLMInferenceTrace_conv.csv")
    r = subprocess.run([sys.executable, "benchmarks/sim_scaling.py", str(tmp_path), "--gpus", "12"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--gpus [12]" in r.stderr
