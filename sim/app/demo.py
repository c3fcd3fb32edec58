"""``moesim demo``: the embedded default, a short end-to-end comparison with no downloads.

DeepSeek-V2-Lite on one A100-40GB; routing sampled from the generator fitted to the model's real
routing trace (parameters shipped in ``traces/params``); a synthetic Poisson workload. Each entry
of ``runs`` (run name -> the simulator keys it sets) is simulated on the same requests and the
same routing: by default every expert resident, demand loading into an LRU cache, Huang et al.'s
LIFO buffering and eMoE's predict-and-load, the last three with ``cluster.expert_budget_fraction``
of the experts on the GPU. With ``replay=true`` the same generator's routing is also replayed
through the cache policies (``moesim cache``) at 25/50/75 % of each layer's experts, with eMoE's
predict-and-reroute and Belady's bound. A Hydra app (``conf/demo.yaml``)::

    moesim demo
    moesim demo hydra.run.dir=DIR cluster.expert_budget_fraction=0.25 replay=false
    moesim demo '~runs.lifo' workload.num_requests=60

Writes ``DIR/<run>/metrics.json`` (+ ``requests.parquet``, ``config.json``), ``DIR/replay/``,
``DIR/summary.md`` and the report ``DIR/report/report.{md,html}`` with its plots.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import ConfigError
from sim.common.jsonout import strict_json
from sim.engine.metrics import format_table

COLUMNS = ["run", "budget", "hit rate", "H2D GB", "stall s", "TTFT p50 s", "TPOT p50 ms",
           "E2E p90 s", "tok/s", "SLO %", "peak expert GB"]


def _row(name: str, m: dict[str, Any]) -> list[str]:
    budget = max(m["expert_budget_bytes_per_gpu"]) / m["expert_bytes"]
    return [name, f"{budget:.0f} experts", f"{m['hit_rate'] * 100:.1f} %", f"{m['h2d_bytes'] / 1e9:.1f}",
            f"{m['fetch_stall_s']:.2f}", f"{m['ttft_s']['p50']:.3f}", f"{m['tpot_s']['p50'] * 1e3:.1f}",
            f"{m['e2e_s']['p90']:.2f}", f"{m['tokens_per_s']:.0f}", f"{m['slo_attainment'] * 100:.0f}",
            f"{max(m['peak_expert_bytes_per_gpu']) / 1e9:.2f}"]


def _set(obj: Any, dotted: str, value: Any) -> Any:
    """A copy of dataclass ``obj`` with the dotted key set (a ConfigError names an unknown key)."""
    head, _, rest = dotted.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"runs: unknown simulator key {dotted!r} (moesim sim --help lists them)")
    if rest:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value)})
    old = getattr(obj, head)
    if isinstance(old, bool) or not isinstance(old, int | float | str) or old is None:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: type(old)(value)})


def run_configs(cfg: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, SimConfig, the keys it sets) per entry of ``cfg.runs``."""
    from sim.world.config import SimConfig

    base = SimConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SimConfig)})
    if not cfg.runs:
        raise ConfigError("runs is empty; name at least one run, e.g. "
                          "'runs={lru: {policy.cache: lru}}'")
    out = []
    for name, keys in cfg.runs.items():
        keys = dict(keys or {})
        run = base
        for k, v in keys.items():
            run = _set(run, k, v)
        if keys.get("cluster.expert_budget_fraction") is not None:
            run = dataclasses.replace(run, cluster=dataclasses.replace(run.cluster,
                                                                       expert_budget_bytes=0))
        try:  # every run's config checked before the first runs (nothing half-written)
            from sim.serving.plan import check_config

            check_config(run)
        except ConfigError as exc:
            raise ConfigError(f"runs.{name}: {exc}") from None
        out.append((str(name), run, keys))
    return out


