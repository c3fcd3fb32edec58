"""Run a task function as a Hydra app from a ``moesim`` subcommand.

``run_hydra(config_name, task, argv)`` gives every experiment subcommand the same behaviour:
``key=value`` overrides, ``-m`` sweeps, ``hydra.run.dir=DIR``, ``--cfg job``; configs are found in
the ``conf`` package, so they work from a checkout and from an installed wheel. A
:class:`~sim.errors.MoesimError` raised by the task becomes one line on stderr and exit status 2
(Hydra would otherwise print a traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sim.errors import MoesimError

CONFIG_PATH = "pkg://conf"


def run_hydra(config_name: str, task: Callable[[Any], Any], argv: list[str], prog: str) -> int:
    import hydra

    def _task(cfg: Any) -> Any:
        try:
            return task(cfg)
        except MoesimError as exc:
            print(f"moesim: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(_task)
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0


def run_dir() -> str:
    """The current Hydra run (or sweep job) directory."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def run_subcommand(argv: list[str], group: str, apps: dict[str, tuple[str, Callable[[Any], Any]]],
                   usage: str) -> int:
    """Dispatch ``moesim GROUP SUB [overrides]`` to the Hydra app ``apps[SUB] = (config, task)``.

    ``-h``/``--help`` (or nothing) prints ``usage``; an unknown SUB is a one-line error, status 2.
    """
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in apps:
        expected = " or ".join(repr(a) for a in apps)
        print(f"moesim {group}: error: unknown subcommand {sub!r}; expected {expected}",
              file=sys.stderr)
        return 2
    config_name, task = apps[sub]
    return run_hydra(config_name, task, rest, f"moesim {group} {sub}")
