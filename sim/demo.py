"""``moesim demo``: the embedded default, a short end-to-end simulation with no downloads.

DeepSeek-V2-Lite on one A100-40GB; routing sampled from the generator fitted to the model's real
routing trace (parameters shipped in ``traces/params``); a synthetic Poisson workload. Each cache
policy in ``demo_policies`` runs with ``cluster.expert_budget_fraction`` of the experts on the GPU
and is compared with the full-memory baseline (every expert resident) on the same requests and
the same routing. A Hydra app (``conf/demo.yaml``): ``moesim demo hydra.run.dir=DIR``,
``demo_policies=[lru,lfu]``, ``cluster.expert_budget_fraction=0.5`` ... Writes one
``metrics.json`` per run under ``DIR/<run>/`` and ``DIR/summary.md``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.config import to_sim_config
from sim.metrics import format_table

COLUMNS = ["run", "budget", "hit rate", "H2D GB", "stall s", "TTFT p50 s", "TPOT p50 ms",
           "E2E p90 s", "tok/s", "SLO %", "peak expert GB"]


def _row(name: str, m: dict[str, Any]) -> list[str]:
    budget = max(m["expert_budget_bytes_per_gpu"]) / m["expert_bytes"]
    return [name, f"{budget:.0f} experts", f"{m['hit_rate'] * 100:.1f} %", f"{m['h2d_bytes'] / 1e9:.1f}",
            f"{m['fetch_stall_s']:.2f}", f"{m['ttft_s']['p50']:.3f}", f"{m['tpot_s']['p50'] * 1e3:.1f}",
            f"{m['e2e_s']['p90']:.2f}", f"{m['tokens_per_s']:.0f}", f"{m['slo_attainment'] * 100:.0f}",
            f"{max(m['peak_expert_bytes_per_gpu']) / 1e9:.2f}"]


def task(cfg_node: Any) -> dict[str, Any]:
    from sim.binding import build_pool
    from sim.files import atomic_write_bytes
    from sim.hydra_app import run_dir
    from sim.run import load_workload_table, simulate, write_outputs

    cfg = to_sim_config(cfg_node)
    out = Path(run_dir())
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    workload = load_workload_table(cfg.workload, np.random.default_rng(seeds[0]))
    tasks = sorted(set(workload["task"].astype(str).tolist()))
    pool = build_pool(cfg.model, cfg.trace, tasks, np.random.default_rng(seeds[1]))
    runs = [("full-memory", dataclasses.replace(
        cfg, cluster=dataclasses.replace(cfg.cluster, expert_budget_fraction=1.0, expert_budget_bytes=0)))]
    for name in cfg.demo_policies:
        runs.append((name, dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, cache=name))))
    rows, results = [], {}
    t_all = time.perf_counter()
    for name, run_cfg in runs:
        t0 = time.perf_counter()
        sim, metrics = simulate(run_cfg, workload=workload, pool=pool)
        write_outputs(out / name, sim, metrics, time.perf_counter() - t0, run_cfg)
        rows.append(_row(name, metrics))
        results[name] = metrics
    m = cfg.model
    head = (f"moesim demo: {m.name} ({m.num_layers} MoE layers x {m.num_experts} experts, top-{m.top_k}) "
            f"on one {cfg.hardware.name}, {len(workload)} requests at {cfg.workload.rate_rps:g}/s, routing "
            f"from {pool.source}")
    table = format_table(COLUMNS, rows)
    text = f"{head}\n\n{table}\n\n(wall {time.perf_counter() - t_all:.1f} s; outputs in {out})"
    print(text)
    atomic_write_bytes((text + "\n").encode(), out / "summary.md")
    return results


def main(argv: list[str]) -> int:
    from sim.hydra_app import run_hydra

    return run_hydra("demo", task, argv, prog="moesim demo")  # registers demo_schema
