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
from urllib.parse import urlparse

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

COLUMNS = ("id", "source", "engine", "engine_conf", "model", "dtype", "hardware", "gpus", "tp",
           "moe_parallel", "batch", "input_len", "output_len", "num_prompts", "token_budget",
           "metric", "measured", "expert_budget", "cache_policy", "cache_scope", "offloaded",
           "suite", "group", "excluded", "overrides", "note")
METRICS = ("batch_latency_s", "tpot_s", "ttft_s", "e2e_s", "out_tok_s_per_gpu", "decode_tok_s")
#: what rows of one group share (besides the ``host=`` override): all but the policy
GROUP_SHARED = ("model", "hardware", "gpus", "tp", "batch", "input_len", "output_len",
                "num_prompts", "metric")
MAX_EXCLUDED_SHARE = 0.10
BAND, RR_BAND = (0.67, 1.5), (0.85, 1.18)


class SuiteError(ValueError):
    """A row breaks the CSV contract (the message names the row)."""


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def parse_overrides(row: dict[str, str]) -> dict[str, str]:
    """The row's ``key=value`` overrides, in order; a token without ``=`` is an error."""
    out: dict[str, str] = {}
    for tok in row.get("overrides", "").split():
        key, eq, value = tok.partition("=")
        if not eq or not key or not value:
            raise SuiteError(f"row {row['id']}: override {tok!r} is not key=value")
        if key in out:
            raise SuiteError(f"row {row['id']}: override {key!r} given twice")
        out[key] = value
    return out


def setting_offloaded(row: dict[str, str]) -> bool:
    """Whether the row's setting keeps any expert off the GPU or computes it elsewhere: an
    ``expert_budget`` of ``fill`` or a fraction < 1, a budget in bytes or a fraction < 1 among
    the overrides, a per-layer cache of k experts, layer streaming, or CPU experts."""
    budget = row.get("expert_budget", "").strip()
    if budget == "fill" or (budget and float(budget) < 1.0):
        return True
    o = parse_overrides(row)
    return (int(o.get("cluster.experts_per_layer", "0")) > 0
            or float(o.get("cluster.expert_budget_fraction", "1")) < 1.0
            or int(o.get("cluster.expert_budget_bytes", "0")) > 0
            or o.get("offload.layer_streaming", "false").lower() == "true"
            or o.get("offload.expert_exec", "copy") in ("cpu", "auto"))


def group_key(row: dict[str, str]) -> tuple[str, ...]:
    """What every row of a group shares with its baseline."""
    return tuple(row[c] for c in GROUP_SHARED) + (parse_overrides(row).get("host", ""),)


def check_rows(rows: list[dict[str, str]]) -> None:
    """The CSV contract; raises SuiteError naming the first row that breaks it."""
    seen: set[str] = set()
    baselines: dict[str, dict[str, str]] = {}
    for row in rows:
        try:
            _check_row(row, seen, baselines)
        except (TypeError, ValueError) as e:
            if isinstance(e, SuiteError):
                raise
            raise SuiteError(f"row {row.get('id') or '?'}: {e}") from None
    off = [r for r in rows if r["offloaded"] == "yes"]
    n_ex = sum(1 for r in off if r["excluded"])
    if n_ex > MAX_EXCLUDED_SHARE * len(off):
        raise SuiteError(f"{n_ex} of {len(off)} offloaded rows excluded: more than "
                         f"{MAX_EXCLUDED_SHARE:.0%}")


def _check_row(row: dict[str, str], seen: set[str], baselines: dict[str, dict[str, str]]) -> None:
    """One row's part of the contract (ids seen and group baselines carried between rows)."""
    rid = row.get("id") or "?"
    missing = [c for c in COLUMNS if row.get(c) is None]
    if missing:
        raise SuiteError(f"row {rid}: missing columns {missing}")
    if rid in seen:
        raise SuiteError(f"row {rid}: id given twice")
    seen.add(rid)
    if row["metric"] not in METRICS:
        raise SuiteError(f"row {rid}: unknown metric {row['metric']!r} (known: {METRICS})")
    if not float(row["measured"]) > 0:
        raise SuiteError(f"row {rid}: measured must be > 0")
    if row["offloaded"] not in ("yes", "no"):
        raise SuiteError(f"row {rid}: offloaded must be yes or no, not {row['offloaded']!r}")
    if row["suite"] not in ("serving", "offload"):
        raise SuiteError(f"row {rid}: suite must be serving or offload")
    if (row["offloaded"] == "yes") != setting_offloaded(row):
        raise SuiteError(f"row {rid}: offloaded={row['offloaded']} disagrees with its setting "
                         f"(expert_budget={row['expert_budget']!r}, "
                         f"overrides={row['overrides']!r})")
    if row["excluded"] and row["offloaded"] != "yes":
        raise SuiteError(f"row {rid}: only offloaded rows may be excluded")
    g = row["group"]
    if g:
        base = baselines.setdefault(g, row)
        if group_key(row) != group_key(base):
            raise SuiteError(f"row {rid}: group {g} shares model, hardware, host and workload "
                             f"with its baseline {base['id']}; this row differs")
        if base["excluded"] and not row["excluded"]:
            raise SuiteError(f"row {rid}: group {g}'s baseline {base['id']} is excluded, so is "
                             f"the group")


