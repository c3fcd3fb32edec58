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
