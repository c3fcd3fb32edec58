# ruff: noqa: E501  (a table of cases reads better one per line)
"""Malformed input: each kind gives one clear error line, exit status 2, no traceback, no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.app.cli import main as moesim

L, K = 26, 6


def ds_rows(T: int = 3) -> list[str]:
    rows = ["Layer ID,Batch Number,Token,Activated Expert IDs"]
    for layer in range(1, L + 1):
        for t in range(T):
            ids = [(layer + t + j * 7) % 64 for j in range(K)]
            rows.append(f'{layer},0,tok{t},"[{", ".join(map(str, ids))}]"')
    return rows


def write(path: Path, lines: list[str] | str) -> Path:
    path.write_text(lines if isinstance(lines, str) else "\n".join(lines) + "\n")
    return path


def mx_records(T: int = 2, key: str = "token_idx") -> list[dict]:
    return [{"dataset": "gsm8k", "problem_id": 0, "layer": layer, "experts": [(layer + t) % 8, (layer + t + 1) % 8],
             "gating_probs": [0.6, 0.4], key: t} for layer in range(32) for t in range(T)]


def jl(recs: list[dict]) -> list[str]:
    return [json.dumps(r) for r in recs]


def _replace_row(i: int, new: str):
    def f(rows):
        rows = list(rows)
        rows[i] = new
        return rows
    return f


# (name, format, file name, content builder) -> each must fail
DS = "moe-beyond-csv"
MX = "speculative-moe-jsonl"
CASES = [
    ("empty file", DS, "prompt_1_data.csv", lambda: ""),
    ("header only", DS, "prompt_1_data.csv", lambda: ds_rows()[:1]),
    ("wrong columns", DS, "prompt_1_data.csv", lambda: ["layer,token,experts"] + ds_rows()[1:]),
    ("truncated file", DS, "prompt_1_data.csv", lambda: ds_rows()[:-2]),
    ("truncated mid-row", DS, "prompt_1_data.csv", lambda: "\n".join(ds_rows())[:-9]),
    ("expert id out of range", DS, "prompt_1_data.csv", lambda: _replace_row(5, '1,0,x,"[1, 2, 3, 4, 5, 64]"')(ds_rows())),
    ("negative expert id", DS, "prompt_1_data.csv", lambda: _replace_row(2, '1,0,tok1,"[1, 2, 3, 4, 5, -1]"')(ds_rows())),
    ("duplicate expert", DS, "prompt_1_data.csv", lambda: _replace_row(1, '1,0,tok0,"[1, 2, 3, 4, 5, 5]"')(ds_rows())),
    ("ragged top-k", DS, "prompt_1_data.csv", lambda: _replace_row(1, '1,0,tok0,"[1, 2, 3, 4, 5]"')(ds_rows())),
    ("non-integer expert id", DS, "prompt_1_data.csv", lambda: _replace_row(1, '1,0,tok0,"[1, 2, x, 4, 5, 6]"')(ds_rows())),
    ("unbracketed expert list", DS, "prompt_1_data.csv", lambda: _replace_row(1, '1,0,tok0,"1 2 3 4 5 6"')(ds_rows())),
    ("layer id out of range", DS, "prompt_1_data.csv", lambda: _replace_row(1, '27,0,tok0,"[1, 2, 3, 4, 5, 6]"')(ds_rows())),
    ("rows out of layer order", DS, "prompt_1_data.csv", lambda: _replace_row(1, '2,0,tok0,"[1, 2, 3, 4, 5, 6]"')(ds_rows())),
    ("token text differs across layers", DS, "prompt_1_data.csv", lambda: _replace_row(5, '2,0,zzz,"[2, 9, 16, 23, 30, 37]"')(ds_rows())),
    ("jsonl given to csv importer", DS, "prompt_1_data.csv", lambda: jl(mx_records())),
    ("mixtral empty", MX, "a_routing.jsonl", lambda: "\n\n"),
    ("mixtral truncated json", MX, "a_routing.jsonl", lambda: "\n".join(jl(mx_records()))[:-20]),
    ("mixtral missing key", MX, "a_routing.jsonl", lambda: jl([{k: v for k, v in r.items() if k != "layer"} for r in mx_records()])),
    ("mixtral NaN weight", MX, "a_routing.jsonl", lambda: jl(mx_records())[:-1] + [jl(mx_records())[-1].replace("0.4]", "NaN]")]),
    ("mixtral duplicate expert", MX, "a_routing.jsonl", lambda: jl(mx_records()[:-1] + [{**mx_records()[-1], "experts": [3, 3]}])),
    ("mixtral ragged top-k", MX, "a_routing.jsonl", lambda: jl(mx_records()[:-1] + [{**mx_records()[-1], "experts": [1, 2, 3]}])),
    ("mixtral expert out of range", MX, "a_routing.jsonl", lambda: jl(mx_records()[:-1] + [{**mx_records()[-1], "experts": [1, 8]}])),
    ("mixtral layer out of range", MX, "a_routing.jsonl", lambda: jl(mx_records()[:-1] + [{**mx_records()[-1], "layer": 32}])),
    ("mixtral duplicate record", MX, "a_routing.jsonl", lambda: jl(mx_records() + mx_records()[:1])),
    ("mixtral not an object", MX, "a_routing.jsonl", lambda: ["[1, 2, 3]"]),
    ("csv given to jsonl importer", MX, "a_routing.jsonl", lambda: ds_rows()),
    ("azure wrong columns", "azure-csv", "AzureLLMInferenceTrace_code.csv", lambda: ["a,b,c", "1,2,3"]),
    ("azure bad timestamp", "azure-csv", "AzureLLMInferenceTrace_code.csv",
     lambda: ["TIMESTAMP,ContextTokens,GeneratedTokens", "yesterday,10,3"]),
    ("azure non-numeric tokens", "azure-csv", "AzureLLMInferenceTrace_code.csv",
     lambda: ["TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:17:03.9799600,ten,3"]),
    ("azure zero output tokens", "azure-csv", "AzureLLMInferenceTrace_code.csv",
     lambda: ["TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:17:03.9799600,10,0"]),
    ("mooncake missing key", "mooncake-jsonl", "trace.jsonl", lambda: ['{"timestamp": 0, "input_length": 5}']),
    ("mooncake negative timestamp", "mooncake-jsonl", "trace.jsonl",
     lambda: ['{"timestamp": -5, "input_length": 5, "output_length": 2}']),
]


def _run(argv, capsys):
    rc = moesim(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("name,fmt,fname,build", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_fails_cleanly(name, fmt, fname, build, tmp_path, capsys):
    src = write(tmp_path / fname, build())
    out = tmp_path / "out.parquet"
    rc, _, err = _run(["trace", "import", "--format", fmt, str(src), "-o", str(out)], capsys)
    assert rc == 2, name
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moesim: error: "), err
    assert "Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.glob(".out.parquet.*")) == []  # no temporary left behind


def test_valid_builders_import(tmp_path, capsys):
    """The builders above make valid files, so each case fails for the reason it names."""
    a = write(tmp_path / "prompt_7_data.csv", ds_rows())
    b = write(tmp_path / "x_routing.jsonl", jl(mx_records()))
    rc, out, err = _run(["trace", "import", "--format", DS, str(a), "-o", str(tmp_path / "a.parquet")], capsys)
    assert rc == 0, err
    rc, out, err = _run(["trace", "import", "--format", MX, str(b), "-o", str(tmp_path / "b.parquet")], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("argv", [
    ["trace", "import", "--format", "no-such-format", "x.csv", "-o", "OUT"],
    ["trace", "import", "--format", "moe-beyond-csv", "does-not-exist.csv", "-o", "OUT"],
    ["trace", "validate", "missing.parquet"],
    ["trace", "stats", "missing.parquet", "--json"],
    ["trace", "synth", "--params", "no-such-model", "-o", "OUT"],
    ["trace", "synth", "--kind", "zipf", "--params", "mixtral-8x7b", "--zipf-a", "-1", "-o", "OUT"],
    ["trace", "import", "--format", "moe-beyond-csv", "-o", "OUT"],
    ["trace", "frobnicate"],
])
def test_bad_arguments_fail_cleanly(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("moesim: error: "), err
    assert not (tmp_path / "OUT").exists()


def test_validate_rejects_non_moesim_parquet(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), p)
    rc, _, err = _run(["trace", "validate", str(p)], capsys)
    assert rc == 2 and "no moesim metadata" in err
    bad = write(tmp_path / "garbage.parquet", "not parquet at all")
    rc, _, err = _run(["trace", "validate", str(bad)], capsys)
    assert rc == 2 and "not a readable Parquet" in err


def test_subprocess_error_has_no_traceback(tmp_path):
    import subprocess
    import sys

    src = write(tmp_path / "prompt_1_data.csv", ds_rows()[:-2])
    r = subprocess.run([sys.executable, "-m", "sim", "trace", "import", "--format", DS, str(src), "-o",
                        str(tmp_path / "o.parquet")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "prompt_1_data.csv" in r.stderr