def published_s(row: dict[str, str]) -> float:
    """The published figure as a time (seconds), comparable with moesim's."""
    meas = float(row["measured"])
    if row["metric"] == "out_tok_s_per_gpu":
        return int(row["batch"]) * int(row["output_len"]) / (meas * int(row["gpus"]))
    if row["metric"] == "decode_tok_s":
        return 1.0 / meas
    return meas


def ratio_of_ratios(results: list[dict]) -> dict[str, float]:
    """Per row id in a group: (moesim_r / moesim_b) / (published_r / published_b), b the group's
    first row (both as times): 1 where moesim moves by as much as the source when the policy
    changes. Rows without a group are absent."""
    base: dict[str, dict] = {}
    out: dict[str, float] = {}
    for r in results:
        if not r["group"]:
            continue
        b = base.setdefault(r["group"], r)
        out[r["id"]] = (r["moesim"] / b["moesim"]) / (r["measured"] / b["measured"])
    return out


def source_key(url: str) -> str:
    """One source per paper or repository: github.com/OWNER/REPO, else host + path."""
    u = urlparse(url)
    parts = [p for p in u.path.split("/") if p]
    if u.netloc.endswith("github.com") and len(parts) >= 2:
        return f"{u.netloc}/{parts[0]}/{parts[1]}"
    return u.netloc + u.path.rstrip("/")


def band_stats(ratios: list[float], lo: float = BAND[0], hi: float = BAND[1]) -> tuple[float, int]:
    """(median |ratio - 1|, count outside [lo, hi])."""
    a = np.asarray(ratios, dtype=float)
    return float(np.median(np.abs(a - 1.0))), int(((a < lo) | (a > hi)).sum())


def summaries(results: list[dict], rr: dict[str, float]) -> list[str]:
    """The suite's three summary lines (sections with no rows are left out)."""
    lines = []
    serving = [r["ratio"] for r in results if r["suite"] == "serving"]
    if serving:
        med, out = band_stats(serving)
        lines.append(f"serving suite (the first 50 rows): {len(serving)} rows, median |ratio - 1| "
                     f"= {med:.3f}, {out} outside {list(BAND)}")
    off = [r for r in results if r["offloaded"] == "yes"]
    if off:
        med, out = band_stats([r["ratio"] for r in off])
        n_src = len({source_key(r["source"]) for r in off})
        lines.append(f"offloaded (not excluded): {len(off)} rows from {n_src} sources, median "
                     f"|ratio - 1| = {med:.3f}, {out} outside {list(BAND)}")
    firsts = {r["group"]: r["id"] for r in reversed(results) if r["group"]}
    members = [v for k, v in rr.items() if k not in firsts.values()]
    if members:
        inside = sum(1 for v in members if RR_BAND[0] <= v <= RR_BAND[1])
        lines.append(f"groups: {len(firsts)}, {inside} of {len(members)} non-baseline rows "
                     f"({inside / len(members):.0%}) with ratio of ratios in {list(RR_BAND)}")
    return lines


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


def plot(results: list[dict], path: Path) -> None:
    from analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = {"batch_latency_s": "o", "tpot_s": "s", "ttft_s": "^", "e2e_s": "D",
               "out_tok_s_per_gpu": "v", "decode_tok_s": "P"}
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


def plot_groups(results: list[dict], path: Path) -> None:
    """Each grouped row's published time ratio to its baseline against moesim's (y = x: moesim
    moves as the source does when the policy changes)."""
    from analysis.plots import pyplot

    base: dict[str, dict] = {}
    pts: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r["group"]:
            b = base.setdefault(r["group"], r)
            pts.setdefault(r["group"], []).append((r["measured"] / b["measured"],
                                                   r["moesim"] / b["moesim"]))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    for g, p in pts.items():
        ax.scatter([x for x, _ in p], [y for _, y in p], label=g, s=18)
    vals = [v for p in pts.values() for xy in p for v in xy]
    lo, hi = min(vals) / 1.3, max(vals) * 1.3
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.plot([lo, hi], [lo * RR_BAND[1], hi * RR_BAND[1]], "k:", lw=0.6, label="x 1.18 / 0.85")
    ax.plot([lo, hi], [lo * RR_BAND[0], hi * RR_BAND[0]], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="published: row time / baseline time",
           ylabel="moesim: row time / baseline time", title="policy groups: ratio of ratios")
    ax.legend(fontsize=6, ncol=2)
    fig.text(0.01, 0.01, "python benchmarks/published/run.py OUT", fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


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
