"""Generator parameters derived for the models with no real trace (traces/synth_derive.py): the
mapping keeps the shape rules, and a trace sampled from each shipped derived file keeps the
source's popularity skew (mean Gini) and cross-layer concentration (predict precision)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from sim.common.errors import MoesimError
from sim.world.facts import model_named
from traces.format import expert_counts
from traces.stats import cross_layer_stats, gini
from traces.synth import sample_trace
from traces.synth_derive import (
    NEAREST,
    calibration_lengths,
    derive_params,
    expert_maps,
    layer_maps,
)
from traces.synth_expand import derived_counts
from traces.synth_params import fitted_params, load_params

#: fresh samples' statistics (mean of two) against the source's real ones (the derivation
#: calibrates to 2.5 % on its own samples; samples of other seeds add their chance error)
TOL = 0.05


def test_layer_maps_stretch_and_stay_in_range():
    pop, tr = layer_maps(26, 58)
    assert len(pop) == 58 and len(tr) == 57
    assert tr[0] == 0 and tr[-1] == 24 and pop[0] == 0 and pop[-1] == 25
    assert np.all(np.diff(tr) >= 0) and np.all(np.diff(tr) <= 1)
    assert pop[1:] == [t + 1 for t in tr]
    assert layer_maps(32, 32) == (list(range(32)), list(range(31)))  # same depth: identity
    with pytest.raises(MoesimError, match="needs a source with >= 2 layers"):
        layer_maps(1, 4)


def test_expert_maps_split_each_source_expert_into_m_channels():
    parent, channel = expert_maps(64, 256, 3, np.random.default_rng(0))
    for l in range(3):
        assert np.array_equal(np.bincount(parent[l], minlength=64), np.full(64, 4))
        pairs = set(zip(parent[l].tolist(), channel[l].tolist()))
        assert len(pairs) == 256 and {c for _, c in pairs} == {0, 1, 2, 3}
    assert not np.array_equal(parent[0], parent[1])  # labels shuffled per layer
    with pytest.raises(MoesimError, match="not a whole multiple"):
        expert_maps(64, 160, 2, np.random.default_rng(0))


def test_derived_counts_keep_gini_and_the_source_transitions():
    rng = np.random.default_rng(1)
    pc_s = rng.integers(1, 100, size=(4, 8)).astype(np.float64)
    tc_s = rng.integers(0, 50, size=(3, 8, 8)).astype(np.float64)
    pop, tr = layer_maps(4, 7)
    parent, channel = expert_maps(8, 24, 7, rng)
    for eps in (0.0, 0.3, 1.0):
        der = {"parent": parent.tolist(), "channel": channel.tolist(), "layer_pop_src": pop,
               "layer_trans_src": tr, "coherence_eps": eps}
        pc, tc = derived_counts(pc_s, tc_s, der)
        # a replicated share vector has exactly its source's Gini
        np.testing.assert_allclose(gini(pc), gini(pc_s[pop]), rtol=0, atol=1e-12)
        for l in range(6):  # summing the children back gives the source's transition counts
            back = np.zeros((8, 8))
            np.add.at(back, (parent[l][:, None], parent[l + 1][None, :]), tc[l])
            np.testing.assert_allclose(back, tc_s[tr[l]])
        if eps == 0.0:  # fully coherent: no count crosses channels
            assert (tc[0][channel[0][:, None] != channel[1][None, :]] == 0).all()


@pytest.mark.parametrize("name", sorted(NEAREST))
def test_shipped_derived_file_says_so_and_fits_the_model(name):
    p = fitted_params(name)
    m = model_named(name)
    assert (p.num_layers, p.num_experts, p.top_k) == (m.num_layers, m.num_experts, m.top_k)
    assert p.source["derived"] is True and p.source["derived_from"] == NEAREST[name]
    assert "DERIVED, not fitted" in p.source["note"]
    assert set(p.tasks) == set(fitted_params(NEAREST[name]).tasks)


@pytest.mark.parametrize("name, tokens", [("mixtral-8x22b", 6000), ("qwen3-30b-a3b", 12000),
                                          pytest.param("deepseek-v3", 12000, marks=pytest.mark.slow)])
def test_fresh_sample_keeps_the_source_statistics(name, tokens):
    p = fitted_params(name)
    src = fitted_params(NEAREST[name])
    for task in p.tasks:
        real = src.raw["tasks"][task]["calibration"]["target"]
        lens = calibration_lengths(p.raw["tasks"][task]["tokens_per_request"], tokens)
        g, prec = [], []
        for seed in (123, 124):  # two fresh samples (seeds the derivation did not use)
            tr = sample_trace(p, len(lens), lens, np.random.default_rng(seed), task=task)
            g.append(float(gini(expert_counts(tr.experts, p.num_experts).astype(np.float64)).mean()))
            prec.append(cross_layer_stats(tr)["predict_precision_mean"])
        g, prec = float(np.mean(g)), float(np.mean(prec))
        assert abs(g / real["gini"] - 1) < TOL, (task, g, real["gini"])
        assert abs(prec / real["predict_precision"] - 1) < TOL, (task, prec, real["predict_precision"])


def test_derivation_is_a_function_of_its_inputs():
    """The shipped file is what the command writes (dates and the command line aside)."""
    shipped = json.loads(resources.files("traces.params").joinpath("mixtral-8x22b.json").read_text())
    again = json.loads(json.dumps(derive_params("mixtral-8x22b", seed=shipped["derivation"]["seed"])))
    assert again["derivation"] == shipped["derivation"]
    assert again["tasks"] == shipped["tasks"]


def test_bad_derived_file_is_rejected(tmp_path):
    d = json.loads(resources.files("traces.params").joinpath("mixtral-8x22b.json").read_text())
    d["derivation"]["parent"] = d["derivation"]["parent"][:-1]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(MoesimError, match="derivation maps do not fit 56 layers x 8 experts"):
        load_params(f)
    d["derivation"]["from"] = "qwen3-30b-a3b"
    d["derivation"].pop("parent")
    f.write_text(json.dumps(d))
    with pytest.raises(MoesimError, match="derivation must be an object with keys"):
        load_params(f)
    with pytest.raises(MoesimError, match="no nearest traced model"):
        derive_params("deepseek-v2-lite")
