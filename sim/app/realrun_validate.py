"""``moesim realrun validate``: one scenario served for real and simulated, compared.

    moesim realrun validate [device=cpu] [shrink=8] [trace=file trace.path=ds.parquet]
        [policy.cache=lifo] [policy.prefetch=emoe_l] [cluster.expert_budget_fraction=0.5]
        [profile=PROFILE.csv]   (empty: calibrate on this device first, into the run directory)
    -> RUN_DIR/metrics.json, iterations.csv, sim_vs_real.png, error_cdf.png (+ profile.csv, meta.json)

The scenario is the simulator's config (model, workload, routing trace and binding, cache,
prefetch and scheduler policies, expert budget) on one device (cluster 1x1), with two changes
that make the two sides comparable: every request arrives at time 0 (an offline workload, so the
simulator and realrun form the same iterations), and the model is :func:`realrun.model.shrunk_model`
(the shapes realrun runs; an expert weighs the same bytes on both sides).

- realrun: :class:`realrun.serve.RealServer` serves it, timing every iteration;
- the simulator: :class:`sim.engine.simulation.Simulation` on the table cost model of a profile measured on
  the same device (given, or calibrated first), every iteration's duration and counts recorded.

Hits, misses, streamed, prefetched and bytes must be identical, per iteration (same batches, same
policy objects, same calls); a difference is an error. Latency is where the cost model is graded:
the absolute relative error per iteration (median, p90) and end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.common.errors import MoesimError
from sim.common.jsonout import strict_json
from sim.world.config import SimConfig
from sim.world.facts import CacheCounts, stable_float

#: the counts compared between the two sides, per iteration and in total
#: (``hits`` here: served by a resident expert, its copy landed or not: the simulator's ``hits +
#: late_prefetch_hits``; realrun's counts are the policy's, which have no clock: its prefetched
#: expert is a hit when needed, and the copy's lateness is in its measured time)
COMPARED = ("accesses", "hits", "misses", "streamed", "prefetched", "loads", "h2d_bytes")


@dataclass
class Scenario:
    cfg: SimConfig  # the simulator's config, model shrunk
    workload: pd.DataFrame  # every arrival at 0
    pool: Any
    binding: Any
    topo: Any  # the checked config's topology (sim.serving.plan.check_config, run once)


def scenario(cfg: SimConfig, shrink: int, dtype: str, pool: Any = None, layers: int = 0
             ) -> Scenario:
    """The validation scenario of ``cfg``: the shrunk model, arrivals at 0, the routing pool
    (``pool``, or built from ``cfg.trace``) and binding drawn as :func:`sim.engine.run.simulate` does;
    ``layers`` > 0: the model's and the routing's first ``layers`` MoE layers only (as many as
    fit the device)."""
    from realrun.model import shrunk_model
    from sim.engine.run import load_workload_table
    from sim.serving.binding import bind, build_pool
    from sim.serving.plan import check_config

    trace = cfg.trace if cfg.trace.generator else replace(cfg.trace, generator=cfg.model.name)
    cfg = replace(cfg, model=shrunk_model(cfg.model, shrink, dtype), trace=trace)
    topo = check_config(cfg)
    if cfg.cluster.nodes * cfg.cluster.gpus_per_node != 1:
        raise MoesimError("realrun validate runs one device: cluster=1x1 (nodes=1, gpus_per_node=1, "
                          "expert_parallel=1)")
    rng_work, rng_pool, rng_bind, _ = (np.random.default_rng(s) for s in
                                       np.random.SeedSequence(cfg.seed).spawn(4))
    wl = load_workload_table(cfg.workload, rng_work).copy()
    wl["arrival_s"] = 0.0
    if pool is None:
        pool = build_pool(cfg.model, cfg.trace, sorted(set(wl["task"].astype(str))), rng_pool)
    if 0 < layers < cfg.model.num_layers:
        pool = replace(pool, experts=np.ascontiguousarray(pool.experts[:, :layers]))
        cfg = replace(cfg, model=replace(cfg.model, num_layers=layers))
    elif layers < 0 or layers > cfg.model.num_layers:
        raise MoesimError(f"layers={layers}; expected 0 (all) or 1..{cfg.model.num_layers}")
    return Scenario(cfg, wl, pool, bind(pool, wl, cfg.trace.overflow, rng_bind), topo)


def world(sc: Scenario, cost: Any) -> Any:
    """A fresh :class:`sim.serving.assemble.World` of the scenario (fresh policy objects)."""
    from sim.serving.assemble import World

    return World(sc.cfg, sc.workload, sc.pool, sc.binding, cost, topo=sc.topo)


def simulate(sc: Scenario, cost: Any) -> tuple[pd.DataFrame, CacheCounts, dict]:
    """Run the simulator on ``cost``; per iteration (its ``on_iteration`` hook): tokens, counts
    and simulated seconds."""
    from sim.engine.simulation import Simulation

    sim = Simulation(None, rng=np.random.default_rng(0), world=world(sc, cost))
    eb = sim.plan.expert_bytes
    rows: list[dict] = []
    sim.world.on_iteration.append(lambda it: rows.append(
        {"tokens": it.tokens, "sim_s": it.duration_s, **_record(it.counts, eb)}))
    sim.run()
    return pd.DataFrame(rows), sim.replicas[0].states[0].counts(), cost.report()


def serve(sc: Scenario, device: str, seed: int, progress: bool = False, clock: str = "wall"
          ) -> tuple[pd.DataFrame, Any]:
    """Serve the scenario for real; per iteration: tokens, counts and measured seconds."""
    from realrun.serve import RealServer
    from sim.cost.analytic import AnalyticCost

    w = world(sc, AnalyticCost(sc.cfg.model, sc.cfg.hardware))  # its cost model is never asked
    res = RealServer(w, device=device, seed=seed, clock=clock).run(progress=progress)
    eb = res.expert_bytes
    rows = [{"tokens": r.tokens, "decode": r.decode, "requests": r.requests, "pairs": r.pairs,
             "real_s": r.measured_s, "real_wall_s": r.wall_s, "real_cpu_s": r.cpu_s,
             **_record(r.counts, eb)} for r in res.iterations]
    return pd.DataFrame(rows), res


def compare(sim_it: pd.DataFrame, real_it: pd.DataFrame, sim_total: CacheCounts,
            real_total: CacheCounts, expert_bytes: int) -> tuple[dict, pd.DataFrame]:
    """metrics.json's comparison and iterations.csv; raises if any count differs."""
    if len(sim_it) != len(real_it) or not (sim_it["tokens"].to_numpy() == real_it["tokens"].to_numpy()).all():
        raise MoesimError(f"the simulator ran {len(sim_it)} iterations, realrun {len(real_it)}, or "
                          f"their batches differ: the two sides did not serve the same iterations")
    it = real_it.copy()
    for c in COMPARED:
        it[f"{c}_sim"] = sim_it[c].to_numpy()
        it[f"{c}_real"] = real_it[c].to_numpy()
    it["sim_s"] = sim_it["sim_s"].to_numpy()
    clocks = [c for c in ("real_wall_s", "real_cpu_s") if c in it.columns]
    it = it[["tokens", "decode", "requests", "pairs", *[f"{c}_{s}" for c in COMPARED
                                                        for s in ("sim", "real")], "sim_s", "real_s",
             *clocks]]
    it.insert(0, "iteration", np.arange(len(it)))
    bad = [c for c in COMPARED if not (it[f"{c}_sim"] == it[f"{c}_real"]).all()]
    s_rec, r_rec = sim_total.record(expert_bytes), real_total.record(expert_bytes)
    bad += [k for k in ("misses", "h2d_bytes") if s_rec[k] != r_rec[k] and k not in bad]
    if sim_total.resident_hits != real_total.resident_hits and "hits" not in bad:
        bad.append("hits")
    err = np.abs(it["sim_s"] - it["real_s"]) / it["real_s"]
    out: dict[str, Any] = {}
    for k in s_rec:
        out[f"{k}_sim"], out[f"{k}_real"] = s_rec[k], r_rec[k]
    out["bytes_sim"], out["bytes_real"] = s_rec["h2d_bytes"], r_rec["h2d_bytes"]
    out["resident_hits_sim"], out["resident_hits_real"] = sim_total.resident_hits, real_total.resident_hits
    out["counts_identical"] = not bad
    out["iterations"] = int(len(it))
    out["latency_error_median"] = stable_float(np.median(err)) if len(err) else 0.0
    out["latency_error_p90"] = stable_float(np.quantile(err, 0.9)) if len(err) else 0.0
    out["latency_error_signed_median"] = stable_float(
        np.median((it["sim_s"] - it["real_s"]) / it["real_s"])) if len(err) else 0.0
    for c in clocks:  # the error on either clock, whichever the profile was measured on
        e = np.abs(it["sim_s"] - it[c]) / it[c]
        if (it[c] > 0).all() and len(e):
            out[f"latency_error_median_{c[5:-2]}"] = stable_float(np.median(e))
    tot_sim, tot_real = float(it["sim_s"].sum()), float(it["real_s"].sum())
    out["e2e_sim_s"], out["e2e_real_s"] = stable_float(tot_sim), stable_float(tot_real)
    out["e2e_error"] = stable_float(abs(tot_sim - tot_real) / tot_real) if tot_real else 0.0
    if bad:
        raise MoesimError(f"counts differ between the simulator and realrun: {', '.join(bad)} "
                          f"(sim {[s_rec[k] for k in bad if k in s_rec]}, real "
                          f"{[r_rec[k] for k in bad if k in r_rec]})")
    return out, it


