"""Run moesim (analytic cost model) in the setting of every published measurement in ``rows.csv``
and print moesim / published with the median and worst |ratio - 1|; write ``results.csv`` and
the log-log plot of moesim against published (y = x) into OUT.

    python benchmarks/published/run.py OUT [--only SUBSTRING]

A row gives the source (URL), the engine and its benchmark, the model (``conf/model``), dtype,
GPU kind (``conf/hardware``), GPUs, tensor-parallel degree, whether experts are sharded by TP or
placed by EP, the batch (``benchmark_latency``'s batch size, or ``benchmark_serving``'s
``--max-concurrency``), input and output lengths, the number of prompts, the engine's token budget
per iteration, the metric and the measured figure. The simulator serves ``num_prompts`` requests
of fixed lengths arriving at once, at most ``batch`` at a time (a closed loop of ``batch``
clients), on one replica of ``gpus`` GPUs with every expert resident. Metrics:

- ``batch_latency_s``: the time until the last request finishes (vLLM ``benchmark_latency``);
- ``tpot_s`` / ``ttft_s``: mean time per output token (after the first) / to the first token;
- ``out_tok_s_per_gpu``: output tokens per second per GPU of a static batch (TensorRT-LLM
  ``gptSessionBenchmark``: ``batch`` requests prefilled in one step, then decoded together),
  compared as its time, ``batch * output_len / (figure * gpus)``, so every ratio reads the same
  way (moesim time / published time; < 1: moesim optimistic).

``engine_conf`` names the serving engine (``conf/engine``: its per-iteration host overhead, with
its source). Offloaded rows (``expert_budget`` = ``fill``) give the GPU the experts that fit in
its memory beside the dense weights and ``cluster.reserved_bytes`` (less 1 GB of KV cache), with
the row's ``cache_policy`` and ``cache_scope``; every other row holds every expert.

Routing: the fitted generator of the model where one ships (``traces/params``), else uniformly
random top-k (the model's own routing skew is then missing; see the README).
Nothing here is fitted to the rows: every constant comes from ``conf/hardware`` and
``conf/model``, the same for every row.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def simulate_row(row: dict[str, str]) -> float:
    from hydra import compose

    from sim.engine.run import simulate
    from sim.serving.binding import build_pool
    from sim.serving.testing import random_pool
    from sim.world.config import to_sim_config
    from traces.workload import make_workload

    gpus, tp = int(row["gpus"]), int(row["tp"])
    overrides = [f"model={row['model']}", f"hardware={row['hardware']}", "cluster=1x1",
                 f"cluster.gpus_per_node={gpus}", f"cluster.expert_parallel={gpus}",
                 f"cluster.tensor_parallel={tp}", f"cluster.moe_parallel={row['moe_parallel']}",
                 "cluster.expert_budget_fraction=1.0", f"model.dtype={row['dtype']}",
                 f"serving.token_budget={row['token_budget']}",
                 f"serving.max_batch_requests={row['batch']}", "output.progress=off",
                 "output.requests_parquet=false", f"engine={row['engine_conf'] or 'none'}"]
    offloaded = row.get("expert_budget", "") == "fill"
    if offloaded:
        overrides += [f"policy.cache={row['cache_policy']}", f"cluster.cache_scope={row['cache_scope']}",
                      "cluster.warm_start=true"]
    cfg = to_sim_config(compose("sim", overrides=overrides))
    if offloaded:
        from sim.world.model import dense_weight_bytes

        c = cfg.cluster
        c.expert_budget_bytes = int(cfg.hardware.memory_bytes - c.reserved_bytes -
                                    dense_weight_bytes(cfg.model) / gpus - 1e9)
    n, inp, out = int(row["num_prompts"]), int(row["input_len"]), int(row["output_len"])
    batch = int(row["batch"])
    m = cfg.model
    rng = np.random.default_rng(0)
    if (ROOT / "traces" / "params" / f"{m.name}.json").is_file():
        pool = build_pool(m, cfg.trace, ["unknown"], rng)
    else:
        pool = random_pool(m.num_layers, m.num_experts, m.top_k, entries=8, tokens=inp + out, rng=rng)
    # a closed loop of ``batch`` clients: request j >= batch is sent when the (j - batch)-th
    # completion comes back (fixed point of a few runs; the first sends everything at once)
    arrival = np.zeros(n)
    for _ in range(4 if n > batch else 1):
        wl = make_workload(arrival.tolist(), [inp] * n, [out] * n)
        sim, metrics = simulate(cfg, workload=wl, pool=pool)
        done = np.sort(sim.req.finish_s)
        nxt = np.concatenate([np.zeros(batch), done[: n - batch]])
        if np.allclose(nxt, arrival):
            break
        arrival = np.maximum.accumulate(nxt)
    metric = row["metric"]
    if metric in ("batch_latency_s", "out_tok_s_per_gpu"):
        return float(metrics["sim_time_s"])
    if metric in ("tpot_s", "ttft_s", "e2e_s"):
        return float(metrics[metric]["mean"])
    raise ValueError(f"row {row['id']}: unknown metric {metric!r}")


def published_s(row: dict[str, str]) -> float:
    """The published figure as a time (seconds), comparable with moesim's."""
    meas = float(row["measured"])
    if row["metric"] == "out_tok_s_per_gpu":
        return int(row["batch"]) * int(row["output_len"]) / (meas * int(row["gpus"]))
    return meas


