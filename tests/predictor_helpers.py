"""Helpers shared by the predictor tests (tests/sim/predictor/test_predictor.py, tests/sim/app/test_dial.py,
tests/traces/test_capture_predictor.py): a learnable synthetic trace and ``moesim predictor``
run in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from traces.format import RoutingTrace, TraceMeta, make_tokens


def synth_trace(num_prompts: int = 40, L: int = 4, E: int = 16, K: int = 2, seed: int = 0,
                model: str = "synth", pieces: int = 12, lengths: tuple[int, int] = (3, 12)
                ) -> RoutingTrace:
    """Routing that depends on the token piece (one of ``pieces``): learnable by the per-token
    predictor. Prompt lengths are drawn from ``[lengths[0], lengths[1])``."""
    rng = np.random.default_rng(seed)
    names = [f"w{i}" for i in range(pieces)]
    table = np.stack([rng.permutation(E)[:K] for _ in range(len(names) * L)]).reshape(
        len(names), L, K)
    ex, text, rid, pos = [], [], [], []
    for r in range(num_prompts):
        n = int(rng.integers(*lengths))
        ids = rng.integers(0, len(names), n)
        ex.append(table[ids])
        text += [names[i] for i in ids]
        rid += [f"p{r}"] * n
        pos += list(range(n))
    return RoutingTrace(np.concatenate(ex).astype(np.int16), None,
                        make_tokens(rid, pos, "prefill", "chat", text),
                        TraceMeta(model, L, E, K, "test"))


def predictor_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``moesim predictor ARGS`` in a subprocess (``python -m sim``), output captured."""
    return subprocess.run([sys.executable, "-m", "sim", "predictor", *args],
                          capture_output=True, text=True, timeout=timeout)


def train_tiny(trace_path: Path, run: Path, *overrides: str, timeout: float = 120) -> Path:
    """Trains ``predictor=tiny`` (with ``overrides``) on the trace into ``run``; it must succeed.
    Returns the checkpoint directory."""
    out = predictor_cli("train", f"trace.path={trace_path}", "predictor=tiny", *overrides,
                        f"hydra.run.dir={run}", timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return run / "checkpoint"


def eval_ok(checkpoint: Path, trace_path: Path, run: Path, *overrides: str,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """``moesim predictor eval`` of the checkpoint on the trace into ``run``; it must succeed."""
    out = predictor_cli("eval", f"checkpoint={checkpoint}", f"trace.path={trace_path}", *overrides,
                        f"hydra.run.dir={run}", timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out
