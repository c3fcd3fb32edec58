"""SGLang expert-distribution dumps become load tables: stats and placement loads read them, the cache
replay refuses them; malformed dumps fail in one line, exit 2, no output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import run

from sim.app.cli import main as moesim
from sim.common.errors import TraceFormatError
from traces.format import read_trace
from traces.load_table import load_table, read_load_table

L, E = 4, 8


def dump(path, logical_count, **extra):
    """What SGLang's stat-mode recorder writes with torch.save."""
    torch.save({"rank": 0, "logical_count": logical_count, "average_utilization_rate_over_window": None,
                **extra}, path)
    return path


def counts(steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (steps, L, E), generator=g, dtype=torch.int32)


def test_sglang_dump_to_load_table(tmp_path, capsys):
    a, b = counts(3, 0), counts(2, 1)
    srcs = [dump(tmp_path / "expert_distribution_recorder_1.pt", a),
            dump(tmp_path / "expert_distribution_recorder_2.pt", b)]
    out = tmp_path / "load.parquet"
    rc, o, err = run(["trace", "import", "--format", "sglang-expert-distribution", *map(str, srcs),
                      "--model", "dsv3", "-o", str(out)], capsys)
    assert rc == 0, err
    assert "no cache replay" in o
    lt = read_load_table(out)
    want = (a.sum(0) + b.sum(0)).numpy()
    np.testing.assert_array_equal(lt.counts, want)
    np.testing.assert_array_equal(load_table(out), want.astype(float))  # what placement consumes
    rc, o, err = run(["trace", "stats", str(out)], capsys)
    assert rc == 0 and "load table: dsv3, 4 layers x 8 experts" in o and "gini" in o, err
    rc, o, err = run(["trace", "stats", str(out), "--json"], capsys)
    assert rc == 0 and '"kind": "load"' in o
    rc, o, err = run(["trace", "validate", str(out)], capsys)
    assert rc == 0 and "valid load table" in o
    with pytest.raises(TraceFormatError, match="holds a 'load' table, expected a routing trace"):
        read_trace(out)


def test_load_table_of_a_routing_trace(tmp_path, capsys):
    out = tmp_path / "s.parquet"
    assert moesim(["trace", "synth", "--kind", "uniform", "--params", "mixtral-8x7b", "--requests", "2",
                   "--tokens-per-request", "5", "-o", str(out)]) == 0
    tr = read_trace(out)
    lt = load_table(out)
    assert lt.shape == (tr.num_layers, tr.num_experts)
    assert lt.sum() == tr.num_tokens * tr.num_layers * tr.top_k


def _bad(kind, tmp_path):
    p = tmp_path / "expert_distribution_recorder_1.pt"
    if kind == "not a torch file":
        p.write_text("hello")
    elif kind == "not a dict":
        torch.save(counts(), p)
    elif kind == "no logical_count":
        torch.save({"rank": 0}, p)
    elif kind == "per-token mode dump":
        torch.save({"records": [], "last_physical_to_logical_map": torch.zeros(2, 2)}, p)
    elif kind == "float counts":
        dump(p, counts().float())
    elif kind == "wrong rank tensor":
        dump(p, torch.zeros(5, dtype=torch.int32))
    elif kind == "negative count":
        c = counts()
        c[1, 2, 3] = -4
        dump(p, c)
    elif kind == "all zero":
        dump(p, torch.zeros(2, L, E, dtype=torch.int32))
    elif kind == "pickled object":
        import pickle

        p.write_bytes(pickle.dumps({"logical_count": object()}, protocol=2))
    elif kind == "shapes differ between files":
        dump(p, counts())
        q = dump(tmp_path / "expert_distribution_recorder_2.pt", torch.ones(1, L, E + 1, dtype=torch.int32))
        return [str(p), str(q)]
    elif kind == "empty file":
        p.write_bytes(b"")
    return [str(p)]


BAD = ["not a torch file", "not a dict", "no logical_count", "per-token mode dump", "float counts",
       "wrong rank tensor", "negative count", "all zero", "pickled object", "shapes differ between files",
       "empty file"]


@pytest.mark.parametrize("kind", BAD)
def test_sglang_malformed_input_fails_cleanly(kind, tmp_path, capsys):
    srcs = _bad(kind, tmp_path)
    out = tmp_path / "out.parquet"
    rc, _, err = run(["trace", "import", "--format", "sglang-expert-distribution", *srcs, "-o", str(out)],
                     capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("moesim: error: "), (kind, err)
    assert not out.exists()
