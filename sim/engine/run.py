"""The simulator run: the workload table, :func:`simulate` and the run directory's files
(the command, ``moesim sim``, is :mod:`sim.app.sim_cmd`)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.common.errors import ConfigError
from sim.common.files import gc_paused
from sim.world.config import SimConfig, WorkloadConfig, workload_paths
from traces.workload import WorkloadColumns, make_columns
from traces.workload_cache import cached_workload

if TYPE_CHECKING:  # a run whose request trace is cached imports no pandas before its outputs
    import pandas as pd


def load_workload_table(w: WorkloadConfig, rng: np.random.Generator) -> pd.DataFrame:
    """The requests of a run: ``workload.path`` (via traces' importers) or synthetic Poisson."""
    from traces.workload import make_workload

    paths = workload_paths(w.path)
    if isinstance(w.path, (list, tuple)):  # a list, even of one: merged, ids "<i>:<id>"
        from traces.request_import import load_workloads

        df = load_workloads(paths)
    elif paths:
        from sim.common.files import require_file
        from traces.request_import import load_workload

        require_file(w.path, "workload.path")
        df = load_workload(w.path)
    else:
        df = make_workload(*_poisson(w, rng), task=w.task)
    _check_max_requests(w)
    if w.max_requests > 0:
        df = df.iloc[: w.max_requests].reset_index(drop=True)
    return df


def _poisson(w: WorkloadConfig, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic requests' (arrival, prompt, output): Poisson arrivals, geometric lengths."""
    n = w.num_requests
    if n < 1 or w.rate_rps <= 0:
        raise ConfigError("workload.num_requests must be >= 1 and workload.rate_rps > 0")
    gaps = rng.exponential(1.0 / w.rate_rps, size=n)  # (R,)
    arrival = np.cumsum(gaps) - gaps[0]
    prompt = np.maximum(1, rng.geometric(1.0 / max(w.prompt_tokens_mean, 1.0), size=n))
    output = np.maximum(1, rng.geometric(1.0 / max(w.output_tokens_mean, 1.0), size=n))
    return arrival, prompt, output


def _check_max_requests(w: WorkloadConfig) -> None:
    if w.max_requests < 0:
        raise ConfigError(f"workload.max_requests={w.max_requests}; expected N >= 1, or 0 for all")


def load_workload_columns(w: WorkloadConfig, rng: np.random.Generator) -> WorkloadColumns:
    """:func:`load_workload_table`'s requests as columns, without pandas where it can: a request
    trace (``workload.path``) read through the on-disk cache (:mod:`traces.workload_cache`: the
    same table, parsed once), the synthetic workload by :func:`traces.workload.make_columns`
    (the same values as ``make_workload``; its arrivals have no NaN)."""
    if workload_paths(w.path):
        cols = cached_workload(workload_paths(w.path), isinstance(w.path, (list, tuple)),
                               lambda: load_workload_table(replace(w, max_requests=0), rng),
                               sources=(__name__,))
    else:
        cols = make_columns(*_poisson(w, rng), task=w.task)
    _check_max_requests(w)
    return cols.head(w.max_requests) if w.max_requests > 0 else cols


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


def simulate(cfg: SimConfig, workload: pd.DataFrame | WorkloadColumns | None = None,
             pool: Any = None, recorder: Any = None, progress: bool = False
             ) -> tuple[Any, dict[str, Any]]:
    """Build and run one simulation; returns (Simulation, metrics dict). ``workload``: a
    workload table, or None for ``cfg.workload``'s."""
    bar = None
    try:
        with gc_paused():  # the world: modules, arrays, long-lived objects, next to no garbage
            from sim.cost import make_cost_model
            from sim.engine.simulation import Simulation
            from sim.serving.binding import bind, build_pool
            from sim.serving.cache_log import CacheLog
            from sim.serving.plan import check_config

            topo = check_config(cfg)  # fail before any work (the world takes the topology)
            # independent streams so a change in one part does not shift the others
            rng_work, rng_pool, rng_bind, rng_sim = (np.random.default_rng(s) for s in
                                                    np.random.SeedSequence(cfg.seed).spawn(4))
            if workload is None:
                workload = load_workload_columns(cfg.workload, rng_work)
            else:
                workload = WorkloadColumns.of(workload)
                if cfg.workload.max_requests > 0:
                    workload = workload.head(cfg.workload.max_requests)
            if pool is None:
                tasks = sorted(set(workload.task))
                pool = build_pool(cfg.model, cfg.trace, tasks, rng_pool)
            binding = bind(pool, workload, cfg.trace.overflow, rng_bind)
            cost = make_cost_model(cfg.serving.cost_model, cfg.model, cfg.hardware,
                                   cfg.serving.cost_table, cfg.cluster, cfg.engine, cfg.host,
                                   cfg.offload)
            bar = _Progress(len(workload), progress)
            log = CacheLog() if cfg.output.cache_log else None
            sim = Simulation(cfg, workload, pool, binding, cost, rng_sim, recorder=recorder,
                             progress=bar, cache_log=log, topo=topo)
        sim.run()
    finally:
        if bar is not None:
            bar.close()
    from sim.engine.metrics import compute_metrics

    return sim, compute_metrics(sim)


def _versions() -> dict[str, str]:
    import hydra
    import pandas as pd
    import simpy

    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "simpy": simpy.__version__, "hydra": hydra.__version__}


def write_outputs(out_dir: Path, sim: Any, metrics: dict[str, Any], wall_s: float,
                  cfg: SimConfig) -> None:
    from sim.common.files import atomic_write_bytes, atomic_write_table
    from sim.engine.metrics import metrics_json, request_table

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(metrics_json(metrics), out_dir / "metrics.json")
    if cfg.output.requests_parquet:
        import pyarrow as pa

        atomic_write_table(pa.Table.from_pandas(request_table(sim), preserve_index=False),
                            out_dir / "requests.parquet")
    if sim.log is not None:
        from sim.serving.cache_log import write_cache_log

        write_cache_log(sim.log, out_dir / "cache_log.parquet")
    info = {"wall_time_s": wall_s,
            "sim_s_per_wall_s": metrics["sim_time_s"] / wall_s if wall_s > 0 else None,
            "argv": sys.argv, "cpu_count": os.cpu_count(), "versions": _versions()}
    atomic_write_bytes((json.dumps(info, indent=2) + "\n").encode(), out_dir / "run_info.json")


def _progress_enabled(mode: str) -> bool:
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"output.progress={mode!r}; expected auto, on or off")
    return mode != "off"  # "auto": a bar on a terminal, periodic lines elsewhere
