"""``moesim cache``: replay a routing trace through cache policies (Hydra app, conf/cache.yaml).

Writes ``metrics.json`` (atomic; a ``results`` list with one record per (policy, capacity
fraction), Belady always included for the gap) and ``hit_rate.png`` into the run directory.
Same inputs -> byte-identical ``metrics.json`` (no timings or absolute run paths in it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sim.errors import ConfigError


def _task(cfg: Any) -> None:
    from omegaconf import OmegaConf

    from sim.files import atomic_write_bytes
    from sim.hydra_app import run_dir
    from sim.replay import run_replay
    from traces.format import read_trace

    c = OmegaConf.to_container(cfg, resolve=True)
    trace_path = c["trace"]["path"]
    trace = read_trace(trace_path)
    n = c["trace"].get("max_requests")
    if n is not None:
        if int(n) <= 0:
            raise ConfigError(f"trace.max_requests must be positive, got {n}")
        trace = trace.select_requests(trace.request_ids()[: int(n)])
    policies = [str(p) for p in c["policies"]]
    fracs = [float(f) for f in c["capacity_fracs"]]
    if not policies or not fracs:
        raise ConfigError("policies and capacity_fracs must be non-empty lists")
    t0 = time.perf_counter()
    results = run_replay(trace, policies, fracs, mode=c["mode"], batch_size=int(c["batch_size"]),
                         prefetch=c.get("prefetch"), prefetch_kwargs=c.get("prefetch_kwargs") or {},
                         expert_bytes=c.get("expert_bytes"), reroute=bool(c.get("reroute", False)))
    wall_s = time.perf_counter() - t0
    out = Path(run_dir())
    metrics = {
        "kind": "cache_replay",
        "trace": {"path": str(trace_path), "model": trace.meta.model, "tokens": trace.num_tokens,
                  "requests": len(trace.request_ids()), "layers": trace.num_layers,
                  "experts": trace.num_experts, "top_k": trace.top_k},
        "mode": c["mode"], "batch_size": int(c["batch_size"]) if c["mode"] == "batch" else None,
        "prefetch": c.get("prefetch") or "none",
        "results": results,
    }
    atomic_write_bytes((json.dumps(metrics, indent=1, sort_keys=True) + "\n").encode(),
                       out / "metrics.json")
    if c.get("plot", True):
        from analysis.plots_cache import plot_hit_rate

        plot_hit_rate(results, out / "hit_rate.png",
                      title=f"{trace.meta.model}: {c['mode']} replay, {trace.num_tokens} tokens")
    print(f"moesim cache: {len(results)} records, {wall_s:.1f} s -> {out / 'metrics.json'}",
          file=sys.stderr)
    for r in results:
        print(f"  {r['policy']:<15} C={r['capacity']:>3} ({r['capacity_frac']:.2f})  "
              f"hit_rate={r['hit_rate']:.4f}  gap_to_belady={r['gap_to_belady_hit_rate']:.4f}")


def main(argv: list[str]) -> int:
    from sim.hydra_app import run_hydra

    return run_hydra("cache", _task, argv, prog="moesim cache")
