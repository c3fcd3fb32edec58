"""The fitted routing generator (traces.synth): sampling invariants, determinism, the parameter
file checks, and a fit/calibration round trip on a small trace (no shared data needed)."""

from __future__ import annotations

import copy
import json
from importlib import resources

import numpy as np
import pytest

import traces.synth as synth
import traces.synth_fit as synth_fit
import traces.synth_params as synth_params
import traces.synth_sample as synth_sample
from sim.common.errors import MoesimError
from traces.stats import cross_layer_stats, popularity_counts


@pytest.fixture(scope="module")
def mixtral_dict():
    return json.loads(resources.files("traces.params").joinpath("mixtral-8x7b.json").read_text())


def _check_routing(tr, L, E, K, lens):
    ex = tr.experts
    assert ex.shape == (int(np.sum(lens)), L, K) and ex.dtype == np.int16
    assert ex.min() >= 0 and ex.max() < E
    s = np.sort(ex, axis=2)
    assert (np.diff(s, axis=2) > 0).all(), "experts of one token at one layer must be distinct"
    assert np.array_equal(np.diff(tr.request_bounds()), lens)


@pytest.mark.parametrize("name", ["deepseek-v2-lite", "mixtral-8x7b"])
def test_shipped_params_sample_valid_and_deterministic(name):
    p = synth_params.fitted_params(name)
    lens = np.array([1, 7, 30, 2])
    a = synth.sample_trace(p, 4, lens, np.random.default_rng(5))
    b = synth.sample_trace(p, 4, lens, np.random.default_rng(5))
    c = synth.sample_trace(p, 4, lens, np.random.default_rng(6))
    _check_routing(a, p.num_layers, p.num_experts, p.top_k, lens)
    a.validate()
    assert np.array_equal(a.experts, b.experts) and a.tokens.equals(b.tokens)
    assert not np.array_equal(a.experts, c.experts)
    src = p.source
    assert "/tmp" not in src["command"] and "/work" not in src["command"]
    for t in p.raw["tasks"].values():
        assert set(t["calibration"]["target"]) >= {"predict_precision", "reuse_median", "overlap", "gini"}


def test_chunking_keeps_requests_whole(monkeypatch):
    p = synth_params.fitted_params("mixtral-8x7b")
    monkeypatch.setattr(synth_sample, "CHUNK_TOKENS", 50)
    lens = np.array([120, 3, 40, 40, 1, 77])
    tr = synth.sample_trace(p, len(lens), lens, np.random.default_rng(0), task="humaneval")
    _check_routing(tr, p.num_layers, p.num_experts, p.top_k, lens)
    assert set(tr.request_tasks()) == {"humaneval"}


def test_cross_layer_term_raises_predictability(mixtral_dict):
    d = copy.deepcopy(mixtral_dict)
    sharp = synth_params.params_from_dict(d)
    for t in d["tasks"].values():
        t["beta"] = 0.0
    flat = synth_params.params_from_dict(d)
    x = [cross_layer_stats(synth.sample_trace(p, 20, 100, np.random.default_rng(1), task="gsm8k"))
         ["predict_precision_mean"] for p in (flat, sharp)]
    assert x[1] > x[0] + 0.1, x


def test_bad_parameter_files_are_rejected(mixtral_dict, tmp_path):
    d = copy.deepcopy(mixtral_dict)
    d["version"] = 1
    with pytest.raises(MoesimError, match="version 1"):
        synth_params.params_from_dict(d)
    d = copy.deepcopy(mixtral_dict)
    next(iter(d["tasks"].values()))["transition_counts"] = [[[1.0]]]
    with pytest.raises(MoesimError, match="transition_counts"):
        synth_params.params_from_dict(d, where="x.json")
    d = copy.deepcopy(mixtral_dict)
    next(iter(d["tasks"].values()))["rho"] = 1.0
    with pytest.raises(MoesimError, match="rho"):
        synth_params.params_from_dict(d)
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(MoesimError, match="not valid JSON"):
        synth_params.load_params(bad)
    with pytest.raises(MoesimError, match="no shipped synth parameters"):
        synth_params.fitted_params("nope")
    with pytest.raises(MoesimError, match="task 'nope'"):
        synth.sample_trace(synth_params.params_from_dict(mixtral_dict), 2, 5, np.random.default_rng(0),
                           task="nope")


@pytest.mark.slow
def test_fit_calibrates_to_its_source():
    """Fit to a trace drawn from the shipped Mixtral model; the calibration's achieved statistics
    must be near the targets, the counts exact, and the fitted model must load and sample."""
    truth = synth_params.fitted_params("mixtral-8x7b")
    src = synth.sample_trace(truth, 12, np.arange(12) * 10 + 40, np.random.default_rng(3), task="humaneval")
    d = synth_fit.fit_params(src, seed=0, command="moesim trace fit /abs/path/SRC.parquet -o out.json",
                         calib_tokens=3000, max_evals=10)
    assert d["source"]["command"] == "moesim trace fit SRC.parquet -o out.json"
    t = d["tasks"]["humaneval"]
    assert np.array_equal(np.asarray(t["popularity_counts"]), popularity_counts(src))
    assert np.asarray(t["transition_counts"]).sum() == src.num_tokens * (src.num_layers - 1) * src.top_k ** 2
    cal = t["calibration"]
    for k in ("predict_precision", "overlap", "gini"):
        assert abs(cal["achieved"][k] / cal["target"][k] - 1) <= 0.1, (k, cal)
    assert abs(cal["achieved"]["reuse_median"] - cal["target"]["reuse_median"]) <= 0.5, cal
    p = synth_params.params_from_dict(json.loads(json.dumps(d)))
    _check_routing(synth.sample_trace(p, 3, 20, np.random.default_rng(0)), src.num_layers,
                   src.num_experts, src.top_k, np.full(3, 20))


@pytest.mark.parametrize("k", [1, 2, 8, 15, 16])
def test_topk_desc_is_argsort_including_ties(k):
    """The sampler's top-k (sort of the values, argsort only for rows with ties) picks exactly
    what ``argsort(s)[:, :-k-1:-1]`` picks, ties at the boundary and inside the top k included."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal((400, 16)).astype(np.float32)
    s[::3] = np.round(s[::3] * 2) / 2  # many ties
    s[5] = 1.0  # a constant row
    s[7, :4] = np.nan
    want = np.argsort(s, axis=1)[:, : -k - 1: -1]
    assert np.array_equal(synth_sample._topk_desc(s, k), want)


def test_blocked_sampling_equals_whole_chunk(monkeypatch):
    """Scoring BLOCK_ROWS tokens at a time gives the experts of scoring the chunk at once."""
    p = synth_params.fitted_params("mixtral-8x7b")
    tm = next(iter(p.tasks.values()))
    lens = np.array([37, 1, 90, 12])
    ref = synth_sample.sample_chunk(tm, tm.bias(), lens, p.top_k, np.random.default_rng(5))
    monkeypatch.setattr(synth_sample, "BLOCK_ROWS", 7)
    got = synth_sample.sample_chunk(tm, tm.bias(), lens, p.top_k, np.random.default_rng(5))
    assert np.array_equal(ref, got) and ref.shape == (140, p.num_layers, p.top_k)
