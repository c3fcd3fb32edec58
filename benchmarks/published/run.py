"""Run moesim (analytic cost model) in the setting of every published measurement in ``rows.csv``
and print moesim / published per row, each policy group's ratio of ratios and the suite's
summaries; write ``results.csv``, the log-log plot of moesim against published (y = x) and the
ratio-of-ratios plot into OUT.

    python benchmarks/published/run.py OUT [--only SUBSTRING] [--suite serving|offload]
    python benchmarks/published/run.py --check      # the CSV contract and every row's config

A row gives the source (URL), the engine and its benchmark, the model (``conf/model``), dtype,
GPU kind (``conf/hardware``), GPUs, tensor-parallel degree, whether experts are sharded by TP or
placed by EP, the batch (``benchmark_latency``'s batch size, or ``benchmark_serving``'s
``--max-concurrency``), input and output lengths, the number of prompts, the engine's token budget
per iteration, the metric and the measured figure. The simulator serves ``num_prompts`` requests
of fixed lengths arriving at once, at most ``batch`` at a time (a closed loop of ``batch``
clients), on one replica of ``gpus`` GPUs. Metrics (every ratio is moesim time / published
time; < 1: moesim optimistic):

- ``batch_latency_s``: the time until the last request finishes (vLLM ``benchmark_latency``);
- ``tpot_s`` / ``ttft_s`` / ``e2e_s``: mean time per output token (after the first) / to the
  first token / from arrival to the last token;
- ``out_tok_s_per_gpu``: output tokens per second per GPU of a static batch (TensorRT-LLM
  ``gptSessionBenchmark``), compared as its time, ``batch * output_len / (figure * gpus)``;
- ``decode_tok_s``: tokens per second of one sequence (batch 1), compared as its time per token,
  ``1 / figure``, against moesim's mean time per output token.

Columns beyond the setting: ``offloaded`` (``yes`` where the setting keeps any expert off the GPU
or computes it elsewhere: ``expert_budget`` ``fill`` or a fraction < 1, a per-layer cache of k
experts, layer streaming, CPU experts; checked against the setting), ``suite`` (``serving``: the
50 rows of the first suite; ``offload``: rows added by the policy comparison), ``group`` (rows of
one group share model, hardware, host and workload and differ in policy; the group's first row is
its baseline), ``excluded`` (empty, or why the row cannot be modelled honestly; at most 10 % of
the offloaded rows; an excluded baseline excludes its group), ``overrides`` (``moesim sim``
keys, ``key=value`` separated by spaces, applied last). Offloaded rows with ``expert_budget`` =
``fill`` give the GPU the experts that fit beside the dense weights and
``cluster.reserved_bytes`` (less 1 GB of KV cache).

Routing: the fitted generator of the model where one ships (``traces/params``), else uniformly
random top-k. Nothing here is fitted to the rows: every constant comes from ``conf/``.
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
if str(HERE) not in sys.path:  # the suite's rooms beside this file (also when loaded by path)
    sys.path.insert(0, str(HERE))

from suite_figures import plot, plot_groups, ratio_of_ratios, summaries  # noqa: E402
from suite_rows import (  # noqa: E402
    BAND,
    SuiteError,
    check_rows,
    parse_overrides,
    published_s,
    read_rows,
)


def base_overrides(row: dict[str, str]) -> list[str]:
    """The row's setting as ``moesim sim`` overrides (the row's own ``overrides`` last)."""
    gpus, tp = int(row["gpus"]), int(row["tp"])
    ov = [f"model={row['model']}", f"hardware={row['hardware']}", "cluster=1x1",
          f"cluster.gpus_per_node={gpus}", f"cluster.expert_parallel={gpus}",
          f"cluster.tensor_parallel={tp}", f"cluster.moe_parallel={row['moe_parallel']}",
          "cluster.expert_budget_fraction=1.0", f"model.dtype={row['dtype']}",
          f"serving.token_budget={row['token_budget']}",
          f"serving.max_batch_requests={row['batch']}", "output.progress=off",
          "output.requests_parquet=false", f"engine={row['engine_conf'] or 'none'}"]
    if row["expert_budget"] == "fill":
        ov += [f"policy.cache={row['cache_policy']}", f"cluster.cache_scope={row['cache_scope']}",
               "cluster.warm_start=true"]
    return ov + [f"{k}={v}" for k, v in parse_overrides(row).items()]


def compose_row(row: dict[str, str]):
    """The row's SimConfig; an unknown key or value is a SuiteError naming the row."""
    from hydra import compose

    from sim.world.config import to_sim_config

    try:
        return to_sim_config(compose("sim", overrides=base_overrides(row)))
    except Exception as e:  # hydra / omegaconf / schema errors: one line naming the row
        msg = " ".join(str(e).split())
        raise SuiteError(f"row {row['id']}: {type(e).__name__}: {msg}") from None


