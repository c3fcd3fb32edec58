from __future__ import annotations

import csv

import pytest
import torch

from kernels.bench import CSV_COLUMNS
from sim.app.kernels_cmd import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without a GPU")
def test_bench_without_gpu_exits_nonzero_with_one_line(capsys, tmp_path):
    rc = main(["bench", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_subcommand_and_help(capsys):
    assert main(["frobnicate"]) == 2
    assert main([]) == 0
    assert "moesim kernels bench" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_bench_writes_csv_on_cpu(tmp_path, capsys):
    rc = main(["bench", "device=cpu", "interpret=true", "shapes=[tiny]", "sizes=[3]", "reference=false",
               "dtype=fp32", f"out_dir={tmp_path}"])
    assert rc == 0
    path = tmp_path / "kernels_bench_float32.csv"
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == CSV_COLUMNS
    assert {(r["kernel"], r["impl"]) for r in rows} == {
        ("gating", "triton"), ("align", "triton"), ("static_align", "triton"), ("ffn", "triton"),
        ("ffn", "static"), ("combine", "triton"), ("layer", "triton"), ("layer", "static")}
    assert all(r["tokens"] == "3" and float(r["time_us"]) > 0 for r in rows)
    ffn = next(r for r in rows if r["kernel"] == "ffn" and r["impl"] == "triton")
    assert int(ffn["flop"]) == 2 * 3 * 2 * 3 * 32 * 64  # 2 * T*K * 3*H*N
    assert "wrote" in capsys.readouterr().out


def test_bad_override_is_one_line_error(capsys, tmp_path):
    rc = main(["bench", "device=cpu", "interpret=true", "shapes=[nope]", f"out_dir={tmp_path}"])
    assert rc == 2
    assert "unknown shapes" in capsys.readouterr().err
