"""``moesim experiment emoe`` / ``moesim experiment huang``: the source papers' headline
comparisons, each run in-process across the apps it needs (simulator, cache replay, placement,
cost model) and written up as one report that sets the paper's figure beside ours.

    moesim experiment emoe [trace.path=ds.parquet] [key=value ...]   # eMoE (Tairin et al.)
    moesim experiment huang [trace.path=ds.parquet] [key=value ...]  # Huang et al. (NeurIPS 2024)

Each is a Hydra app (``conf/experiment_emoe.yaml``, ``conf/experiment_huang.yaml``; types in
:mod:`sim.app.experiments.config`): the simulator's keys, plus the lists a study compares named as the
plural of the simulator's key (``cluster.expert_budget_fractions``, ``policy.caches``,
``policy.placements``, ``policy.schedulers``, ``policy.prefetch_periods``, ``workload.rates_rps``);
``parts=[...]`` runs a subset. With ``trace.path=FILE`` (a routing trace from ``moesim trace
import``, e.g. DeepSeek-V2-Lite's from ``../shared/data``) the real routing drives every part;
without it, routing is sampled from the generator fitted to the model's real trace and every
table and figure says so. Writes ``DIR/<part>/...`` (each run's ``metrics.json``),
``DIR/paper_vs_ours.json`` and ``DIR/report/report.{md,html}``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.common.jsonout import strict_json

#: experiment name -> (module with task(cfg), one line)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "emoe": ("sim.app.experiments.emoe", "eMoE: memory vs latency and fidelity, prediction period, "
                                    "SLO-aware scheduling under rising load"),
    "huang": ("sim.app.experiments.huang", "Huang et al.: LIFO buffering, load-balancing placement, "
                                      "dynamic vs static gating"),
    "accuracy": ("sim.app.experiments.accuracy", "the accuracy dial: next-layer prediction recall / "
                                            "precision against hit rate, stall and bytes"),
    "prefetch": ("sim.app.experiments.prefetch", "the learned next-layer prefetcher with real lead "
                                            "time against LRU, the noisy oracle and perfect"),
}


def say(msg: str) -> None:
    """Progress on stderr (the study's long steps are never silent)."""
    print(msg, file=sys.stderr, flush=True)


def write_json(obj: Any, path: Path) -> None:
    from sim.common.files import atomic_write_bytes

    atomic_write_bytes((strict_json(obj, indent=1, sort_keys=True, default=str) + "\n").encode(),
                       path)


def routing_trace(cfg: Any) -> tuple[Any, str, bool]:
    """(trace, source label, real?): ``trace.path`` (first ``replay_requests`` requests), or the
    generator fitted to the model's real trace (``synth_requests`` x ``synth_tokens``)."""
    from sim.app.schemas.common import limit_requests
    from sim.common.files import require_file
    from traces.format import read_trace

    if cfg.trace.path:
        trace = limit_requests(read_trace(require_file(cfg.trace.path, "trace.path")),
                               cfg.replay_requests, "replay_requests")
        return trace, f"real routing trace {cfg.trace.path}", True
    from traces.synth import sample_trace
    from traces.synth_params import load_params

    name = cfg.trace.generator or cfg.model.name
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[2])
    trace = sample_trace(load_params(name), cfg.synth_requests, cfg.synth_tokens, rng)
    return trace, (f"SYNTHETIC routing from the generator fitted to {name}'s real trace (no "
                   f"trace.path given)"), False


def set_keys(run: Any, keys: dict[str, Any]) -> Any:
    """A copy of SimConfig ``run`` with dotted keys set (the demo's rule)."""
    from sim.app.demo import _set

    for k, v in keys.items():
        run = _set(run, k, v)
    if "cluster.expert_budget_fraction" in keys:
        run = dataclasses.replace(run, cluster=dataclasses.replace(run.cluster,
                                                                   expert_budget_bytes=0))
    return run


def simulate_run(name: str, run_cfg: Any, keys: dict[str, Any], out: Path,
                 workload: Any = None, pool: Any = None) -> dict[str, Any]:
    """One simulation written to ``out/name`` (metrics.json, requests.parquet, config.json)."""
    from sim.engine.run import simulate, write_outputs

    t0 = time.perf_counter()
    sim, metrics = simulate(run_cfg, workload=workload, pool=pool)
    write_outputs(out / name, sim, metrics, time.perf_counter() - t0, run_cfg)
    write_json({"label": name, "overrides": keys, "config": dataclasses.asdict(run_cfg)},
               out / name / "config.json")
    say(f"      {name}: {time.perf_counter() - t0:.1f} s, E2E p50 {metrics['e2e_s']['p50']:.2f} s, "
        f"hit rate {metrics['hit_rate']:.3f}, SLO {metrics['slo_attainment']:.2f}")
    return metrics


def run_experiment(cfg_node: Any, config_cls: type, name: str,
                   parts_fns: dict[str, Callable[[Any, Path, Any], dict[str, Any]]],
                   paper_vs_ours: Callable[[dict[str, Any]], list[dict[str, str]]],
                   write_report: Callable[[dict[str, Any], Path], Any]) -> dict[str, Any]:
    """An experiment's task: check ``parts`` against ``parts_fns`` (in order: its PARTS), run each
    chosen part as ``fn(cfg, out, trace)`` on the routing trace, then write
    ``paper_vs_ours.json`` and the report."""
    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config

    cfg = app_config(cfg_node, config_cls)
    known = list(parts_fns)
    parts = list(cfg.parts) or known
    bad = [p for p in parts if p not in parts_fns]
    if bad:
        raise ConfigError(f"parts: unknown {bad}; expected a subset of {known}")
    out = Path(run_dir())
    trace, source, real = routing_trace(cfg)
    say(f"moesim experiment {name}: {source}; {trace.num_tokens} tokens, "
        f"{len(trace.request_ids())} prompts; parts {parts}")
    res: dict[str, Any] = {"source": source, "real": real}
    for part, fn in parts_fns.items():
        if part in parts:
            res[part] = fn(cfg, out, trace)
    res["paper_vs_ours"] = paper_vs_ours(res)
    res["config"] = dataclasses.asdict(cfg)
    write_json(res, out / "paper_vs_ours.json")
    report = write_report(res, out / "report")
    print(f"report: {report}")
    return res


def pct(new: float, old: float) -> str:
    return "n/a" if not old else f"{(new - old) / old * 100:+.0f} %"


def main(argv: list[str]) -> int:
    import importlib

    from sim.app.hydra_app import run_hydra

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, (_, text) in EXPERIMENTS.items():
            print(f"  {name:<6} {text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    module = importlib.import_module(EXPERIMENTS[name][0])
    return run_hydra(f"experiment_{name}", module.task, rest, prog=f"moesim experiment {name}")
