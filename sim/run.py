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

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.config import SimConfig, WorkloadConfig, register_configs, to_sim_config, workload_paths
from sim.errors import ConfigError


def load_workload_table(w: WorkloadConfig, rng: np.random.Generator) -> pd.DataFrame:
    """The requests of a run: ``workload.path`` (via traces' importers) or synthetic Poisson."""
    from traces.workload import make_workload

    paths = workload_paths(w.path)
    if isinstance(w.path, (list, tuple)):  # a list, even of one: merged, ids "<i>:<id>"
        from traces.request_import import load_workloads

        df = load_workloads(paths)
    elif paths:
        from sim.files import require_file
        from traces.request_import import load_workload

        require_file(w.path, "workload.path")
        df = load_workload(w.path)
    else:
        n = w.num_requests
        if n < 1 or w.rate_rps <= 0:
            raise ConfigError("workload.num_requests must be >= 1 and workload.rate_rps > 0")
        gaps = rng.exponential(1.0 / w.rate_rps, size=n)  # (R,)
        arrival = np.cumsum(gaps) - gaps[0]
        prompt = np.maximum(1, rng.geometric(1.0 / max(w.prompt_tokens_mean, 1.0), size=n))
        output = np.maximum(1, rng.geometric(1.0 / max(w.output_tokens_mean, 1.0), size=n))
        df = make_workload(arrival, prompt, output, task=w.task)
    if w.max_requests < 0:
        raise ConfigError(f"workload.max_requests={w.max_requests}; expected N >= 1, or 0 for all")
    if w.max_requests > 0:
        df = df.iloc[: w.max_requests].reset_index(drop=True)
    return df


class _Progress:
    """Completed requests on stderr: a live tqdm bar on a terminal; elsewhere (a log file, a
    pipe, a batch job) one plain line at most every ``every_s`` seconds and at the end."""

    def __init__(self, total: int, enabled: bool, tty: bool | None = None, every_s: float = 30.0
                 ) -> None:
        self.bar = None
        self.total, self.done, self.every_s = total, 0, every_s
        self.t0 = self.last = time.perf_counter()
        self.lines = enabled and not (sys.stderr.isatty() if tty is None else tty)
        if enabled and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="req", desc="sim", file=sys.stderr, mininterval=0.5)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.last = time.perf_counter()
        print(f"sim: {self.done}/{self.total} requests done, {self.last - self.t0:.0f} s wall",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines:
            self._line()


def simulate(cfg: SimConfig, workload: pd.DataFrame | None = None, pool: Any = None,
             recorder: Any = None, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Build and run one simulation; returns (Simulation, metrics dict)."""
    from sim.binding import bind, build_pool
    from sim.cache_log import CacheLog
    from sim.cost import make_cost_model
    from sim.engine import Simulation
    from sim.metrics import compute_metrics
    from sim.plan import check_config

    check_config(cfg)  # fail before any work
    # independent streams so a change in one part does not shift the others
    rng_work, rng_pool, rng_bind, rng_sim = (np.random.default_rng(s) for s in
                                            np.random.SeedSequence(cfg.seed).spawn(4))
    if workload is None:
        workload = load_workload_table(cfg.workload, rng_work)
    elif cfg.workload.max_requests > 0:
        workload = workload.iloc[: cfg.workload.max_requests].reset_index(drop=True)
    if pool is None:
        tasks = sorted(set(workload["task"].astype(str).tolist()))
        pool = build_pool(cfg.model, cfg.trace, tasks, rng_pool)
    binding = bind(pool, workload, cfg.trace.overflow, rng_bind)
    cost = make_cost_model(cfg.serving.cost_model, cfg.model, cfg.hardware, cfg.serving.cost_table,
                           cfg.cluster, cfg.engine)
    bar = _Progress(len(workload), progress)
    try:
        log = CacheLog() if cfg.output.cache_log else None
        sim = Simulation(cfg, workload, pool, binding, cost, rng_sim, recorder=recorder, progress=bar,
                         cache_log=log)
        sim.run()
    finally:
        bar.close()
    return sim, compute_metrics(sim)


def _versions() -> dict[str, str]:
    import hydra
    import simpy

    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "simpy": simpy.__version__, "hydra": hydra.__version__}


def write_outputs(out_dir: Path, sim: Any, metrics: dict[str, Any], wall_s: float,
                  cfg: SimConfig) -> None:
    from sim.files import atomic_write_bytes, atomic_write_table
    from sim.metrics import metrics_json, request_table

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(metrics_json(metrics), out_dir / "metrics.json")
    if cfg.output.requests_parquet:
        import pyarrow as pa

        atomic_write_table(pa.Table.from_pandas(request_table(sim), preserve_index=False),
                            out_dir / "requests.parquet")
    if sim.log is not None:
        from sim.cache_log import write_cache_log

        write_cache_log(sim.log, out_dir / "cache_log.parquet")
    info = {"wall_time_s": wall_s,
            "sim_s_per_wall_s": metrics["sim_time_s"] / wall_s if wall_s > 0 else None,
            "argv": sys.argv, "cpu_count": os.cpu_count(), "versions": _versions()}
    atomic_write_bytes((json.dumps(info, indent=2) + "\n").encode(), out_dir / "run_info.json")


def _progress_enabled(mode: str) -> bool:
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"output.progress={mode!r}; expected auto, on or off")
    return mode != "off"  # "auto": a bar on a terminal, periodic lines elsewhere


def task(cfg_node: Any) -> dict[str, Any]:
    from sim.chrome_trace import write_chrome_trace
    from sim.engine import Recorder
    from sim.hydra_app import run_dir
    from sim.metrics import format_summary

    cfg = to_sim_config(cfg_node)
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
        print(f"wall {wall:.2f} s, simulated {metrics['sim_time_s']:.1f} s, "
              f"{metrics['sim_time_s'] / wall:.0f} simulated s per wall s; outputs in {out_dir}")
    return metrics


def main(argv: list[str]) -> int:
    from sim.hydra_app import run_hydra

    register_configs()
    return run_hydra("sim", task, argv, prog="moesim sim")