def _replay(cfg: Any, out: Path) -> list[dict[str, Any]]:
    """The same generator's routing through ``moesim cache``'s replay (hit rate vs memory); its
    result records."""
    from sim.common.files import atomic_write_bytes
    from sim.replay.cache import run_replay
    from traces.synth import sample_trace
    from traces.synth_params import load_params

    params = load_params(cfg.trace.generator or cfg.model.name)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[2])
    trace = sample_trace(params, cfg.trace.pool_size * 4, cfg.trace.pool_tokens // 4, rng)
    fracs = [0.25, 0.5, 0.75]
    results = run_replay(trace, ["lru", "lifo"], fracs, model=cfg.model.name)
    results += [dict(r, policy="emoe-reroute") for r in run_replay(
        trace, ["keep_predicted"], fracs, prefetch="emoe_a", reroute=True, model=cfg.model.name)
        if r["policy"] == "keep_predicted"]
    metrics = {"kind": "cache_replay", "mode": "plain",
               "trace": {"source": f"synth:{cfg.trace.generator or cfg.model.name}",
                         "tokens": trace.num_tokens, "requests": len(trace.request_ids())},
               "results": results}
    atomic_write_bytes((strict_json(metrics, indent=1, sort_keys=True) + "\n").encode(),
                       out / "replay" / "metrics.json")
    atomic_write_bytes((strict_json({"label": "replay"}) + "\n").encode(),
                       out / "replay" / "config.json")
    return results


def _why_lines(cfg: Any, results: dict[str, dict[str, Any]], replay: list[dict[str, Any]]) -> list[str]:
    """The cache scope stated, each run's bottleneck, and the simulator's LRU against the replay's
    LRU at the same memory with the reason they differ (:mod:`analysis.explain`)."""
    from analysis.explain import bottleneck_sentence, compare_sentence

    scope = cfg.cluster.cache_scope
    lines = [f"Cache scope: {scope} (cluster.cache_scope: "
             + ("one cache per GPU over every layer's experts, swept in layer order each iteration"
                if scope == "global" else "one cache per MoE layer") + ")."]
    lines += [f"- {name}: {bottleneck_sentence(m)}" for name, m in results.items()]
    frac = cfg.cluster.expert_budget_fraction
    same = [r for r in replay if r["policy"] == "lru" and abs(r["capacity_frac"] - frac) < 1e-9]
    if "lru" in results and same:
        lines.append(f"Simulator vs replay, LRU at {frac:.0%} of the experts: "
                     f"{compare_sentence(results['lru'], same[0])}")
    return lines


def task(cfg_node: Any) -> dict[str, Any]:
    from analysis.report import write_report
    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config
    from sim.app.schemas.demo import DemoAppConfig
    from sim.common.files import atomic_write_bytes
    from sim.engine.run import load_workload_table, simulate, write_outputs
    from sim.serving.binding import build_pool

    cfg = app_config(cfg_node, DemoAppConfig)
    out = Path(run_dir())
    runs = run_configs(cfg)
    seeds = np.random.SeedSequence(cfg.seed).spawn(2)
    workload = load_workload_table(cfg.workload, np.random.default_rng(seeds[0]))
    tasks = sorted(set(workload["task"].astype(str).tolist()))
    pool = build_pool(cfg.model, cfg.trace, tasks, np.random.default_rng(seeds[1]))
    rows, results = [], {}
    t_all = time.perf_counter()
    for i, (name, run_cfg, keys) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {name}: {keys or 'the base config'} ...", file=sys.stderr,
              flush=True)
        t0 = time.perf_counter()
        sim, metrics = simulate(run_cfg, workload=workload, pool=pool)
        write_outputs(out / name, sim, metrics, time.perf_counter() - t0, run_cfg)
        config = {"label": name, "overrides": keys, "config": dataclasses.asdict(run_cfg)}
        atomic_write_bytes((strict_json(config, indent=1, default=str) + "\n").encode(),
                           out / name / "config.json")
        print(f"      {time.perf_counter() - t0:.1f} s, hit rate {metrics['hit_rate']:.3f}, "
              f"TTFT p50 {metrics['ttft_s']['p50']:.3f} s", file=sys.stderr, flush=True)
        rows.append(_row(name, metrics))
        results[name] = metrics
    if cfg.replay:
        print("[replay] the same generator's routing through the cache policies ...",
              file=sys.stderr, flush=True)
        replay = _replay(cfg, out)
    else:
        replay = []
    m = cfg.model
    head = (f"moesim demo: {m.name} ({m.num_layers} MoE layers x {m.num_experts} experts, top-{m.top_k}) "
            f"on one {cfg.hardware.name}, {len(workload)} requests at {cfg.workload.rate_rps:g}/s, routing "
            f"from {pool.source}")
    table = format_table(COLUMNS, rows)
    slo = cfg.serving
    table += (f"\nSLO %: share of requests with TTFT <= {slo.ttft_slo_s:g} s and TPOT <= "
              f"{slo.tpot_slo_s * 1e3:g} ms (serving.ttft_slo_s, serving.tpot_slo_s)")
    why = "\n".join(_why_lines(cfg, results, replay))
    text = f"{head}\n\n{table}\n\n{why}\n\n(wall {time.perf_counter() - t_all:.1f} s; outputs in {out})"
    print(text)
    atomic_write_bytes((text + "\n").encode(), out / "summary.md")
    print("[report] plots and tables ...", file=sys.stderr, flush=True)
    report = write_report(out, out / "report", command=_command(), title=head)
    print(f"report: {report}")
    return results


def _command() -> str:
    from analysis.plots import command_line

    return command_line()


def main(argv: list[str]) -> int:
    from sim.app.hydra_app import run_hydra

    return run_hydra("demo", task, argv, prog="moesim demo")  # registers demo_schema
