"""Benchmark: a warm ``moesim sim``'s start-up, from the interpreter to the first iteration.

    python benchmarks/sim_startup.py [--repeat 5] [key=value ...]

Runs ``moesim sim`` with the given overrides (default: the Azure-conversation / Mixtral preset
on ../shared's trace) in fresh processes, each stopped at its first iteration, and prints per
run and as medians the wall time at: the command's module imported (``sim.app.sim_cmd``,
nothing imported ahead of ``moesim``'s own ``main``), the config composed (the simulation
called), the world built (workload, routing pool, plan: the Simulation made) and the first
iteration; then the same medians as the child's CPU time (user + system since the
interpreter started: less sensitive than the wall time to other processes on the machine).
Run it twice: the first run may sample the routing pool, compose and cache the config and
write Python's byte code (cold; ``PYTHONDONTWRITEBYTECODE`` is dropped from the children's
environment, since a warm start has its byte code); the figures that count are warm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared/data/requests/azure-llm-2023/AzureLLMInferenceTrace_conv.csv"
PHASES = ("imported", "composed", "world", "first_iteration")

# the child: marks each phase's wall time since the parent started it (and its CPU time), prints
# the marks as JSON lines at the first iteration (before it runs) and exits there. It imports
# nothing of the simulator before ``main``, as ``moesim sim`` does: each module is patched as it
# is first imported (a finder in front of the import system's), so the modules load when, and
# under what, the command loads them
_CHILD = r"""
import importlib.machinery, json, os, sys, time
t0 = time.perf_counter() - (time.time() - float(os.environ["MOESIM_T0"]))
marks, cpu = {}, {}
def mark(name):
    marks.setdefault(name, time.perf_counter() - t0)
    cpu.setdefault(name, time.process_time())
def simulate_of(real):
    def simulate(*a, **k):
        mark("composed")
        return real(*a, **k)
    return simulate
def patch_sim_cmd(m):
    mark("imported")
def patch_run(m):  # (before sim_cmd, which takes its simulate)
    m.simulate = simulate_of(m.simulate)
def patch_simulation(m):
    real_init = m.Simulation.__init__
    def init(self, *a, **k):
        real_init(self, *a, **k)
        mark("world")
    m.Simulation.__init__ = init
def patch_walk(m):
    def iteration(self, *a, **k):
        mark("first_iteration")
        print("MARKS " + json.dumps(marks), flush=True)
        print("CPU " + json.dumps(cpu), flush=True)
        os._exit(0)
    m.LayerWalk.iteration = iteration
PATCH = {"sim.app.sim_cmd": patch_sim_cmd, "sim.engine.run": patch_run,
         "sim.engine.simulation": patch_simulation, "sim.serving.walk": patch_walk}
class Patcher:  # a meta path finder (importlib.abc would import importlib.resources)
    def find_spec(self, name, path, target=None):
        if name not in PATCH:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run_module = spec.loader.exec_module
        def exec_module(module):
            run_module(module)
            PATCH[name](module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Patcher())
from sim.app.cli import main
sys.argv = ["moesim", "sim", *sys.argv[1:]]
main()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="moesim sim key=value overrides")
    a = ap.parse_args()
    overrides = a.overrides
    if not overrides:
        if not DEFAULT.exists():
            print(f"needs {DEFAULT} (../shared/data absent) or overrides", file=sys.stderr)
            return 2
        overrides = ["experiment=bench_azure_mixtral", f"workload.path={DEFAULT}"]
    runs, cpus = [], []
    for i in range(a.repeat):
        with tempfile.TemporaryDirectory() as d:
            import time

            env = {**os.environ, "PYTHONHASHSEED": "0", "MOESIM_T0": repr(time.time())}
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # warm: the modules' byte code is kept
            out = subprocess.run([sys.executable, "-c", _CHILD, *overrides, f"hydra.run.dir={d}",
                                  "output.progress=off", "output.print_summary=false"],
                                 cwd=ROOT, env=env, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("MARKS ")]
        if out.returncode or not line:
            print(out.stdout + out.stderr, file=sys.stderr)
            return 1
        marks = json.loads(line[0][6:])
        runs.append(marks)
        cpus.append(json.loads(next(x for x in out.stdout.splitlines() if x.startswith("CPU "))[4:]))
        print(f"run {i + 1}: " + ", ".join(f"{p} {marks.get(p, float('nan')):.3f} s" for p in PHASES),
              flush=True)
    med = {p: statistics.median(r[p] for r in runs if p in r) for p in PHASES}
    print("median: " + ", ".join(f"{p} {med[p]:.3f} s" for p in PHASES))
    med = {p: statistics.median(r[p] for r in cpus if p in r) for p in PHASES}
    print("median CPU: " + ", ".join(f"{p} {med[p]:.3f} s" for p in PHASES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
