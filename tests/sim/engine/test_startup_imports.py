"""A warm ``moesim sim`` (its routing pool and request trace cached on disk) reaches its first
iteration without importing pandas or pyarrow: they are imported where a table is made or
written (a trace parsed, the pool sampled, ``requests.parquet``), not by the start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# the child: runs moesim sim with the given overrides and, at the first iteration, prints which
# of the heavy modules are loaded and exits (the run dir is the last argument)
_CHILD = r"""
import json, os, sys
import sim.serving.walk as walk
from sim.app.cli import main
def iteration(self, *a, **k):
    print("LOADED " + json.dumps({m: m in sys.modules for m in ("pandas", "pyarrow")}), flush=True)
    os._exit(0)
walk.LayerWalk.iteration = iteration
sys.argv = ["moesim", "sim", *sys.argv[1:]]
main()
"""


def _loaded(tmp_path: Path, overrides: list[str]) -> dict[str, bool]:
    env = {**os.environ, "MOESIM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONHASHSEED": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _CHILD, *overrides, "output.progress=off",
                          "output.print_summary=false", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("LOADED ")]
    assert out.returncode == 0 and line, out.stdout + out.stderr
    return json.loads(line[0][7:])


def test_warm_start_imports_no_pandas(tmp_path):
    trace = tmp_path / "svc_conv.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:00:0{i}.5,{20 + i},{3 + i}\n" for i in range(6)))
    small = ["model=deepseek-v2-lite", "cluster=1x1", "hardware=a100-40gb", "trace.pool_size=2",
             "trace.pool_tokens=64"]
    for overrides in ([*small, "workload.num_requests=5"], [*small, f"workload.path={trace}"]):
        cold = _loaded(tmp_path, overrides)  # samples the pool (and parses the trace): pandas
        assert cold["pandas"], overrides
        assert _loaded(tmp_path, overrides) == {"pandas": False, "pyarrow": False}, overrides
