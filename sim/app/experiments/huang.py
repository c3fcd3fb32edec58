"""``moesim experiment huang``: Huang et al.'s headline comparisons ("Toward efficient inference
for mixture of experts", NeurIPS 2024, arXiv 2303.06182).

Three parts (``parts=[cache,placement,gating]``):

- ``cache``: expert buffering, LIFO against LRU, FIFO and Belady, in their batch setting (a batch
  of ``batch_size`` tokens needs the union of its experts, run in increasing id order: ``moesim
  cache mode=batch``) and per token (``mode=plain``).
- ``placement``: greedy, anti-correlation and EPLB-style placement against contiguous, planned on
  the first half of the prompts and evaluated on the second (``moesim placement``). Their "max
  device load" is the busiest GPU's share of a layer's tokens (1/D is perfect balance); ours is
  reported the same way, per batch (worst batch and mean) and over the whole test half.
- ``gating``: dynamic against static-capacity gating. No GPU: the analytic cost model prices one
  MoE layer's expert FFN on the trace's real per-batch expert counts, padded to the capacity
  ``ceil(capacity_factor x tokens x k / E)`` per expert (static; overflow dropped) or not
  (dynamic), labelled as an estimate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sim.app.experiments.base import run_experiment, say, write_json

PARTS = ("cache", "placement", "gating")


def part_cache(cfg: Any, out: Path, trace: Any) -> dict[str, Any]:
    from sim.replay.cache import run_replay

    caches = list(cfg.policy.caches)
    fracs = list(cfg.cluster.expert_budget_fractions)
    recs = []
    for mode in ("batch", "plain"):
        say(f"[cache] {mode} replay of {trace.num_tokens} tokens: {caches} at {fracs} ...")
        recs += run_replay(trace, caches, fracs, mode=mode, batch_size=cfg.batch_size,
                           model=cfg.model.name)
    keep = ("mode", "policy", "capacity_frac", "capacity", "hit_rate", "gap_to_belady_hit_rate",
            "loads", "h2d_bytes")
    recs = [{k: r[k] for k in keep} for r in recs]
    write_json({"kind": "experiment_part", "records": recs}, out / "cache" / "results.json")
    return {"records": recs, "batch_size": cfg.batch_size}


def part_placement(cfg: Any, out: Path, trace: Any) -> dict[str, Any]:
    from sim.replay.placement import evaluate
    from sim.world.model import expert_bytes

    D = cfg.cluster.expert_parallel
    say(f"[placement] {list(cfg.policy.placements)} on {D} GPUs ...")
    m = evaluate(trace, list(cfg.policy.placements), D, cfg.train_frac, cfg.batch_tokens,
                 dict(cfg.policy.placement_args), expert_bytes(cfg.model))
    rows = []
    for r in m["results"]:
        if "skipped" in r:
            continue
        rows.append({"policy": r["policy"],
                     "batch_max_share_worst": r["test_batch_worst_max_over_mean"] / D,
                     "batch_max_share_mean": r["test_batch_max_over_mean"] / D,
                     "max_share": r["test_max_over_mean"] / D,
                     "max_over_mean": r["test_max_over_mean"],
                     "replicas": r["replicas"]})
    batch = (f"{cfg.batch_tokens} tokens" if cfg.batch_tokens else "one prompt")
    note = (f"Metric: for each layer and batch ({batch}; {m['batches_test']} test batches from "
            f"{m['test_prompts']} held-out prompts), the busiest of {D} GPUs' share of the layer's "
            f"routed tokens (a replicated expert's tokens split equally among its copies); "
            f"averaged over layers, then the worst batch and the mean over batches. Perfect "
            f"balance is 1/{D} = {1 / D:.3f}. Huang et al.'s 'max device load' is this share on "
            f"their batches, so theirs and ours are on the same scale, but their 512-expert, "
            f"top-2 model concentrates load far more than DeepSeek-V2-Lite's 64 experts with "
            f"top-6 (six choices per token average out), so our contiguous baseline starts much "
            f"closer to 1/D.")
    res = {"rows": rows, "num_gpus": D, "metric_note": note,
           "lower_bound_max_over_mean": m["test_single_copy_lower_bound_max_over_mean"]}
    write_json({"kind": "experiment_part", **res, "evaluate": m}, out / "placement" / "results.json")
    return res


def part_gating(cfg: Any, out: Path, trace: Any) -> dict[str, Any]:
    from sim.cost import make_cost_model
    from traces.format import expert_counts

    cost = make_cost_model("analytic", cfg.model, cfg.hardware)
    ex = trace.experts.astype(np.int64)  # (T, L, K)
    T, L, K = ex.shape
    E = trace.num_experts
    cf = cfg.gating.capacity_factor
    layers = np.arange(0, L, max(1, L // 4))  # four layers per batch
    rows = []
    for B in cfg.gating.batch_tokens:
        nb = T // B
        if nb < 1:
            continue
        nb = min(nb, 64)  # batches measured (spread over the trace)
        starts = np.linspace(0, T - B, nb).astype(np.int64)
        cap = math.ceil(cf * B * K / E)
        dyn, sta, dropped = [], [], 0
        for s in starts:
            for counts in expert_counts(ex[s:s + B, layers], E):  # (E,) per measured layer
                dyn.append(float(cost.expert_s(counts).sum()))
                sta.append(float(cost.expert_s(np.full(E, cap)).sum()))
                dropped += int(np.maximum(counts - cap, 0).sum())
        routed = len(starts) * len(layers) * B * K
        rows.append({"batch_tokens": B, "capacity_per_expert": cap,
                     "dynamic_ms": 1e3 * float(np.mean(dyn)), "static_ms": 1e3 * float(np.mean(sta)),
                     "static_over_dynamic": float(np.mean(sta) / np.mean(dyn)),
                     "static_dropped_share": dropped / routed,
                     "padding_factor": E * cap / (B * K)})
    note = (f"ESTIMATE from the analytic cost model ({cfg.hardware.name}), not a measurement: no "
            f"GPU was used. Static gating computes every expert at its capacity "
            f"ceil({cf:g} x tokens x top-k / experts) and drops the overflow; dynamic gating "
            f"computes each expert on the tokens routed to it. Huang et al.'s 6.21x (LM) / 3.32x "
            f"(MT) also include the all-to-all of the padded buffers and the dispatch/combine "
            f"einsums of static gating, which this estimate leaves out, and their capacity factor "
            f"pads to a fixed size per expert of a 512-expert model.")
    res = {"rows": rows, "capacity_factor": cf, "note": note}
    write_json({"kind": "experiment_part", **res}, out / "gating" / "results.json")
    return res


def paper_vs_ours(res: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    c = res.get("cache")
    if c:
        def hr(mode: str, pol: str) -> str:
            return " / ".join(f"{r['hit_rate']:.3f}" for r in c["records"]
                              if r["mode"] == mode and r["policy"] == pol)
        fr = sorted({r["capacity_frac"] for r in c["records"]})
        fracs = " / ".join(f"{f:g}" for f in fr)
        pols = [p for p in ("lifo", "lru", "fifo", "belady")
                if any(r["policy"] == p for r in c["records"])]
        out.append({"claim": "batch setting: LIFO beats FIFO (and LRU), close to Belady with "
                             "load balancing",
                    "paper": "LIFO > FIFO; near Belady",
                    "ours": f"hit rate at {fracs} of experts: " + "; ".join(
                        f"{p} {hr('batch', p)}" for p in pols)})
        out.append({"claim": "per token (not their setting)", "paper": "not reported",
                    "ours": "; ".join(f"{p} {hr('plain', p)}" for p in pols)})
    p = res.get("placement")
    if p:
        by = {r["policy"]: r for r in p["rows"]}
        txt = "; ".join(f"{k} {v['batch_max_share_worst']:.3f} (mean {v['batch_max_share_mean']:.3f})"
                        for k, v in by.items())
        out.append({"claim": "max device load from > 0.6 to < 0.4 (greedy / anti-correlation)",
                    "paper": "> 0.6 -> < 0.4", "ours": f"busiest GPU's share, worst test batch "
                    f"(1/{p['num_gpus']} = {1 / p['num_gpus']:.3f} is perfect): {txt}"})
    g = res.get("gating")
    if g and g["rows"]:
        txt = "; ".join(f"{r['batch_tokens']} tok: {r['static_over_dynamic']:.2f}x" for r in g["rows"])
        out.append({"claim": "dynamic gating: throughput up to 6.21x (LM) / 3.32x (MT) over static",
                    "paper": "6.21x / 3.32x (measured, V100)",
                    "ours": f"cost-model ESTIMATE of expert FFN time static/dynamic: {txt}"})
    return out


def task(cfg_node: Any) -> dict[str, Any]:
    from analysis.experiment_report import write_huang_report
    from sim.app.experiments.config import HuangExperimentConfig

    return run_experiment(cfg_node, HuangExperimentConfig, "huang",
                          dict(zip(PARTS, (part_cache, part_placement, part_gating))),
                          paper_vs_ours, write_huang_report)