def simulate_row(row: dict[str, str]) -> float:
    from sim.common.errors import ConfigError
    from sim.engine.run import simulate
    from sim.serving.binding import build_pool
    from sim.serving.testing import random_pool
    from traces.workload import make_workload

    cfg = compose_row(row)
    if row["expert_budget"] == "fill":
        from sim.world.model import dense_weight_bytes

        c = cfg.cluster
        c.expert_budget_bytes = int(cfg.hardware.memory_bytes - c.reserved_bytes -
                                    dense_weight_bytes(cfg.model) / int(row["gpus"]) - 1e9)
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
        try:
            sim, metrics = simulate(cfg, workload=wl, pool=pool)
        except ConfigError as e:  # a setting the simulator refuses: one line naming the row
            raise SuiteError(f"row {row['id']}: {e}") from None
        done = np.sort(sim.req.finish_s)
        nxt = np.concatenate([np.zeros(batch), done[: n - batch]])
        if np.allclose(nxt, arrival):
            break
        arrival = np.maximum.accumulate(nxt)
    metric = row["metric"]
    if metric in ("batch_latency_s", "out_tok_s_per_gpu"):
        return float(metrics["sim_time_s"])
    if metric == "decode_tok_s":
        return float(metrics["tpot_s"]["mean"])
    return float(metrics[metric]["mean"])


def run(args: argparse.Namespace) -> int:
    from hydra import initialize_config_module

    from sim.world.config import register_configs

    rows = read_rows(args.rows)
    check_rows(rows)
    sel = [r for r in rows if args.only in r["id"] and args.suite in ("", r["suite"])]
    register_configs()
    results = []
    with initialize_config_module(config_module="conf", version_base="1.3"):
        if args.check:
            for row in sel:
                if not row["excluded"]:
                    compose_row(row)
            print(f"{len(rows)} rows: CSV contract holds; {len(sel)} rows checked, "
                  f"{sum(1 for r in sel if not r['excluded'])} configs composed")
            return 0
        for row in sel:
            if row["excluded"]:
                print(f"{row['id']:28s} excluded: {row['excluded']}")
                continue
            t0 = time.perf_counter()
            sim = simulate_row(row)
            meas = published_s(row)
            results.append({"id": row["id"], "metric": row["metric"], "measured": meas,
                            "moesim": sim, "ratio": sim / meas, "group": row["group"],
                            "suite": row["suite"], "offloaded": row["offloaded"],
                            "source": row["source"], "wall_s": time.perf_counter() - t0})
    if not results:
        raise SuiteError("no row selected")
    rr = ratio_of_ratios(results)
    for r in results:
        r["ratio_of_ratios"] = rr.get(r["id"], "")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    print(f"{'row':28s} {'metric':17s} {'published_s':>11s} {'moesim_s':>10s} {'ratio':>7s} "
          f"{'r of r':>7s}")
    for r in results:
        flag = "" if BAND[0] <= r["ratio"] <= BAND[1] else "  OUTSIDE [0.67, 1.5]"
        rrs = f"{rr[r['id']]:7.3f}" if r["id"] in rr else " " * 7
        print(f"{r['id']:28s} {r['metric']:17s} {r['measured']:11.4f} {r['moesim']:10.4f} "
              f"{r['ratio']:7.3f} {rrs}{flag}")
    for line in summaries(results, rr):
        print(line)
    plot(results, args.out / "moesim_vs_published.png")
    if rr:
        plot_groups(results, args.out / "ratio_of_ratios.png")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--rows", type=Path, default=HERE / "rows.csv")
    ap.add_argument("--only", default="")
    ap.add_argument("--suite", default="", choices=["", "serving", "offload"])
    ap.add_argument("--check", action="store_true", help="check the rows and their configs only")
    args = ap.parse_args()
    if args.out is None and not args.check:
        ap.error("OUT is required unless --check")
    try:
        return run(args)
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
