"""Sampling speed of the fitted routing generator (traces.synth.sample_trace).

    python benchmarks/synth_bench.py [--requests 1000] [--tokens 100] [--repeats 3]

Prints, per shipped parameter set, the best wall time of ``repeats`` runs and tokens per second
(single process; numpy may use its own threads). Target: 100k DeepSeek-V2-Lite tokens in a few
seconds on one core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from traces.synth import sample_trace
from traces.synth_params import fitted_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    for name in ("deepseek-v2-lite", "mixtral-8x7b"):
        p = fitted_params(name)
        best = float("inf")
        for r in range(a.repeats):
            t0 = time.perf_counter()
            tr = sample_trace(p, a.requests, a.tokens, np.random.default_rng(r))
            best = min(best, time.perf_counter() - t0)
        print(f"{name}: {a.requests} requests x {a.tokens} tokens = {tr.num_tokens} tokens, "
              f"{p.num_layers} layers, {p.num_experts} experts, top-{p.top_k}: best {best:.2f} s "
              f"({tr.num_tokens / best:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