def plot(it: pd.DataFrame, out_dir: Path, command: str, clock: str = "wall") -> list[Path]:
    """Simulated against measured per iteration (with y = x) and the error CDF."""
    from analysis.plots import pyplot

    plt = pyplot()
    paths = []
    fig, ax = plt.subplots(figsize=(5, 5))
    ms = it["real_s"] * 1e3
    ss = it["sim_s"] * 1e3
    ax.scatter(ms, ss, s=10, alpha=0.7, label="iteration")
    hi = float(max(ms.max(), ss.max())) * 1.05 if len(it) else 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="y = x")
    ax.set_xlabel(f"measured (ms, {clock})")
    ax.set_ylabel("simulated (ms)")
    ax.set_title("per-iteration latency", fontsize=10)
    ax.legend()
    fig.text(0.01, 0.005, command, fontsize=5)
    paths.append(out_dir / "sim_vs_real.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    err = np.sort(np.abs(it["sim_s"] - it["real_s"]) / it["real_s"]) * 100
    ax.plot(err, np.arange(1, len(err) + 1) / max(1, len(err)), drawstyle="steps-post")
    ax.set_xlabel("absolute per-iteration latency error (%)")
    ax.set_ylabel("share of iterations")
    ax.set_title("error CDF", fontsize=10)
    fig.text(0.01, 0.005, command, fontsize=5)
    paths.append(out_dir / "error_cdf.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _record(c: CacheCounts, expert_bytes: int) -> dict[str, int]:
    r = c.record(expert_bytes)
    r["hits"] = c.resident_hits  # (see COMPARED)
    return {k: r[k] for k in COMPARED}


def validate_task(cfg_node: Any) -> dict:
    """The Hydra task: calibrate if no profile is given, serve, simulate, compare, write."""
    import sys
    import time

    from sim.app.hydra_app import run_dir
    from sim.app.schemas.common import app_config
    from sim.app.schemas.realrun import RealrunValidateConfig
    from sim.common.files import atomic_write_bytes

    cfg = app_config(cfg_node, RealrunValidateConfig)
    import torch

    from realrun.calibrate import calibrate_model, device_label, load_average, write_profile
    from sim.cost.analytic import AnalyticCost
    from sim.cost.table import TableCost
    from sim.engine.run import _progress_enabled

    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise MoesimError("device=cuda asked for, but torch sees no CUDA GPU")
    out = Path(run_dir())
    out.mkdir(parents=True, exist_ok=True)
    base = SimConfig(**{k: getattr(cfg, k) for k in SimConfig.__dataclass_fields__})
    sc = scenario(base, cfg.shrink, cfg.model.dtype, layers=cfg.layers)
    label = device_label(torch.device(cfg.device))
    profile = cfg.profile
    t0 = time.perf_counter()
    if not profile:
        c = cfg.calibration
        rows, facts = calibrate_model(sc.cfg.model, cfg.device, list(c.tokens), list(c.copy_experts),
                                      list(c.contexts), c.warmup, c.reps, cfg.block_size, label,
                                      cfg.seed, cfg.clock)
        profile = str(write_profile(rows, out, {
            "device": label, "model": sc.cfg.model.name, "hidden": sc.cfg.model.hidden_size,
            "intermediate": sc.cfg.model.expert_intermediate_size, "dtype": sc.cfg.model.dtype,
            "shrink": cfg.shrink, **facts}))
    calib_s = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the calibration's slots, before realrun's
    progress = _progress_enabled(cfg.output.progress)
    real_it, res = serve(sc, cfg.device, cfg.seed, progress=progress, clock=cfg.clock)
    cost = TableCost.from_csv(profile, AnalyticCost(sc.cfg.model, sc.cfg.hardware), device=label)
    sim_it, sim_total, report = simulate(sc, cost)
    metrics, it = compare(sim_it, real_it, sim_total, res.counts, res.expert_bytes)
    p = sc.cfg.policy
    metrics = {"engine": "realrun validate", "device": label, "model": sc.cfg.model.name,
               "shrink": cfg.shrink, "layers": sc.cfg.model.num_layers, "cache_policy": p.cache,
               "prefetch_policy": p.prefetch,
               "expert_budget_fraction": sc.cfg.cluster.expert_budget_fraction,
               "requests": int(len(sc.workload)), "profile": str(profile),
               "clock": "cuda events" if str(cfg.device).startswith("cuda") else cfg.clock,
               "cost_model_report": report, **metrics}
    atomic_write_bytes((strict_json(metrics, indent=2) + "\n").encode(), out / "metrics.json")
    atomic_write_bytes(it.to_csv(index=False).encode(), out / "iterations.csv")
    timings = {"calibration_s": calib_s, "realrun_wall_s": res.wall_s, "argv": sys.argv,
               "load_average": list(load_average())}
    atomic_write_bytes((strict_json(timings, indent=2) + "\n").encode(), out / "timings.json")
    if cfg.plots:
        plot(it, out, "moesim realrun validate " + " ".join(sys.argv[1:]), metrics["clock"])
    ok = "identical" if metrics["counts_identical"] else "DIFFERENT"
    print(f"realrun validate {p.cache}/{p.prefetch} @ {sc.cfg.cluster.expert_budget_fraction:.0%} on "
          f"{label}, {metrics['iterations']} iterations: hits {metrics['hits_real']}, bytes "
          f"{metrics['bytes_real']} ({ok}); latency error median {metrics['latency_error_median']:.1%}, "
          f"p90 {metrics['latency_error_p90']:.1%}, end to end {metrics['e2e_error']:.1%} -> {out}")
    return metrics

