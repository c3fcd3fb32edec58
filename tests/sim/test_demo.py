"""The embedded default (``moesim demo``) runs from a bare checkout: no ../shared, fast."""

from __future__ import annotations

import json

import pytest

from sim.cli import main as cli_main


@pytest.mark.slow
def test_demo_runs_and_compares_with_full_memory(tmp_path, capsys):
    rc = cli_main(["demo", f"hydra.run.dir={tmp_path}", "workload.num_requests=30", "demo_policies=[lru]"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "full-memory" in out and "lru" in out
    full = json.loads((tmp_path / "full-memory" / "metrics.json").read_text())
    lru = json.loads((tmp_path / "lru" / "metrics.json").read_text())
    assert full["requests_completed"] == lru["requests_completed"] == 30
    assert full["hit_rate"] == 1.0 and full["fetch_stall_s"] == 0.0
    assert lru["hit_rate"] < 1.0 and lru["h2d_bytes"] > 0
    assert max(lru["peak_expert_bytes_per_gpu"]) <= max(lru["expert_budget_bytes_per_gpu"])
    assert (tmp_path / "summary.md").is_file()
