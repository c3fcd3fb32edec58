"""The serving engine's per-iteration overhead (conf/engine): added once per iteration on top of
the hardware's, never per layer; every engine YAML composes and cites its source; a negative
overhead is a one-line error; the default engine changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sim.common.errors import ConfigError
from sim.cost import AnalyticCost, make_cost_model
from sim.world.config import ClusterConfig, EngineConfig, HardwareConfig, ModelConfig

MIX = ModelConfig()
H100 = HardwareConfig()
ENGINES = sorted((Path(__file__).resolve().parents[3] / "conf" / "engine").glob("*.yaml"))


def test_engine_overhead_is_paid_once_per_iteration():
    base = AnalyticCost(MIX, H100)
    eng = make_cost_model("analytic", MIX, H100, engine=EngineConfig("x", 4e-3))
    args = (0, 8, 8 * 1000, 8 * 1000, 8)  # 8 decode tokens at context 1000
    assert eng.iteration_s(*args) - base.iteration_s(*args) == pytest.approx(4e-3, rel=1e-9)
    # per-layer costs are untouched
    assert eng.attention_s(0, 8, 8000, 1, kv_tokens=8000) == base.attention_s(0, 8, 8000, 1, kv_tokens=8000)
    assert eng.iteration_s(0, 0, 0, 0, 0) == 0.0  # an empty iteration costs nothing


def test_engine_adds_to_the_hardware_overhead():
    hw = HardwareConfig(iteration_overhead_s=1e-3)
    c = make_cost_model("analytic", MIX, hw, cluster=ClusterConfig(expert_parallel=1),
                        engine=EngineConfig("x", 2e-3))
    assert c.iteration_overhead_s == pytest.approx(3e-3)


def test_default_engine_is_no_overhead():
    assert make_cost_model("analytic", MIX, H100).iteration_overhead_s == 0.0
    assert EngineConfig().iteration_overhead_s == 0.0


def test_negative_engine_overhead_is_an_error():
    with pytest.raises(ConfigError, match="engine.iteration_overhead_s"):
        make_cost_model("analytic", MIX, H100, engine=EngineConfig("bad", -1.0))


@pytest.mark.parametrize("path", ENGINES, ids=lambda p: p.stem)
def test_engine_yaml_matches_schema_and_cites(path):
    d = yaml.safe_load(path.read_text())
    assert set(d) == {"name", "iteration_overhead_s", "layer_overhead_s", "source"}
    assert d["name"] == path.stem
    e = EngineConfig(**d)
    assert e.iteration_overhead_s >= 0 and e.layer_overhead_s >= 0
    # a non-zero constant names where it comes from (an issue, or a published page)
    if e.iteration_overhead_s > 0 or e.layer_overhead_s > 0:
        assert e.source and ("#" in e.source or "pytorch.org/blog" in e.source)


def test_engine_composes_from_the_sim_app():
    from hydra import compose, initialize_config_module

    from sim.world.config import register_configs, to_sim_config

    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        assert to_sim_config(compose("sim")).engine.name == "none"
        cfg = to_sim_config(compose("sim", overrides=["engine=vllm-v0"]))
    assert cfg.engine.iteration_overhead_s == pytest.approx(4e-3)
