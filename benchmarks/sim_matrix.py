"""Run the simulator over a fixed matrix of small scenarios and write each ``metrics.json``.

A regression net for refactors: run it before and after a change and compare the directories
byte for byte (``diff -r BEFORE AFTER``). Every cache policy the simulator runs, prefetch
policies, expert parallelism with replicated experts, a fault, schedulers and a recorded Chrome
trace are covered; each scenario is a few seconds.

    python benchmarks/sim_matrix.py OUT_DIR [--only SUBSTRING] [--compile-after N]

``--compile-after 1`` walks every iteration with the compiled kernels (sim/serving/compiled_walk.py;
by default a run imports them after sim.serving.walk.COMPILE_AFTER iterations, which these small
scenarios rarely reach): the directory must be byte-identical to a run without the option.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SCENARIOS: dict[str, list[str]] = {}
_DEMO = ["model=deepseek-v2-lite", "hardware=a100-40gb", "cluster=1x1", "workload.num_requests=40",
         "workload.rate_rps=4", "workload.prompt_tokens_mean=256", "workload.output_tokens_mean=32",
         "trace.pool_size=8", "trace.pool_tokens=512", "cluster.expert_budget_fraction=0.5"]
for _c in ("lru", "lfu", "fifo", "lifo", "priority", "keep_predicted"):
    SCENARIOS[f"ds_{_c}"] = [*_DEMO, f"policy.cache={_c}"]
SCENARIOS["ds_lru_frac0.3"] = [*_DEMO, "policy.cache=lru", "cluster.expert_budget_fraction=0.3"]
SCENARIOS["ds_full"] = [*_DEMO, "cluster.expert_budget_fraction=1.0"]
for _p in ("emoe_l", "emoe_a", "similarity", "emoe_task"):
    SCENARIOS[f"ds_lru_{_p}"] = [*_DEMO, "policy.cache=lru", f"policy.prefetch={_p}"]
SCENARIOS["ds_keep_predicted_emoe_a"] = [*_DEMO, "policy.cache=keep_predicted", "policy.prefetch=emoe_a"]
SCENARIOS["ds_lru_chrome"] = [*_DEMO, "policy.cache=lru", "output.chrome_trace=t.json",
                              "output.chrome_trace_end_s=2.0"]
_MIX = ["model=mixtral-8x7b", "cluster=1x8", "workload.num_requests=60", "workload.rate_rps=8",
        "trace.pool_size=8", "trace.pool_tokens=512", "cluster.expert_budget_fraction=0.5"]
for _c in ("lru", "lifo", "lfu", "priority", "keep_predicted"):
    SCENARIOS[f"mix_ep8_{_c}"] = [*_MIX, f"policy.cache={_c}"]
SCENARIOS["mix_ep8_eplb"] = [*_MIX, "policy.placement=eplb", "policy.cache=lru"]
SCENARIOS["mix_ep8_emoe_l"] = [*_MIX, "policy.prefetch=emoe_l", "policy.cache=lru"]
SCENARIOS["mix_fault"] = [*_MIX, "experiment=fault_demo", "workload.num_requests=80",
                          "cluster.expert_budget_fraction=0.5"]
for _s in ("spf", "emoe"):
    SCENARIOS[f"mix_sched_{_s}"] = [*_MIX, f"policy.scheduler={_s}", "serving.max_batch_requests=8"]
SCENARIOS["mix_least_loaded"] = [*_MIX, "cluster=1x8-ep1", "serving.router=least_loaded",
                                 "policy.cache=lru"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", default="")
    ap.add_argument("--compile-after", type=int, default=0,
                    help="iterations before the walk's compiled kernels (0: the default)")
    args = ap.parse_args()
    if args.compile_after > 0:
        import sim.serving.walk

        sim.serving.walk.COMPILE_AFTER = args.compile_after
    from hydra import compose, initialize_config_module

    from sim.engine.metrics import metrics_json
    from sim.engine.run import simulate
    from sim.world.config import register_configs, to_sim_config

    register_configs()
    args.out.mkdir(parents=True, exist_ok=True)
    with initialize_config_module(config_module="conf", version_base="1.3"):
        for name, overrides in SCENARIOS.items():
            if args.only not in name:
                continue
            cfg = to_sim_config(compose("sim", overrides=overrides))
            cfg.output.progress = "off"
            t0 = time.perf_counter()
            recorder = None
            if cfg.output.chrome_trace:
                from sim.engine.simulation import Recorder

                recorder = Recorder(cfg.output.chrome_trace_start_s, cfg.output.chrome_trace_end_s)
            _, metrics = simulate(cfg, recorder=recorder)
            (args.out / f"{name}.json").write_bytes(metrics_json(metrics))
            print(f"{name}: {time.perf_counter() - t0:.2f} s, hit rate {metrics['hit_rate']:.4f}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
