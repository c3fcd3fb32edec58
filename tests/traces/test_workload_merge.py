"""``workload.path`` as a list: request traces merged by arrival time, each keeping its task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.app.cli import main as cli_main
from sim.common.errors import ConfigError, TraceFormatError
from sim.world.config import workload_paths
from tests.conftest import shared_path
from traces.request_import import load_workloads
from traces.workload import make_workload, write_workload


def _azure(path, rows):
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                    "".join(f"{t},{p},{o}\n" for t, p, o in rows))
    return path


def _mooncake(path, rows):
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": p, "output_length": o,
                                        "hash_ids": []}) + "\n" for t, p, o in rows))
    return path


def test_azure_files_merge_on_their_common_clock(tmp_path):
    a = _azure(tmp_path / "svc_conv.csv", [("2023-11-16 18:00:00.0", 10, 2),
                                           ("2023-11-16 18:00:03.0", 11, 3)])
    b = _azure(tmp_path / "svc_code.csv", [("2023-11-16 18:00:01.0", 20, 4),
                                           ("2023-11-16 18:00:03.0", 21, 5)])
    df = load_workloads([a, b])
    assert df["arrival_s"].tolist() == [0.0, 1.0, 3.0, 3.0]
    # tie at 3 s: the first file of the list first
    assert df["request_id"].tolist() == ["0:0", "1:0", "0:1", "1:1"]
    assert df["task"].tolist() == ["conversation", "code", "conversation", "code"]
    assert df["prompt_tokens"].tolist() == [10, 20, 11, 21]
    # the other order of the list: the tie goes the other way, nothing else changes
    df2 = load_workloads([b, a])
    assert df2["request_id"].tolist() == ["1:0", "0:0", "0:1", "1:1"]
    assert df2["task"].tolist() == ["conversation", "code", "code", "conversation"]


def test_mixed_formats_each_from_its_own_zero(tmp_path):
    wl = make_workload([5.0, 7.5], [30, 31], [6, 7], task="summarise", request_id=["x", "y"])
    pq = tmp_path / "w.parquet"
    write_workload(wl, pq)
    mc = _mooncake(tmp_path / "mc_toolagent.jsonl", [(1000, 40, 8), (3000, 41, 9)])
    az = _azure(tmp_path / "a_code.csv", [("2023-11-16 18:00:00.0", 50, 1), ("2023-11-16 18:00:00.5", 51, 1)])
    df = load_workloads([pq, mc, az])
    assert df["arrival_s"].tolist() == [0.0, 0.0, 0.0, 0.5, 2.0, 2.5]
    assert df["request_id"].tolist() == ["0:x", "1:0", "2:0", "2:1", "1:1", "0:y"]
    assert df["task"].tolist() == ["summarise", "toolagent", "code", "code", "toolagent", "summarise"]
    assert df["output_tokens"].tolist() == [6, 8, 1, 1, 9, 7]


def test_bad_entry_is_named(tmp_path):
    good = _azure(tmp_path / "a.csv", [("2023-11-16 18:00:00.0", 10, 2)])
    bad = tmp_path / "b.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,ten,2\n")
    with pytest.raises(TraceFormatError, match=r"workload.path\[1\]=.*b.csv: .*b.csv: line 2: ContextTokens"):
        load_workloads([good, bad])
    with pytest.raises(TraceFormatError, match=r"workload.path\[1\]=.*none.csv: no such file"):
        load_workloads([good, tmp_path / "none.csv"])
    with pytest.raises(TraceFormatError, match=r"workload.path=\[\] names no file"):
        load_workloads([])


@pytest.mark.parametrize("value, expected", [("", []), ("a.csv", ["a.csv"]), (["a", "b"], ["a", "b"])])
def test_workload_paths_accepts_a_string_or_a_list(value, expected):
    assert workload_paths(value) == expected


@pytest.mark.parametrize("value", [[], [""], [1], {"a": 1}, 3])
def test_workload_paths_rejects_the_rest(value):
    with pytest.raises(ConfigError, match="workload.path="):
        workload_paths(value)


def test_sim_runs_a_merged_workload(tmp_path):
    a = _azure(tmp_path / "x_conv.csv", [(f"2023-11-16 18:00:{i:02d}.0", 32 + i, 3) for i in range(6)])
    b = _azure(tmp_path / "x_code.csv", [(f"2023-11-16 18:00:{i:02d}.5", 64, 2) for i in range(4)])
    args = ["sim", "model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1",
            f"workload.path=[{a},{b}]", "output.progress=off", "output.print_summary=false"]
    outs = []
    for run in ("r1", "r2"):
        assert cli_main([*args, f"hydra.run.dir={tmp_path / run}"]) == 0
        outs.append((tmp_path / run / "metrics.json").read_bytes())
    m = json.loads(outs[0])
    assert m["requests_completed"] == 10
    assert outs[0] == outs[1]  # same seed, same bytes
    import pandas as pd

    req = pd.read_parquet(tmp_path / "r1" / "requests.parquet")
    assert sorted(req["task"].value_counts().items()) == [("code", 4), ("conversation", 6)]


def test_sim_names_the_bad_entry(tmp_path, capsys):
    a = _azure(tmp_path / "x_conv.csv", [("2023-11-16 18:00:00.0", 32, 3)])
    with pytest.raises(SystemExit) as exc:
        cli_main(["sim", f"workload.path=[{a},{tmp_path / 'gone.csv'}]", f"hydra.run.dir={tmp_path}"])
    assert exc.value.code == 2
    assert "workload.path[1]=" in capsys.readouterr().err


def test_the_azure_hour_merged():
    conv = shared_path("requests", "azure-llm-2023", "AzureLLMInferenceTrace_conv.csv")
    code = shared_path("requests", "azure-llm-2023", "AzureLLMInferenceTrace_code.csv")
    df = load_workloads([conv, code])
    counts = df["task"].value_counts().to_dict()
    assert counts == {"conversation": len(load_workloads([conv])), "code": len(load_workloads([code]))}
    assert np.all(np.diff(df["arrival_s"].to_numpy()) >= 0)
    first = df.groupby("task")["arrival_s"].min()
    # the code trace's first request is 77.3 s after the conversation trace's (same wall clock)
    assert first["conversation"] == 0.0 and 77.0 < first["code"] < 77.6
