"""The embedded default (``moesim demo``) runs from a bare checkout: no ../shared, fast."""

from __future__ import annotations

import json

import pytest

from sim.app.cli import main as cli_main


@pytest.mark.slow
def test_demo_runs_and_compares_with_full_memory(tmp_path, capsys):
    rc = cli_main(["demo", f"hydra.run.dir={tmp_path}", "workload.num_requests=30", "~runs.lifo",
                   "~runs.emoe-predict", "replay=false"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "all-resident" in out and "lru" in out
    full = json.loads((tmp_path / "all-resident" / "metrics.json").read_text())
    lru = json.loads((tmp_path / "lru" / "metrics.json").read_text())
    assert full["requests_completed"] == lru["requests_completed"] == 30
    assert full["hit_rate"] == 1.0 and full["fetch_stall_s"] == 0.0
    assert lru["hit_rate"] < 1.0 and lru["h2d_bytes"] > 0
    assert max(lru["peak_expert_bytes_per_gpu"]) <= max(lru["expert_budget_bytes_per_gpu"])
    assert (tmp_path / "summary.md").is_file()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "overview.png" in report and "latency_cdf.png" in report
    assert (tmp_path / "report" / "report.html").is_file()
    assert "None: all 2 runs" in report  # nothing failed
