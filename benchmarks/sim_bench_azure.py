"""Benchmark: simulated seconds per wall second of the Azure-conversation / Mixtral preset.

    python benchmarks/sim_bench_azure.py [--repeat 3] [--max-requests N] [--path CSV]

Runs ``moesim sim experiment=bench_azure_mixtral workload.path=CSV`` ``--repeat`` times in fresh
processes and prints, per run and as the median: the whole command's wall time (``time``), the
simulation's own wall time (``run_info.json``: pool generation + simulation, not interpreter and
Hydra start-up), the simulated time, and simulated seconds per wall second for both. Needs
../shared/data (the Azure trace); target >= 300 simulated s per wall s, goal 1000.

The runs are warm as a user's second run is: numba's compiled kernels, the routing pool and
Python's byte code cached on disk. ``PYTHONDONTWRITEBYTECODE`` is dropped from the children's
environment (set, every run would compile the project's modules again: ~0.3 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared/data/requests/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-requests", type=int, default=0)
    ap.add_argument("--path", default=str(DEFAULT))
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides")
    a = ap.parse_args()
    if not Path(a.path).exists():
        print(f"needs {a.path} (../shared/data absent)", file=sys.stderr)
        return 2
    rows = []
    for i in range(a.repeat):
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "sim", "sim", "experiment=bench_azure_mixtral",
                   f"workload.path={a.path}", f"workload.max_requests={a.max_requests}",
                   f"hydra.run.dir={d}", "output.progress=off", "output.print_summary=false", *a.overrides]
            t0 = time.perf_counter()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # (warm: byte code cached, see the docstring)
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            total = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            info = json.loads((Path(d) / "run_info.json").read_text())
            m = json.loads((Path(d) / "metrics.json").read_text())
        sim_s = m["sim_time_s"]
        rows.append((total, info["wall_time_s"], sim_s, cpu))
        print(f"run {i + 1}: command {total:.1f} s wall / {cpu:.1f} s CPU, simulation "
              f"{info['wall_time_s']:.1f} s, simulated "
              f"{sim_s:.0f} s -> {sim_s / total:.0f} (command) / {sim_s / info['wall_time_s']:.0f} "
              f"(simulation) simulated s per wall s; {m['requests_completed']} requests, "
              f"{m['iterations']} iterations", flush=True)
    total = statistics.median(r[0] for r in rows)
    wall = statistics.median(r[1] for r in rows)
    cpu = statistics.median(r[3] for r in rows)
    sim_s = rows[0][2]
    print(f"median of {a.repeat}: command {total:.1f} s wall ({cpu:.1f} s CPU), simulation {wall:.1f} s, "
          f"simulated {sim_s:.0f} s: {sim_s / total:.0f} (command wall) / {sim_s / cpu:.0f} (command CPU) / "
          f"{sim_s / wall:.0f} (simulation wall) simulated s per s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
