"""The 1,024-GPU cluster preset (conf/experiment/bench_cluster_1024.yaml): what it covers."""

from __future__ import annotations

from hydra import compose, initialize_config_module

from sim.serving.plan import check_config
from sim.world.config import register_configs, to_sim_config


def test_bench_cluster_1024_preset():
    register_configs()
    with initialize_config_module("conf", version_base="1.3"):
        cfg = to_sim_config(compose("sim", overrides=["experiment=bench_cluster_1024",
                                                      "workload.path=[a.csv,b.csv]"]))
    assert cfg.model.name == "deepseek-v3" and cfg.hardware.name == "h100-sxm"
    c = cfg.cluster
    assert (c.nodes, c.gpus_per_node, c.expert_parallel) == (128, 8, 64)
    topo = check_config(cfg)  # the plan accepts it (memory, EP across eight nodes)
    assert topo.num_replicas == 16 and topo.expert_parallel == 64
    assert c.expert_budget_fraction == 0.5
    assert cfg.workload.path == ["a.csv", "b.csv"]
    assert cfg.workload.time_scale == 0.0625  # 16x the arrival rate
    assert cfg.policy.placement == "split" and cfg.policy.placement_args == {"num_redundant": 64}
