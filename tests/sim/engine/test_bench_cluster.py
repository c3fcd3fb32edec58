"""The cluster preset (conf/experiment/bench_cluster.yaml): what it covers, and that it runs."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_module

from sim.app.cli import main as cli_main
from sim.serving.plan import check_config
from sim.world.config import SimConfig, register_configs, to_sim_config
from tests.conftest import shared_path


def _compose(overrides):
    register_configs()
    with initialize_config_module("conf", version_base="1.3"):
        return to_sim_config(compose("sim", overrides=overrides))


def test_bench_cluster_preset():
    cfg = _compose(["experiment=bench_cluster", "workload.path=[a.csv,b.csv]"])
    assert isinstance(cfg, SimConfig)
    assert cfg.model.name == "deepseek-v3" and cfg.hardware.name == "h100-sxm"
    c = cfg.cluster
    assert (c.nodes, c.gpus_per_node, c.expert_parallel) == (8, 8, 16)
    assert c.nodes * c.gpus_per_node // c.expert_parallel == 4  # replicas
    assert c.expert_budget_fraction == 0.5
    assert cfg.workload.path == ["a.csv", "b.csv"]
    assert cfg.workload.time_scale == 0.125  # 8x the arrival rate
    assert cfg.trace.name == "synthetic" and cfg.trace.generator == ""  # the model's own parameters
    check_config(cfg)  # the plan accepts it (memory, EP across two nodes)


def test_bench_cluster_runs_on_the_merged_azure_traces(tmp_path):
    conv = shared_path("requests", "azure-llm-2023", "AzureLLMInferenceTrace_conv.csv")
    code = shared_path("requests", "azure-llm-2023", "AzureLLMInferenceTrace_code.csv")
    assert cli_main(["sim", "experiment=bench_cluster", f"workload.path=[{conv},{code}]",
                     "workload.max_requests=40", "trace.pool_size=4", "trace.pool_tokens=512",
                     "output.progress=off", "output.print_summary=false",
                     f"hydra.run.dir={tmp_path}"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["requests_completed"] == 40
