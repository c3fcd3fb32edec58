"""``moesim placement``: expert placement / load balancing on a routing trace (Hydra app,
conf/placement.yaml); the evaluation is :mod:`sim.replay.placement`.

    moesim placement trace.path=FILE [cluster.expert_parallel=8] ['policy.placements=[greedy,eplb]']
        [train_frac=0.5] [model=NAME]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sim.common.errors import ConfigError
from sim.common.jsonout import strict_json
from sim.replay.placement import evaluate, evaluate_load


def _write_metrics(m: dict[str, Any], out: Path) -> None:
    from sim.common.files import atomic_write_bytes

    atomic_write_bytes((strict_json(m, indent=1, sort_keys=True) + "\n").encode(), out / "metrics.json")



def _task(cfg: Any) -> None:
    from sim.app.hydra_app import run_dir
    from sim.app.progress import StepProgress
    from sim.app.schemas.common import app_config, check_model_matches, limit_requests, trace_shape
    from sim.app.schemas.placement import PlacementAppConfig
    from sim.common.files import require_file
    from sim.world.facts import model_for_trace
    from sim.world.model import expert_bytes
    from traces.format import read_trace

    c: PlacementAppConfig = app_config(cfg, PlacementAppConfig)
    if not c.policy.placements:
        raise ConfigError("policy.placements must be a non-empty list, e.g. "
                          "'policy.placements=[greedy,eplb]'")
    if c.cluster.expert_parallel < 1:
        raise ConfigError(f"cluster.expert_parallel must be >= 1, got {c.cluster.expert_parallel}")
    from sim.policies import PLACEMENT
    from traces.format import read_meta
    from traces.load_table import LOAD_KIND, read_load_table

    for name in c.policy.placements:
        PLACEMENT.get(name)  # an unknown name fails before any work
    path = require_file(c.trace.path, "trace.path")
    shape = trace_shape(path)
    if shape is not None:
        if shape[2]:
            check_model_matches(c.model, *shape, path)
        if c.cluster.expert_parallel > shape[1]:
            raise ConfigError(f"cluster.expert_parallel={c.cluster.expert_parallel} exceeds the "
                              f"{shape[1]} experts of a layer: a GPU would hold none; expected "
                              f"1..{shape[1]}")
    steps = StepProgress("moesim placement", len(c.policy.placements), "placements scored")
    if read_meta(path).get("kind") == LOAD_KIND:  # counts only: plan and score in sample
        table = read_load_table(path)
        m = evaluate_load(table.counts, list(c.policy.placements), c.cluster.expert_parallel,
                          dict(c.policy.placement_args))
        m = {"kind": "placement", "trace": {"path": str(c.trace.path), "model": table.meta.model,
                                            "layers": table.meta.num_layers,
                                            "experts": table.meta.num_experts}, **m}
        _write_metrics(m, Path(run_dir()))
        for r in m["results"]:
            print(f"  {r['policy']:<12} " + (f"skipped: {r['skipped']}" if "skipped" in r else
                                             f"max/mean (in sample) {r['train_max_over_mean']:.3f}"))
        return
    trace = limit_requests(read_trace(path), c.workload.max_requests)
    if c.expert_bytes is not None:
        if c.expert_bytes <= 0:
            raise ConfigError(f"expert_bytes must be positive (or null: from the model), "
                              f"got {c.expert_bytes}")
        eb = c.expert_bytes
    else:
        eb = expert_bytes(c.model if c.model is not None else model_for_trace(trace.meta.model))
    m = evaluate(trace, list(c.policy.placements), c.cluster.expert_parallel, c.train_frac,
                 c.batch_tokens, dict(c.policy.placement_args), eb, on_step=steps.step)
    m = {"kind": "placement", "trace": {"path": str(c.trace.path), "model": trace.meta.model,
                                        "layers": trace.num_layers, "experts": trace.num_experts,
                                        "top_k": trace.top_k},
         "expert_bytes": eb, **m}
    out = Path(run_dir())
    _write_metrics(m, out)
    done = [r for r in m["results"] if "skipped" not in r]
    if c.plot and done:
        from analysis.plots_cache import plot_placement

        plot_placement(done, out / "placement.png",
                       title=f"{trace.meta.model}, {m['num_gpus']} GPUs: plan on {m['train_prompts']} "
                             f"prompts, test on {m['test_prompts']}")
    print(f"moesim placement -> {out / 'metrics.json'}", file=sys.stderr)
    for r in m["results"]:
        if "skipped" in r:
            print(f"  {r['policy']:<12} skipped: {r['skipped']}")
        else:
            print(f"  {r['policy']:<12} max/mean train={r['train_max_over_mean']:.3f} "
                  f"test={r['test_max_over_mean']:.3f} (per batch {r['test_batch_max_over_mean']:.3f}, "
                  f"split {r['test_batch_split_max_over_mean']:.3f}; mean/max per batch "
                  f"{r['test_batch_mean_over_max']:.3f}, split {r['test_batch_split_mean_over_max']:.3f})"
                  f" moved={r['moved_experts']}")


def main(argv: list[str]) -> int:
    from sim.app.hydra_app import run_hydra

    return run_hydra("placement", _task, argv, prog="moesim placement")
