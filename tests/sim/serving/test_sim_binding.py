"""Binding: requests take routing of their task; overflow is explicit and reported."""

from __future__ import annotations

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.serving.binding import RoutingPool, bind, build_pool
from sim.serving.testing import tiny_model, workload
from sim.world.config import TraceConfig
from traces.format import RoutingTrace, TraceMeta, make_tokens, write_trace


def _trace():
    # two requests: "a" (task code, 3 tokens) and "b" (task math, 2 tokens); 2 layers, top-1
    ex = np.array([[[0], [1]], [[1], [2]], [[2], [3]], [[3], [0]], [[0], [0]]], dtype=np.int16)
    tok = make_tokens(["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1], "prefill",
                      ["code", "code", "code", "math", "math"])
    return RoutingTrace(ex, None, tok, TraceMeta("tiny", 2, 4, 1))


def test_bind_by_task_with_fallback_and_overflow_report():
    pool = RoutingPool.from_trace(_trace())
    wl = workload([0.0, 0.1, 0.2], [2, 1, 4], [1, 1, 3])
    wl["task"] = ["math", "code", "chat"]
    b = bind(pool, wl, "wrap", np.random.default_rng(0))
    assert b.offset[0] == 3 and b.length[0] == 2  # math -> b
    assert b.offset[1] == 0 and b.length[1] == 3  # code -> a
    rep = b.report
    assert rep["task_fallback_requests"] == 1  # chat has no recorded request
    # request 2 needs 4 + 3 - 1 = 6 routed tokens: past either trace
    assert rep["requests_longer_than_trace"] == 1
    assert rep["tokens_past_trace"] == 6 - int(b.length[2])
    with pytest.raises(ConfigError, match=r"request '2' \(row 2\) needs 6 tokens"):
        bind(pool, wl, "error", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="overflow"):
        bind(pool, wl, "truncate", np.random.default_rng(0))


def test_build_pool_from_a_trace_file_checks_the_model(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(_trace(), path)
    pool = build_pool(tiny_model(2, 4, 1), TraceConfig(path=str(path)), ["code"], np.random.default_rng(0))
    assert pool.experts.shape == (5, 2, 1) and pool.tasks == ["code", "math"]
    with pytest.raises(ConfigError, match="routing has 2 MoE layers"):
        build_pool(tiny_model(3, 4, 1), TraceConfig(path=str(path)), ["code"], np.random.default_rng(0))
    with pytest.raises(ConfigError, match="expert id 3"):
        build_pool(tiny_model(2, 3, 1), TraceConfig(path=str(path)), ["code"], np.random.default_rng(0))


def test_generated_pool_is_deterministic_under_the_seed():
    pytest.importorskip("traces.synth")
    from traces.synth_params import fitted_params

    fitted_params("deepseek-v2-lite")  # shipped in the wheel: failing to load them is a failure
    from sim.world.config import ModelConfig

    m = ModelConfig(name="deepseek-v2-lite", num_layers=26, num_experts=64, top_k=6)
    tc = TraceConfig(pool_size=2, pool_tokens=32)
    a = build_pool(m, tc, ["unknown"], np.random.default_rng(5))
    b = build_pool(m, tc, ["unknown"], np.random.default_rng(5))
    assert np.array_equal(a.experts, b.experts) and a.experts.shape == (64, 26, 6)
