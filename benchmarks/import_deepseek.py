"""Time importing all DeepSeek-V2-Lite MoE-Beyond CSVs (target: < 60 s on a 2-core machine).

    python benchmarks/import_deepseek.py [--repeat 3] [--dir ../shared/data/routing/deepseek-v2-lite]

Runs the full CLI path (``moesim trace import --format moe-beyond-csv ... -o tmp.parquet``: parse,
validate, write) ``--repeat`` times and prints each time and the median, then the trace's shape.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=str(ROOT.parent / "shared/data/routing/deepseek-v2-lite"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    files = sorted(Path(a.dir).glob("prompt_*_data.csv"),
                   key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    if not files:
        raise SystemExit(f"no prompt_N_data.csv files in {a.dir}")
    from sim.app.cli import main as moesim
    from traces.format import read_trace

    times = []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "deepseek.parquet"
        for i in range(a.repeat):
            t0 = time.perf_counter()
            rc = moesim(["trace", "import", "--format", "moe-beyond-csv", *map(str, files), "-o", str(out)])
            dt = time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"import failed with exit status {rc}")
            times.append(dt)
            print(f"run {i + 1}: {dt:.2f} s")
        tr = read_trace(out)
        size = out.stat().st_size
    print(f"import of {len(files)} files: median {statistics.median(times):.2f} s over {len(times)} runs "
          f"(target < 60 s)")
    print(f"trace: {len(tr.request_ids())} requests, {tr.num_tokens} tokens, {tr.num_layers} layers, "
          f"{tr.num_experts} experts, top-{tr.top_k}; parquet {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
