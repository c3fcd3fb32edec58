"""``moesim placement`` on a load table (counts only, e.g. SGLang's expert-distribution dump):
planned and scored in sample, no held-out half."""

from __future__ import annotations

import json

import numpy as np

from sim.app.cli import main as moesim
from traces.load_table import LoadMeta, LoadTable, write_load_table


def test_placement_plans_on_a_load_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    counts = (rng.zipf(1.6, size=(3, 16)) * 10).astype(np.int64)  # (L, E) skewed loads
    path = tmp_path / "load.parquet"
    write_load_table(LoadTable(counts, LoadMeta("mixtral-8x7b", 3, 16, layer_ids=[0, 1, 2])), path)
    out = tmp_path / "run"
    rc = moesim(["placement", f"trace.path={path}", "cluster.expert_parallel=4",
                 "policy.placements=[contiguous,greedy,eplb]", f"hydra.run.dir={out}", "plot=false"])
    assert rc in (0, None)
    m = json.loads((out / "metrics.json").read_text())
    assert "in sample" in m["source"] and m["trace"]["experts"] == 16
    r = {x["policy"]: x for x in m["results"]}
    # the planners see the loads: greedy and EPLB balance them better than contiguous blocks
    assert r["greedy"]["train_max_over_mean"] < r["contiguous"]["train_max_over_mean"]
    assert r["eplb"]["train_max_over_mean"] <= r["greedy"]["train_max_over_mean"] + 1e-9
    assert "test_max_over_mean" not in r["greedy"]  # no token order: no held-out half
