"""``moesim realrun replay|calibrate|validate``: Hydra apps (conf/realrun_{replay,calibrate,validate}.yaml).

    moesim realrun replay [trace.path=FILE] [policy.cache=lifo] [cluster.expert_budget_fraction=0.5]
        [device=cuda model.dtype=bf16]
        -> RUN_DIR/metrics.json (counts: hits, misses, bytes; same seed, same bytes)
           RUN_DIR/timings.json (measured seconds: copies, layers, wall time)
    moesim realrun calibrate [device=cuda] [model=mixtral-8x7b] [shrink=1]
        -> RUN_DIR/profile.csv (sim/cost/table.py layout) + meta.json; the simulator uses it with
    moesim sim serving.cost_model=table serving.cost_table=RUN_DIR/profile.csv
    moesim realrun validate [device=cpu] [shrink=8] [trace=file trace.path=FILE] [profile=CSV]
        -> RUN_DIR/metrics.json (hits/bytes both sides, latency errors), iterations.csv, plots
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.common.errors import ConfigError
from sim.common.jsonout import strict_json

USAGE = __doc__.split("\n\n", 1)[1]


def main(argv: list[str]) -> int:
    from sim.app.hydra_app import run_subcommand

    return run_subcommand(argv, "realrun", {"replay": ("realrun_replay", replay_task),
                                            "calibrate": ("realrun_calibrate", calibrate_task),
                                            "validate": ("realrun_validate", validate_task)},
                          "usage: moesim realrun {replay,calibrate,validate} [key=value ...]\n" + USAGE)


def _interpret_if_cpu(device: str) -> None:
    import os

    from traces.capture_cli import check_device

    check_device(str(device), flag="device", sep="=")

    if not str(device).startswith("cuda"):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton runs on the CPU only interpreted


def _write_json(obj: dict[str, Any], path: Path) -> None:
    from sim.common.files import atomic_write_bytes

    atomic_write_bytes((strict_json(obj, indent=2, sort_keys=True) + "\n").encode(), path)


def _trace(cfg: Any):
    import numpy as np

    from sim.app.schemas.common import limit_requests
    from sim.common.files import require_file
    from traces.format import read_trace

    if cfg.trace.path:
        return limit_requests(read_trace(require_file(cfg.trace.path, "trace.path")),
                              cfg.workload.max_requests)
    n = cfg.workload.num_requests
    if n < 1 or cfg.trace.tokens_per_request < 1:
        raise ConfigError(f"workload.num_requests={n} and trace.tokens_per_request="
                          f"{cfg.trace.tokens_per_request}; both must be >= 1 (or give trace.path)")
    from traces.synth import sample_trace
    from traces.synth_params import fitted_params

    rng = np.random.default_rng(cfg.seed)
    return limit_requests(sample_trace(fitted_params(cfg.trace.generator), int(n),
                                       int(cfg.trace.tokens_per_request), rng),
                          cfg.workload.max_requests)


def replay_task(cfg: Any) -> None:
    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config
    from sim.app.schemas.realrun import RealrunReplayConfig

    cfg = app_config(cfg, RealrunReplayConfig)
    _interpret_if_cpu(cfg.device)
    from realrun.runner import RealMoE, RealrunConfig
    from sim.app.schemas.common import check_budget_slots

    check_budget_slots([cfg.cluster.expert_budget_fraction], cfg.model.num_experts,
                       "cluster.expert_budget_fraction")
    trace = _trace(cfg)
    if cfg.shrink < 1:
        raise ConfigError(f"shrink must be >= 1, got {cfg.shrink}")
    hidden = max(16, cfg.model.hidden_size // cfg.shrink)
    inter = max(16, cfg.model.expert_intermediate_size // cfg.shrink)
    if trace.num_experts != cfg.model.num_experts or trace.top_k != cfg.model.top_k:
        raise ConfigError(
            f"trace has {trace.num_experts} experts top-{trace.top_k}, model {cfg.model.name} has "
            f"{cfg.model.num_experts} top-{cfg.model.top_k}; choose model= to match the trace")
    rc = RealrunConfig(hidden=hidden, intermediate=inter, cache_policy=cfg.policy.cache,
                       capacity_frac=cfg.cluster.expert_budget_fraction,
                       batch_tokens=cfg.batch_tokens, block_size=cfg.block_size, device=cfg.device,
                       dtype=cfg.model.dtype, seed=cfg.seed,
                       max_tokens=cfg.max_tokens)
    moe = RealMoE(rc, trace.num_layers, trace.num_experts, trace.top_k)
    metrics, timings = moe.run_trace(trace, progress=True)  # tqdm on stderr, TTY or not
    metrics["model"] = cfg.model.name
    out = Path(run_dir())
    _write_json(metrics, out / "metrics.json")
    _write_json(timings, out / "timings.json")
    print(f"realrun {cfg.policy.cache} @ {cfg.cluster.expert_budget_fraction:.0%}: "
          f"hit rate {metrics['hit_rate']:.3f}, "
          f"{metrics['h2d_bytes'] / 2**20:.1f} MiB copied in {metrics['h2d_copies']} copies, "
          f"{timings['wall_time_s']:.2f} s wall on {timings['device']} -> {out}")


def validate_task(cfg: Any) -> None:
    from sim.app.realrun_validate import validate_task as task  # torch only when it runs

    task(cfg)


def calibrate_task(cfg: Any) -> None:
    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config
    from sim.app.schemas.realrun import RealrunCalibrateConfig

    cfg = app_config(cfg, RealrunCalibrateConfig)
    import torch

    from realrun.calibrate import calibrate_model, device_label, write_profile
    from realrun.model import shrunk_model

    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda asked for, but torch sees no CUDA GPU")
    m = shrunk_model(cfg.model, cfg.shrink)
    rows, facts = calibrate_model(m, cfg.device, list(cfg.tokens), list(cfg.copy_experts),
                                  list(cfg.contexts), cfg.warmup, cfg.reps, cfg.block_size,
                                  cfg.label or None, clock=cfg.clock)
    meta = {"device": cfg.label or device_label(torch.device(cfg.device)), "model": m.name,
            "hidden": m.hidden_size, "intermediate": m.expert_intermediate_size,
            "dtype": m.dtype, "shrink": cfg.shrink, **facts}
    csv = write_profile(rows, Path(run_dir()), meta)
    print(f"{len(rows)} measurements -> {csv}")
