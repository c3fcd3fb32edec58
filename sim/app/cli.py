"""The ``moesim`` console script: one dispatcher, one module per subcommand.

File tools (``trace``, ``report``) parse their own flags with argparse; experiment subcommands
(``sim``, ``cache``, ``placement``, ``predictor``, ``realrun``, ``kernels bench``, ``demo``) are
Hydra apps (:mod:`sim.app.hydra_app`, schemas in :mod:`sim.world.config` and :mod:`sim.app.schemas`), so they
take ``key=value`` overrides, ``-m`` sweeps, ``hydra.run.dir=DIR`` and ``--cfg job``.

Every subcommand module exposes ``main(argv: list[str]) -> int``; it is imported only when used,
so ``moesim trace stats`` never pays for importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from sim.common.errors import MoesimError
from sim.common.files import gc_paused

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "trace": ("sim.app.trace_cmd", "import, validate, summarise and synthesise routing/request traces"),
    "sim": ("sim.app.sim_cmd", "run the discrete-event simulator (Hydra overrides, -m to sweep)"),
    "cache": ("sim.app.cache_cmd", "fast cache replay of a routing trace through cache policies"),
    "placement": ("sim.app.placement_cmd", "evaluate expert placement / load balancing on a trace"),
    "predictor": ("sim.app.predictor_cmd", "train / evaluate the eMoE expert predictor"),
    "realrun": ("sim.app.realrun_cmd", "run policies on a real device; calibrate the cost model"),
    "kernels": ("sim.app.kernels_cmd", "benchmark the Triton MoE kernels"),
    "report": ("analysis.cli", "turn run and sweep directories into tables and plots"),
    "demo": ("sim.app.demo", "the embedded default: a small end-to-end run, no downloads"),
    "experiment": ("sim.app.experiments.base", "the papers' headline comparisons: 'experiment emoe', "
                                      "'experiment huang' (one report, paper beside ours)"),
}


def _usage() -> str:
    lines = ["usage: moesim <command> [args...]", "", "commands:"]
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines.append("")
    lines.append("Run 'moesim <command> --help' for a command's own options.")
    return "\n".join(lines)


def _quiet_libraries() -> None:
    """Library warnings that are noise to a user of the command line (a deprecation inside a
    dependency, numpy's empty-slice means whose result is reported as null) are not printed;
    ``PYTHONWARNINGS`` still turns them on."""
    if sys.warnoptions:
        return
    for cat in (DeprecationWarning, FutureWarning, PendingDeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=cat)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"moesim: error: unknown command {name!r}; expected one of {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        with gc_paused():  # its modules (Hydra's for an app): long-lived objects, no garbage
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"moesim: error: command {name!r} is not available in this build ({exc})",
                  file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except MoesimError as exc:
        print(f"moesim: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OverflowError, OSError, RuntimeError, MemoryError) as exc:
        # an input no check foresaw reached a library (numpy, pandas, pyarrow, torch): one line
        # naming it, never a traceback (MOESIM_TRACEBACK=1 shows it, for a bug report)
        if os.environ.get("MOESIM_TRACEBACK"):
            raise
        print(f"moesim {name}: error: {type(exc).__name__}: {one_line(str(exc))} (an input this "
              f"command did not check; MOESIM_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


def one_line(text: str) -> str:
    """A message on one line (at most 400 characters)."""
    line = " ".join(text.split())
    return line if len(line) <= 400 else line[:397] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