def plot(results: list[dict], path: Path) -> None:
    from analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = {"batch_latency_s": "o", "tpot_s": "s", "ttft_s": "^", "e2e_s": "D",
               "out_tok_s_per_gpu": "v"}
    for metric, mk in markers.items():
        sel = [r for r in results if r["metric"] == metric]
        if sel:
            ax.scatter([r["measured"] for r in sel], [r["moesim"] for r in sel], marker=mk,
                       label=metric)
    lo = min(min(r["measured"], r["moesim"]) for r in results) / 1.5
    hi = max(max(r["measured"], r["moesim"]) for r in results) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.plot([lo, hi], [lo * 1.5, hi * 1.5], "k:", lw=0.6, label="x 1.5 / 0.67")
    ax.plot([lo, hi], [lo / 1.5, hi / 1.5], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="published (s)", ylabel="moesim (s)",
           title="moesim (analytic) vs published measurements")
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "python benchmarks/published/run.py OUT", fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=Path, default=HERE / "rows.csv")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    from hydra import initialize_config_module

    from sim.world.config import register_configs

    register_configs()
    rows = [r for r in read_rows(args.rows) if args.only in r["id"]]
    results = []
    with initialize_config_module(config_module="conf", version_base="1.3"):
        for row in rows:
            t0 = time.perf_counter()
            sim = simulate_row(row)
            meas = published_s(row)
            results.append({"id": row["id"], "metric": row["metric"], "measured": meas,
                            "moesim": sim, "ratio": sim / meas, "source": row["source"],
                            "wall_s": time.perf_counter() - t0})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    print(f"{'row':22s} {'metric':17s} {'published_s':>11s} {'moesim_s':>10s} {'ratio':>7s}")
    for r in results:
        flag = "" if 0.67 <= r["ratio"] <= 1.5 else "  OUTSIDE [0.67, 1.5]"
        print(f"{r['id']:22s} {r['metric']:17s} {r['measured']:11.4f} {r['moesim']:10.4f} "
              f"{r['ratio']:7.3f}{flag}")
    err = np.abs(np.array([r["ratio"] for r in results]) - 1.0)
    outside = int(((np.array([r["ratio"] for r in results]) < 0.67) |
                   (np.array([r["ratio"] for r in results]) > 1.5)).sum())
    print(f"{len(results)} rows: median |ratio - 1| = {np.median(err):.3f}, worst = {err.max():.3f}, "
          f"{outside} outside [0.67, 1.5]")
    plot(results, args.out / "moesim_vs_published.png")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
