"""Write the simulated timeline of a window as Chrome / Perfetto trace JSON.

One process per GPU (``pid`` = GPU id), one thread per category (compute, copy, all_to_all), so
copies visibly overlap compute. Times are microseconds of simulated time. Open the file in
https://ui.perfetto.dev or chrome://tracing.
"""

from __future__ import annotations

import json
from pathlib import Path

from sim.common.files import atomic_write_bytes

THREADS = {"compute": 1, "copy": 2, "all_to_all": 3}


def chrome_events(events: list[tuple[str, str, int, float, float]]) -> list[dict]:
    out: list[dict] = []
    gpus = sorted({e[2] for e in events})
    for g in gpus:
        out.append({"ph": "M", "name": "process_name", "pid": g, "tid": 0, "args": {"name": f"GPU {g}"}})
        for cat, tid in THREADS.items():
            out.append({"ph": "M", "name": "thread_name", "pid": g, "tid": tid, "args": {"name": cat}})
    for name, cat, gpu, start, end in events:
        out.append({"ph": "X", "name": name, "cat": cat, "pid": gpu, "tid": THREADS.get(cat, 9),
                    "ts": round(start * 1e6, 3), "dur": round(max(end - start, 0.0) * 1e6, 3)})
    return out


def write_chrome_trace(events: list[tuple[str, str, int, float, float]], path: str | Path) -> None:
    doc = {"traceEvents": chrome_events(events), "displayTimeUnit": "ms"}
    atomic_write_bytes(json.dumps(doc).encode(), Path(path))
