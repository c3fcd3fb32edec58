"""``moesim trace import`` of a malformed file prints its one-line error and exits with status 2,
every time: no abort at interpreter exit (status 134, "terminate called without an active
exception"). The abort came from pyarrow's CSV reader: parsing a file's blocks on its thread
pool, it raised on a bad row while other blocks were still being parsed, and the interpreter
exited under those threads; the moe-beyond reader now parses on one thread
(traces/import_moe_beyond.py). Run as subprocesses, many times, because the abort was
intermittent (1 run in 24)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _malformed_csv(path: Path) -> None:
    """Many blocks of good rows (26 layers x 4000 tokens, several MB), one bad row in the middle."""
    rows = ["Layer ID,Batch Number,Token,Activated Expert IDs"]
    for layer in range(1, 27):
        rows += [f'{layer},0,tok{t},"[1,2,3,4,5,6]"' for t in range(4000)]
    rows.insert(len(rows) // 2, '13,0,x,"[1,2]",oops')
    path.write_text("\n".join(rows) + "\n")


def test_malformed_import_exits_cleanly_every_time(tmp_path):
    bad = tmp_path / "bad.csv"
    _malformed_csv(bad)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = []
    for _ in range(24):  # two at a time: the abort needs the pool busy at exit, not a long test
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sim.app.cli", "trace", "import", "--format", "moe-beyond-csv",
             str(bad), "-o", str(tmp_path / "out.parquet")], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        if len(procs) % 2 == 0:
            for p in procs[-2:]:
                p.wait(timeout=120)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (p.returncode, err)
        lines = (out + err).strip().splitlines()
        assert len(lines) == 1 and "Expected 4 columns, got 5" in lines[0], lines
        assert "terminate called" not in err
    assert not (tmp_path / "out.parquet").exists()
