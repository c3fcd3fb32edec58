"""``moesim kernels bench [key=value ...]``: the Triton MoE kernel benchmark (a Hydra app).

Config: conf/kernels_bench.yaml. On a GPU, one command writes the CSV under
kernels/results/<device>/::

    moesim kernels bench                       # Mixtral-8x7B and DeepSeek-V2-Lite, T = 1..4096, bf16
    moesim kernels bench tune=true             # first tune the grouped FFN tiles (kernels/configs/)

Without a GPU it exits with status 2 and one line saying a GPU is needed. The smoke mode
``moesim kernels bench device=cpu interpret=true 'shapes=[tiny]' 'sizes=[1,4]' out_dir=DIR``
runs the Triton interpreter on a tiny shape (for tests; its times mean nothing).
"""

from __future__ import annotations

import sys

USAGE = """usage: moesim kernels bench [key=value ...]

Time each Triton MoE kernel and the whole MoE layer against the torch reference and against
static capacity gating; print a table and write kernels/results/<device>/kernels_bench_<dtype>.csv.
Keys (conf/kernels_bench.yaml; 'moesim kernels bench --help' lists them all): shapes, sizes, dtype,
capacity_factor, tune, out_dir, reference, device, interpret. Needs a CUDA GPU (device=cpu
interpret=true is a smoke mode)."""


#: dtype spelled as everywhere else (model.dtype) -> torch's name (CSV and tuned-config names)
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _bench_task(cfg) -> None:
    import dataclasses

    from kernels.bench import run_bench
    from sim.app.schemas.common import app_config
    from sim.app.schemas.kernels import KernelsBenchConfig
    from sim.common.errors import ConfigError

    c = app_config(cfg, KernelsBenchConfig)
    if c.dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype={c.dtype!r}; expected one of {', '.join(TORCH_DTYPES)}")
    run_bench(dataclasses.replace(c, dtype=TORCH_DTYPES[c.dtype]))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] != "bench":
        print(f"moesim kernels: error: unknown subcommand {argv[0]!r}; expected 'bench'", file=sys.stderr)
        return 2
    from sim.app.hydra_app import run_hydra

    try:
        return run_hydra("kernels_bench", _bench_task, argv[1:], prog="moesim kernels bench")
    except SystemExit as exc:  # run_hydra turns a MoesimError into SystemExit(2); --help exits 0
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
