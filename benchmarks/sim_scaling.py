"""Scaling benchmark: the simulator's cost against cluster size (GPUs) and traffic (requests).

    python benchmarks/sim_scaling.py OUT_DIR                      # default grid (about 5 min, 2 cores)
    python benchmarks/sim_scaling.py OUT_DIR --full               # 8-128 GPUs x 1, 2, 4, 8x the rate
    python benchmarks/sim_scaling.py OUT_DIR --model deepseek-v3 --ep 16 --gpus 16,32,64,128
    python benchmarks/sim_scaling.py OUT_DIR --model deepseek-v3 --ep 64 --gpus 64,256,1024 \
        --rates 16 policy.placement=split policy.placement_args.num_redundant=64
                                                                  # up to bench_cluster_1024's shape

Each point is ``moesim sim`` in its own process: ``--gpus`` GPUs as replicas of ``--ep`` GPUs
(nodes of 8 GPUs; ``cluster.nodes = GPUs / 8``, EP 16 replicas span two nodes), the Azure 2023
conversation and code traces merged (``workload.path=[conv,code]``), arrivals ``rate`` times
faster (``workload.time_scale = 1 / rate``), and a bounded amount of work: the requests that
arrive in the first ``--window`` simulated seconds (``workload.max_requests`` = that count, taken
from the merged trace; the run continues until they all complete). So requests grow with the
rate, and GPUs add replicas that share the same traffic (round-robin).

Per point it prints GPUs, rate, requests, simulated seconds, wall seconds (the simulation's own,
``run_info.json``: routing pool + simulation, no interpreter start-up), simulated s per wall s,
user and system CPU seconds of the process (start-up included), simulated s per CPU s (user +
system: the figure to quote on a shared machine, where wall time measures the other jobs), its
peak RSS (``os.wait4`` of that child, so each point's own peak) and whether every request asked
completed, and writes ``OUT_DIR/scaling.csv`` and
``OUT_DIR/scaling.png`` (wall time against GPUs, one line per rate, and against requests, one line
per GPU count; log-log with a slope-1 guide),
captioned with the command that regenerates it. Needs ../shared/data (the Azure traces).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT.parent / "shared/data/requests/azure-llm-2023"
DEFAULT_TRACES = [str(AZURE / "AzureLLMInferenceTrace_conv.csv"),
                  str(AZURE / "AzureLLMInferenceTrace_code.csv")]
FIELDS = ("gpus", "replicas", "rate", "requests", "sim_s", "wall_s", "sim_s_per_wall_s", "user_cpu_s",
          "sim_s_per_cpu_s", "peak_rss_mib", "iterations", "sys_cpu_s", "requests_asked")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def requests_in_window(paths: list[str], rates: list[float], window_s: float) -> dict[float, int]:
    """Per rate: the requests of the merged trace (read once) arriving in the first ``window_s``
    simulated seconds at ``rate`` times the recorded rate."""
    import numpy as np

    from traces.request_import import load_workloads

    arrival = load_workloads(paths)["arrival_s"].to_numpy()
    return {rate: int(np.searchsorted(arrival / rate, window_s, side="left")) for rate in rates}


def run_point(gpus: int, ep: int, rate: float, n_req: int, a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "sim", "sim", f"model={a.model}", "hardware=h100-sxm",
               f"cluster.nodes={max(1, gpus // 8)}", f"cluster.gpus_per_node={min(gpus, 8)}",
               f"cluster.expert_parallel={ep}", f"cluster.expert_budget_fraction={a.budget}",
               "workload=azure_conv", f"workload.path=[{','.join(a.traces)}]",
               f"workload.time_scale={1.0 / rate!r}", f"workload.max_requests={n_req}",
               "serving.token_budget=8192", "serving.max_batch_requests=256",
               f"hydra.run.dir={d}", "output.progress=off", "output.print_summary=false",
               "output.requests_parquet=false", *a.overrides]
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # (warm: Python's byte code cached on disk)
        p = subprocess.Popen(cmd, cwd=ROOT, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        total = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"point gpus={gpus} rate={rate} failed ({p.returncode}): {shlex.join(cmd)}")
        info = json.loads((Path(d) / "run_info.json").read_text())
        m = json.loads((Path(d) / "metrics.json").read_text())
    wall = float(info["wall_time_s"])
    return {"gpus": gpus, "replicas": gpus // ep, "rate": rate, "requests": m["requests_completed"],
            "sim_s": round(m["sim_time_s"], 2), "wall_s": round(wall, 3),
            "sim_s_per_wall_s": round(m["sim_time_s"] / wall, 1), "user_cpu_s": round(ru.ru_utime, 2),
            "sim_s_per_cpu_s": round(m["sim_time_s"] / max(ru.ru_utime + ru.ru_stime, 1e-9), 1),
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1), "iterations": m["iterations"],
            "sys_cpu_s": round(ru.ru_stime, 2), "requests_asked": n_req,
            "command_wall_s": round(total, 2)}


Y_LABELS = {"wall_s": "wall time of the simulation (s)",
            "user_cpu_s": "user CPU time of the process (s, start-up included)"}


def plot(rows: list[dict], path: Path, caption: str, y: str = "wall_s") -> None:
    from analysis.plots import pyplot, save_figure

    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    rates = sorted({r["rate"] for r in rows})
    gpus = sorted({r["gpus"] for r in rows})
    for rate in rates:
        pts = sorted((r["gpus"], r[y]) for r in rows if r["rate"] == rate)
        ax1.plot(*zip(*pts), marker="o", label=f"{rate:g}x rate")
    for g in gpus:
        pts = sorted((r["requests"], r[y]) for r in rows if r["gpus"] == g)
        ax2.plot(*zip(*pts), marker="o", label=f"{g:g} GPUs")
    for ax, xs in ((ax1, gpus), (ax2, sorted({r["requests"] for r in rows}))):
        lo = min(r[y] for r in rows)
        ax.plot([xs[0], xs[-1]], [lo, lo * xs[-1] / xs[0]], "k:", lw=1, label="linear (slope 1)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(Y_LABELS[y])
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_xticks(gpus)
    ax1.set_xlabel(f"GPUs (replicas of EP {int(rows[0]['gpus'] // rows[0]['replicas'])})")
    ax2.set_xlabel("requests simulated")
    ax1.set_title("cost against cluster size")
    ax2.set_title("cost against traffic")
    fig.tight_layout()
    save_figure(fig, path, caption=caption)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (scaling.csv, scaling.png)")
    ap.add_argument("--full", action="store_true", help="the whole grid: 8,16,32,64,128 GPUs x 1,2,4,8x")
    ap.add_argument("--gpus", type=_ints, default=None,
                    help="GPU counts, up to 1024 (128 nodes; default 8,32,128)")
    ap.add_argument("--rates", type=_floats, default=None, help="rate multipliers (default 1,4)")
    ap.add_argument("--window", type=float, default=60.0,
                    help="simulated seconds of arrivals per point (bounds the work; default 60)")
    ap.add_argument("--model", default="mixtral-8x7b")
    ap.add_argument("--ep", type=int, default=8, help="GPUs per replica (8, 16, 64: whole nodes)")
    ap.add_argument("--budget", type=float, default=0.5, help="cluster.expert_budget_fraction")
    ap.add_argument("--traces", type=lambda s: s.split(","), default=DEFAULT_TRACES,
                    help="request traces, comma-separated (default: Azure conv,code)")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw OUT_DIR/scaling.png from OUT_DIR/scaling.csv")
    ap.add_argument("--y", choices=list(Y_LABELS), default="wall_s",
                    help="what the plot shows (user_cpu_s on a shared machine, where wall time "
                         "measures the other jobs)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every point")
    a = ap.parse_args()
    caption = "python benchmarks/sim_scaling.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    if a.replot:  # the caption names the command that measured the points, then this one
        with open(Path(a.out) / "scaling.csv") as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        made = (Path(a.out) / "command.txt").read_text().strip()
        plot(rows, Path(a.out) / "scaling.png", f"{made}; replotted: {caption}", a.y)
        return 0
    gpus = a.gpus or ([8, 16, 32, 64, 128] if a.full else [8, 32, 128])
    rates = a.rates or ([1.0, 2.0, 4.0, 8.0] if a.full else [1.0, 4.0])
    missing = [p for p in a.traces if not Path(p).exists()]
    if missing:
        print(f"needs {missing[0]} (../shared/data absent?)", file=sys.stderr)
        return 2
    bad = [g for g in gpus if g < a.ep or g % a.ep or (g > 8 and g % 8)]
    if bad:
        print(f"--gpus {bad}: each must be a multiple of --ep {a.ep} (and of 8 above one node)",
              file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    counts = requests_in_window(a.traces, rates, a.window)
    head = f"{'GPUs':>5} {'rate':>5} {'requests':>8} {'sim s':>8} {'wall s':>8} {'sim s/wall s':>12} " \
           f"{'user s':>7} {'sys s':>6} {'sim s/CPU s':>11} {'peak RSS MiB':>12} {'all done':>8}"
    print(head, flush=True)
    rows = []
    for g in gpus:
        for rate in rates:
            r = run_point(g, a.ep, rate, counts[rate], a)
            rows.append(r)
            print(f"{g:>5} {rate:>5g} {r['requests']:>8} {r['sim_s']:>8.1f} {r['wall_s']:>8.2f} "
                  f"{r['sim_s_per_wall_s']:>12.1f} {r['user_cpu_s']:>7.1f} {r['sys_cpu_s']:>6.1f} "
                  f"{r['sim_s_per_cpu_s']:>11.1f} {r['peak_rss_mib']:>12.0f} "
                  f"{'yes' if r['requests'] == r['requests_asked'] else 'NO':>8}",
                  flush=True)
    from sim.common.files import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*FIELDS, "command_wall_s"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(buf.getvalue().encode(), out / "scaling.csv")
    atomic_write_bytes((caption + "\n").encode(), out / "command.txt")
    plot(rows, out / "scaling.png", caption, a.y)
    print(f"wrote {out / 'scaling.csv'} and {out / 'scaling.png'} (load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
