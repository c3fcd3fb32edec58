"""``moesim cache``: replay a routing trace through cache policies (Hydra app, conf/cache.yaml).

    moesim cache trace.path=FILE ['policy.caches=[lru,lifo,belady]'] [model=NAME]
        ['cluster.expert_budget_fractions=[0.25,0.5]']
    moesim cache trace.path=FILE mode=batch batch_size=16 [expert_bytes=N] [plot=false]
    moesim cache trace.path=FILE 'policy.caches=[keep_predicted]' policy.prefetch=emoe_a policy.reroute=true

``model=NAME`` (a conf/model config) gives the expert bytes; by default they come from the model
the trace names (``sim.world.facts.model_for_trace``); ``expert_bytes=N`` overrides both.

The keys are the simulator's (``moesim sim``): ``policy.caches`` and
``cluster.expert_budget_fractions`` are the plurals of ``policy.cache`` and
``cluster.expert_budget_fraction``; ``workload.max_requests=N`` replays the first N requests.

Writes ``metrics.json`` (atomic; a ``results`` list with one record per (policy, capacity
fraction), Belady always included for the gap) and ``hit_rate.png`` into the run directory.
Same inputs -> byte-identical ``metrics.json`` (no timings or absolute run paths in it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from sim.common.errors import ConfigError
from sim.common.jsonout import strict_json


def _task(cfg: Any) -> None:
    from sim.app.hydra_app import run_dir
    from sim.app.progress import StepProgress
    from sim.app.schemas.cache import CacheAppConfig
    from sim.app.schemas.common import (
        app_config,
        check_budget_slots,
        check_model_matches,
        limit_requests,
        trace_shape,
    )
    from sim.common.files import atomic_write_bytes, require_file
    from sim.replay.cache import run_replay
    from traces.format import read_trace

    c: CacheAppConfig = app_config(cfg, CacheAppConfig)
    if not c.policy.caches or not c.cluster.expert_budget_fractions:
        raise ConfigError("policy.caches and cluster.expert_budget_fractions must be non-empty "
                          "lists, e.g. 'policy.caches=[lru,lifo]' "
                          "'cluster.expert_budget_fractions=[0.5]'")
    if c.mode not in ("plain", "batch"):
        raise ConfigError(f"mode={c.mode!r}; expected plain or batch")
    from sim.policies import CACHE, PREFETCH

    for name in c.policy.caches:
        CACHE.get(name)  # an unknown name fails before any work
    if c.policy.prefetch and c.policy.prefetch != "none":
        PREFETCH.get(c.policy.prefetch)
    trace_path = require_file(c.trace.path, "trace.path")
    shape = trace_shape(trace_path)
    fracs = list(c.cluster.expert_budget_fractions)
    if shape is not None:
        check_model_matches(c.model, *shape, trace_path)
        check_budget_slots(fracs, shape[1], "cluster.expert_budget_fractions")
    trace = limit_requests(read_trace(trace_path), c.workload.max_requests)
    caches = list(c.policy.caches)
    steps = len(fracs) * len(dict.fromkeys([*caches, "belady"]))
    bar = StepProgress("moesim cache", steps, f"replays of {trace.num_tokens} tokens")
    t0 = time.perf_counter()
    results = run_replay(trace, caches, fracs,
                         mode=c.mode, batch_size=c.batch_size, prefetch=c.policy.prefetch,
                         prefetch_kwargs=dict(c.policy.prefetch_args), expert_bytes=c.expert_bytes,
                         reroute=c.policy.reroute,
                         model=c.model,
                         on_step=lambda name, f: bar.step(f"{name} at {f:g}"))
    wall_s = time.perf_counter() - t0
    out = Path(run_dir())
    metrics = {
        "kind": "cache_replay",
        "trace": {"path": str(trace_path), "model": trace.meta.model, "tokens": trace.num_tokens,
                  "requests": len(trace.request_ids()), "layers": trace.num_layers,
                  "experts": trace.num_experts, "top_k": trace.top_k},
        "mode": c.mode, "batch_size": c.batch_size if c.mode == "batch" else None,
        "prefetch": c.policy.prefetch or "none", "reroute": c.policy.reroute,
        "results": results,
    }
    atomic_write_bytes((strict_json(metrics, indent=1, sort_keys=True) + "\n").encode(),
                       out / "metrics.json")
    if c.plot:
        from analysis.plots_cache import plot_hit_rate

        plot_hit_rate(results, out / "hit_rate.png",
                      title=f"{trace.meta.model}: {c.mode} replay, {trace.num_tokens} tokens")
    print(f"moesim cache: {len(results)} records, {wall_s:.1f} s -> {out / 'metrics.json'}",
          file=sys.stderr)
    for r in results:
        print(f"  {r['policy']:<15} C={r['capacity']:>3} ({r['capacity_frac']:.2f})  "
              f"hit_rate={r['hit_rate']:.4f}  gap_to_belady={r['gap_to_belady_hit_rate']:.4f}")


def main(argv: list[str]) -> int:
    from sim.app.hydra_app import run_hydra

    return run_hydra("cache", _task, argv, prog="moesim cache")
