"""``moesim sim [key=value ...] [-m]``: one simulation (or a Hydra sweep).

Writes into the run directory (``hydra.run.dir``): ``metrics.json`` (simulated quantities only:
same seed, same bytes), ``requests.parquet`` (one row per request), ``run_info.json`` (wall time,
simulated seconds per wall second, versions) and, with ``output.chrome_trace=FILE``, a
Chrome/Perfetto trace of the window ``[output.chrome_trace_start_s, output.chrome_trace_end_s)``.
Prints a summary table and simulated seconds per wall second. ``seed=N`` and
``workload.max_requests=N`` are accepted by every run.

Examples::

    moesim sim                                             # Mixtral-8x7B, 8 H100s, EP 8, 200 requests
    moesim sim model=deepseek-v2-lite cluster=1x1 hardware=a100-40gb cluster.expert_budget_fraction=0.25
    moesim sim -m policy.cache=lru,lifo,lfu cluster.expert_budget_fraction=0.25,0.5
    moesim sim experiment=fault_demo                       # a GPU fails at 20 s, back 30 s later
    moesim sim experiment=bench_azure_mixtral workload.path=AzureLLMInferenceTrace_conv.csv
    moesim sim 'workload.path=[AzureLLMInferenceTrace_conv.csv,AzureLLMInferenceTrace_code.csv]'
    moesim sim trace=file trace.path=ROUTING.parquet output.chrome_trace=timeline.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sim.common.files import gc_paused
from sim.engine.run import _progress_enabled, simulate, write_outputs
from sim.world.config import to_sim_config


def task(cfg_node: Any) -> dict[str, Any]:
    with gc_paused():  # modules and the config: long-lived objects, no garbage to collect
        from sim.app.hydra_app import run_dir
        from sim.engine.chrome_trace import write_chrome_trace
        from sim.engine.metrics import format_summary
        from sim.engine.simulation import Recorder

        cfg = to_sim_config(cfg_node)
        _check_files(cfg)
    out_dir = Path(run_dir())
    o = cfg.output
    rec = Recorder(o.chrome_trace_start_s, o.chrome_trace_end_s) if o.chrome_trace else None
    t0 = time.perf_counter()
    sim, metrics = simulate(cfg, recorder=rec, progress=_progress_enabled(o.progress))
    wall = time.perf_counter() - t0
    write_outputs(out_dir, sim, metrics, wall, cfg)
    if rec is not None:
        path = Path(o.chrome_trace)
        write_chrome_trace(rec.events, path if path.is_absolute() else out_dir / path)
    if o.print_summary:
        print(format_summary(metrics))
        wrapped = int((metrics.get("binding") or {}).get("tokens_past_trace", 0) or 0)
        if wrapped:
            print(f"note: {wrapped} tokens ran past their routing trace and replayed it from its "
                  f"start (trace.overflow=wrap; trace.overflow=error refuses such a workload)")
        print(f"wall {wall:.2f} s, simulated {metrics['sim_time_s']:.1f} s, "
              f"{metrics['sim_time_s'] / wall:.0f} simulated s per wall s; outputs in {out_dir}")
    return metrics


def _check_files(cfg: Any) -> None:
    """The input files the config names exist, each error saying what the file should be
    (before the workload and the routing pool are built)."""
    from sim.common.files import require_file
    from sim.world.config import workload_paths

    paths = workload_paths(cfg.workload.path)
    for i, p in enumerate(paths):
        require_file(p, "workload.path" if len(paths) == 1 and isinstance(cfg.workload.path, str)
                     else f"workload.path[{i}]",
                     what="a request trace: workload Parquet, Azure CSV or Mooncake JSONL")
    if cfg.trace.path:
        require_file(cfg.trace.path, "trace.path")


def main(argv: list[str]) -> int:
    with gc_paused():  # Hydra's modules: long-lived objects, no garbage to collect
        from sim.app.hydra_app import run_hydra

    return run_hydra("sim", task, argv, prog="moesim sim")  # (it registers sim_schema)
