"""Importers, stats and the fitted generator on the real traces in ../shared/data (skip when absent)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sim.app.cli import main as moesim
from tests.conftest import shared_path
from traces.format import read_trace


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    d = shared_path("routing", "deepseek-v2-lite")
    files = sorted(d.glob("prompt_*_data.csv"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    out = tmp_path_factory.mktemp("ds") / "ds.parquet"
    assert moesim(["trace", "import", "--format", "moe-beyond-csv", *map(str, files), "-o", str(out)]) == 0
    return read_trace(out)


@pytest.mark.slow
def test_deepseek_import_shape_and_order(deepseek):
    from traces.stats import trace_stats

    s = trace_stats(deepseek, per_task=False)
    assert (s["num_requests"], s["num_tokens"], s["num_layers"], s["num_experts"], s["top_k"]) == \
        (999, 94165, 26, 64, 6)
    assert deepseek.request_ids()[:3] == ["1", "2", "3"]
    assert deepseek.meta.layer_ids == list(range(1, 27))


def test_mixtral_import_reports_missing(tmp_path, capsys):
    d = shared_path("routing", "mixtral-8x7b")
    files = sorted(map(str, d.glob("*_routing.jsonl")))
    out = tmp_path / "mx.parquet"
    rc = moesim(["trace", "import", "--format", "speculative-moe-jsonl", "--id-scope", "file", *files,
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0
    assert "missing (layer, token) records" in err and "tokens dropped" in err
    tr = read_trace(out)
    dropped = sum(int(x) for x in re.findall(r"(\d+) tokens dropped", err))
    assert dropped > 0 and tr.num_tokens == 83 + 83 + 255 + 168 + 79 - dropped
    rc = moesim(["trace", "import", "--format", "speculative-moe-jsonl", "--missing", "fail", *files,
                 "-o", str(tmp_path / "f.parquet")])
    assert rc == 2 and not (tmp_path / "f.parquet").exists()


@pytest.mark.slow
def test_generator_matches_deepseek_within_10_percent(deepseek):
    from traces.stats import cross_layer_stats, popularity_stats, reuse_stats
    from traces.synth import sample_trace
    from traces.synth_params import fitted_params

    lens = np.diff(deepseek.request_bounds())
    syn = sample_trace(fitted_params("deepseek-v2-lite"), len(lens), lens, np.random.default_rng(0))
    real_g, syn_g = popularity_stats(deepseek)["gini_mean"], popularity_stats(syn)["gini_mean"]
    assert abs(syn_g / real_g - 1) <= 0.10, (real_g, syn_g)
    real_r, syn_r = reuse_stats(deepseek)["median"], reuse_stats(syn)["median"]
    assert abs(syn_r / real_r - 1) <= 0.10, (real_r, syn_r)
    real_x = cross_layer_stats(deepseek)["predict_precision_mean"]
    syn_x = cross_layer_stats(syn)["predict_precision_mean"]
    assert abs(syn_x / real_x - 1) <= 0.10, (real_x, syn_x)
