"""Triton MoE kernel benchmark: the same as ``moesim kernels bench [key=value ...]``.

    python benchmarks/kernels_bench.py                 # on a GPU: CSV under kernels/results/<device>/
    python benchmarks/kernels_bench.py tune=true       # tune the grouped FFN tiles first

Prints per kernel and token count: time, TFLOP/s, GB/s, share of the device's peak, and the
issue's acceptance checks (dynamic >= static gating from 32 tokens; FFN >= 70% HBM at 1-64 tokens).
"""

from __future__ import annotations

import sys

from sim.app.kernels_cmd import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
