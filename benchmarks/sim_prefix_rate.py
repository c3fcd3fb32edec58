"""The simulator's rate on a prefix of a run too long to finish: run ``moesim sim`` overrides in
this process for at most ``--wall`` seconds, then print how far it got.

    python benchmarks/sim_prefix_rate.py --wall 600 experiment=bench_cluster_1024 \\
        'workload.path=[CONV.csv,CODE.csv]'

Prints the simulated time reached (the event clock when stopped, or the run's end), requests
arrived and completed, iterations, the set-up's wall time (config to the first event: routing
pool, plan), the loop's wall time, simulated s per wall s (of the loop, and of the whole),
user and system CPU s and the peak RSS of this process. Same seed, same prefix: the stop is
a wall-clock alarm, so how far it gets depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Stop(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wall", type=float, default=600.0, help="wall seconds to run at most")
    ap.add_argument("overrides", nargs="*", help="moesim sim key=value overrides")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    import sim.engine.simulation as simulation
    from sim.app.schemas.registry import register_app_schemas
    from sim.engine.run import simulate
    from sim.world.config import to_sim_config

    register_app_schemas("sim")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = to_sim_config(compose("sim", overrides=a.overrides))
    seen: dict = {}
    real_run = simulation.Simulation.run

    def run(self):  # note the simulation and when its loop starts
        seen["sim"], seen["loop_t0"] = self, time.perf_counter()
        return real_run(self)

    simulation.Simulation.run = run

    fired = []

    def stop(*_):
        fired.append(True)
        raise _Stop

    signal.signal(signal.SIGALRM, stop)
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, a.wall)
    finished = True
    try:
        simulate(cfg)
    except _Stop:
        finished = False
    except SystemError:  # the alarm inside a compiled (numba) call surfaces as a SystemError
        if not fired:
            raise
        finished = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    t1 = time.perf_counter()
    s = seen.get("sim")
    if s is None:
        print("stopped before the simulation started (set-up longer than --wall)")
        return 1
    import numpy as np

    ru = resource.getrusage(resource.RUSAGE_SELF)
    req = s.req
    sim_s = float(s.env.now)
    out = {"finished": finished, "sim_s": round(sim_s, 2),
           "requests": len(req), "arrived": int((req.arrival_s <= sim_s).sum()),
           "completed": int((~np.isnan(req.finish_s)).sum()),
           "iterations": int(sum(r.iterations for r in s.replicas)),
           "setup_wall_s": round(seen["loop_t0"] - t0, 2), "loop_wall_s": round(t1 - seen["loop_t0"], 2),
           "sim_s_per_loop_wall_s": round(sim_s / max(t1 - seen["loop_t0"], 1e-9), 3),
           "sim_s_per_wall_s": round(sim_s / max(t1 - t0, 1e-9), 3),
           "user_cpu_s": round(ru.ru_utime, 1), "sys_cpu_s": round(ru.ru_stime, 1),
           "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
