"""What ``moesim experiment accuracy`` and ``moesim experiment prefetch`` share: the trace, the
simulator set-up that replays the trace's own prompts, one simulation, the learned prefetcher's
table and the CSV writer.

The simulator serves the prompts :func:`load_trace` selects (with a checkpoint, its held-out
test prompts; then the first ``replay_requests``), each
request its own prompt (prompt tokens = the prompt's tokens, one output token: the trace holds
prefill routing), arriving as a Poisson stream at ``workload.rate_rps`` (seeded by ``seed``).
The cache replay replays the same prompts token by token.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.app.experiments.base import say
from sim.common.errors import ConfigError


def load_trace(cfg: Any, out: Path) -> tuple[Any, str]:
    """(trace, path): the prompts of ``trace.path`` (required) the experiment replays. With
    ``dial.checkpoint``, the checkpoint's ``dial.split`` prompts (default: its held-out test
    prompts, in trace order; ``all``: every prompt); then the first ``replay_requests``. A
    selection is written to ``out/trace.parquet`` (the simulator and the learned prefetcher's
    table read that file: its rows are the driver's rows)."""
    from sim.app.schemas.common import limit_requests
    from sim.common.files import require_file
    from traces.format import read_trace, write_trace

    if not cfg.trace.path:
        raise ConfigError("trace.path is required: a routing trace from 'moesim trace import' "
                          "(the oracles and the learned predictor read its tokens)")
    full = read_trace(require_file(cfg.trace.path, "trace.path"))
    trace = full
    split = str(cfg.dial.split)
    if cfg.dial.checkpoint and split != "all":
        from sim.predictor.checkpoint import load_config

        parts = load_config(cfg.dial.checkpoint).get("split", {})
        if split not in parts:
            raise ConfigError(f"dial.split={split!r}; expected all or one of {sorted(parts)} "
                              f"(the checkpoint's prompt split)")
        want = set(parts[split])
        rids = [r for r in full.request_ids() if r in want]
        if not rids:
            raise ConfigError(f"dial.split={split!r}: none of the checkpoint's {split} prompts "
                              f"is in {cfg.trace.path}")
        trace = full.select_requests(rids)
    trace = limit_requests(trace, cfg.replay_requests, "replay_requests")
    if trace is full:
        return trace, str(cfg.trace.path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "trace.parquet"
    write_trace(trace, path)
    return trace, str(path)


class SimSetup:
    """Workload, routing pool and binding of the trace's own prompts (see the module doc)."""

    def __init__(self, cfg: Any, trace: Any, path: str) -> None:
        from sim.app.experiments.config import sim_base
        from sim.serving.binding import Binding, RoutingPool, check_pool
        from traces.workload import make_workload

        self.base = sim_base(cfg)
        self.pool = RoutingPool.from_trace(trace, source=path)
        check_pool(self.pool, self.base.model, path)
        R = len(self.pool.offsets)
        if cfg.workload.rate_rps <= 0:
            raise ConfigError(f"workload.rate_rps={cfg.workload.rate_rps}; expected > 0")
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(1)[0])
        gaps = rng.exponential(1.0 / cfg.workload.rate_rps, size=R)
        arrival = np.cumsum(gaps) - gaps[0]  # (R,)
        self.workload = make_workload(arrival, self.pool.lengths, np.ones(R, dtype=np.int64),
                                      task=self.pool.tasks,
                                      request_id=[str(r) for r in trace.request_ids()])
        # arrivals increase with the prompt's index, so request r (arrival order) is prompt r
        entry = np.arange(R, dtype=np.int64)
        self.binding = Binding(offset=self.pool.offsets[entry], length=self.pool.lengths[entry],
                               entry=entry, report={"overflow": "wrap", "requests_longer_than_trace": 0,
                                                    "tokens_past_trace": 0,
                                                    "task_fallback_requests": 0,
                                                    "pool_entries": R, "source": self.pool.source})

    def run(self, name: str, keys: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """One simulation of the base config with dotted ``keys`` set: (metrics, prefetch policy)."""
        from sim.app.experiments.base import set_keys
        from sim.cost import make_cost_model
        from sim.engine.metrics import compute_metrics
        from sim.engine.simulation import Simulation

        run_cfg = set_keys(self.base, keys)
        cost = make_cost_model(run_cfg.serving.cost_model, run_cfg.model, run_cfg.hardware,
                               run_cfg.serving.cost_table, run_cfg.cluster, run_cfg.engine)
        t0 = time.perf_counter()
        sim = Simulation(run_cfg, self.workload, self.pool, self.binding, cost,
                         np.random.default_rng(np.random.SeedSequence(run_cfg.seed).spawn(4)[3]))
        sim.run()
        m = compute_metrics(sim)
        say(f"      sim {name}: {time.perf_counter() - t0:.1f} s, hit rate {m['hit_rate']:.3f}, "
            f"stall {m['fetch_stall_s']:.3f} s, H2D {m['h2d_bytes'] / 1e9:.2f} GB")
        return m, sim.prefetch


def sim_row(m: dict[str, Any]) -> dict[str, Any]:
    return {"hit_rate": m["hit_rate"], "stall_s": m["fetch_stall_s"],
            "h2d_gb": m["h2d_bytes"] / 1e9, "sim_time_s": m["sim_time_s"],
            "e2e_p50_s": m["e2e_s"]["p50"], "prefetch_issued": m["prefetch"]["issued"],
            "prefetch_used": m["prefetch"]["used"]}


def learned_keys(cfg: Any, path: str, free: bool = False, name: str = "learned_next",
                 **extra: Any) -> dict[str, Any]:
    """A learned prefetcher (``learned_next``, or ``name``) on the replayed trace ``path`` (from
    :func:`load_trace`), its arguments ``extra`` added."""
    args: dict[str, Any] = {"checkpoint": cfg.dial.checkpoint, "trace_path": path, **extra}
    if free:
        args["call_s_per_token"] = 0.0
    elif cfg.dial.call_s_per_token is not None:
        args["call_s_per_token"] = float(cfg.dial.call_s_per_token)
    return {"policy.prefetch": name, "policy.prefetch_args": args}


def noisy_keys(cfg: Any, recall: float, precision: float) -> dict[str, Any]:
    return {"policy.prefetch": "noisy_oracle",
            "policy.prefetch_args": {"recall": float(recall), "precision": float(precision),
                                     "seed": int(cfg.dial.seed)}}


def check_dial(cfg: Any) -> None:
    fr = list(cfg.cluster.expert_budget_fractions)
    if not fr or any(not 0 < f <= 1 for f in fr):
        raise ConfigError(f"cluster.expert_budget_fractions={fr}; expected shares in (0, 1]")
    for key, vals, lo_open in (("dial.recalls", cfg.dial.recalls, False),
                               ("dial.precisions", cfg.dial.precisions, True)):
        if not vals or any(not (0 < v <= 1 if lo_open else 0 <= v <= 1) for v in vals):
            raise ConfigError(f"{key}={list(vals)}; expected values in "
                              f"{'(0, 1]' if lo_open else '[0, 1]'}")
    if cfg.dial.checkpoint:
        from sim.predictor.checkpoint import load_config

        load_config(cfg.dial.checkpoint)  # a one-line error for a folder that is not one


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    from sim.common.files import atomic_write_bytes

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(buf.getvalue().encode(), path)
