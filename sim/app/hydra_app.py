"""Run a task function as a Hydra app from a ``moesim`` subcommand.

``run_hydra(config_name, task, argv, prog)`` gives every experiment subcommand the same behaviour:
``key=value`` overrides, ``-m`` sweeps, ``hydra.run.dir=DIR``, ``--cfg job``; configs are found in
the ``conf`` package, so they work from a checkout and from an installed wheel; each app's schema
(:mod:`sim.app.schemas`) is registered first, so an unknown key or a wrong type is an error.

Bad input is one line on stderr, ``<prog>: error: <what, naming the key>``, and exit status 2
(``SystemExit(2)``), with no traceback: a :class:`~sim.common.errors.MoesimError` raised by the task, a
key left ``???``, and Hydra's own errors (unknown key, wrong type, unknown config, bad override
syntax; Hydra is run with ``HYDRA_FULL_ERROR=1`` so that they reach us instead of its report);
the checks and the messages are :mod:`sim.app.hydra_errors`. A failed run removes the run directory
it created if nothing but Hydra's files (``.hydra/``, the job's log) is in it; a directory that
existed before, or that holds output, is kept (:mod:`sim.app.hydra_runs`, with the single-run
shortcut that skips Hydra's mode probe). A sweep's jobs are recorded (``done.json`` /
``failed.json``) and summarised here. ``-h``/``--help`` prints the app's usage (its module
docstring) and its keys (:mod:`sim.app.hydra_help`); :func:`run_subcommand` dispatches a command
group's subcommands to their apps, :func:`run_dir` is the directory a task writes to.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.app.hydra_errors import (
    AppCrashed,
    AppFailed,
    check_keys,
    check_launcher,
    check_missing,
    check_override_syntax,
    hydra_error_line,
    normalise_overrides,
)
from sim.app.hydra_help import app_help
from sim.app.hydra_runs import RunDirs, no_mode, single_run
from sim.common.errors import MoesimError, short_error
from sim.common.files import gc_paused
from sim.world.ranges import check_ranges

CONFIG_PATH = "pkg://conf"


def run_hydra(config_name: str, task: Callable[[Any], Any], argv: list[str], prog: str) -> int:
    """Run ``task`` as the Hydra app ``conf/<config_name>.yaml``; 0, or ``SystemExit(2)``."""
    import hydra

    from sim.app.config_cache import composition_cache
    from sim.app.schemas.registry import load_app_schemas, register_app_schemas

    if "-h" in argv or "--help" in argv:
        register_app_schemas(config_name)  # its own schema (and sim_schema): no others
        print(app_help(config_name, prog, sys.modules[task.__module__].__doc__ or ""))
        return 0
    argv = normalise_overrides(argv)
    # a plain single run (no -m, no flags) composes once, in run mode: from the config cache
    # when it can; the overrides' syntax is checked and the schema registered only when it
    # composes (a cached config's overrides parsed before; a plain run dir always parses)
    plain = single_run(argv) and not any(a.startswith("-") for a in argv)
    if plain:
        load_app_schemas(config_name)  # loaded, not registered: their source is in the key
    else:
        check_override_syntax(argv, prog)
        register_app_schemas(config_name)
    checked = argv
    check_launcher(argv, prog)
    runs = RunDirs(argv)

    def _task(cfg: Any) -> Any:
        paused.close()  # the collector back on for the task (a sweep's jobs: already)
        runs.started()
        job = _SweepJob.current(prog)
        if job is not None and job.finished_before():
            return None
        try:
            check_keys(cfg, config_name)
            check_missing(cfg, prog)
            check_ranges(cfg)
            result = task(cfg)
        except MoesimError as exc:
            if job is None:
                raise AppFailed(str(exc)) from None
            return job.failed(str(exc))
        except Exception as exc:
            if job is None:
                if os.environ.get("MOESIM_TRACEBACK"):
                    raise
                raise AppCrashed(f"{type(exc).__name__}: {short_error(exc)} (an input this command "
                                 f"did not check; MOESIM_TRACEBACK=1 shows where)") from exc
            return job.failed(f"{type(exc).__name__}: {short_error(exc)}")
        if job is not None:
            job.done()
        return result

    _task.__module__ = f"moesim.{config_name}"  # Hydra's job name (log file, help): the app's
    app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(_task)
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    extra = []
    if _logs_to_file(config_name):  # the job's log file is made at its first record, not empty
        extra.append("++hydra.job_logging.handlers.file.delay=true")
    if "-m" in argv or "--multirun" in argv:  # the summary of the sweep, failed jobs included
        extra.append("+hydra.callbacks.moesim_sweep._target_=sim.app.hydra_app.SweepSummary")
    # beside the user's overrides (Hydra's parser takes one run of them, flags before or after)
    at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
    argv = [*argv[:at], *extra, *argv[at:]]
    sys.argv = [prog, *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # raise errors to us instead of printing a report
    skip_mode = single_run(argv)
    if skip_mode:
        from hydra._internal.hydra import Hydra

        saved_get_mode = Hydra.get_mode
        Hydra.get_mode = no_mode  # type: ignore[method-assign]
    def compose_first() -> None:  # what a composition needs before it (a cache miss)
        check_override_syntax(checked, prog)
        register_app_schemas(config_name)

    # a plain run's Hydra machinery (the composition or the cached config, its copies, the
    # .hydra files) with the cyclic collector paused: it makes long-lived objects, little garbage
    paused = contextlib.ExitStack()
    if plain:
        paused.enter_context(gc_paused())
    try:
        with paused, composition_cache(compose_first, enabled=plain):
            app()
    except AppCrashed as exc:
        _fail(prog, str(exc), runs, status=1)
    except AppFailed as exc:
        _fail(prog, str(exc), runs)
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(exc, MoesimError):
            _fail(prog, str(exc), runs)
        if isinstance(exc, HydraException | OmegaConfBaseException):
            _fail(prog, hydra_error_line(exc, config_name), runs)
        if isinstance(exc, ValueError) and not runs.any_started:  # Hydra's flag checks
            _fail(prog, short_error(exc), runs)
        if isinstance(exc, AssertionError) and not runs.any_started and "NoneType" in str(exc):
            # OmegaConf asserts when an override sets a key inside a group left null
            _fail(prog, "an override sets a key inside a config group that has no config; choose "
                  "the group first (e.g. model=NAME model.num_layers=4)", runs)
        runs.remove_failed()
        raise
    except BaseException:
        runs.remove_failed()
        raise
    finally:
        if skip_mode:
            Hydra.get_mode = saved_get_mode  # type: ignore[method-assign]
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return 0


def _logs_to_file(config_name: str) -> bool:
    """Whether the app keeps Hydra's job logging (a file handler); kernels bench turns it off."""
    from importlib.resources import files

    try:
        text = (files("conf") / f"{config_name}.yaml").read_text()
    except OSError:
        return False
    return "hydra/job_logging: none" not in text and "hydra/job_logging: disabled" not in text


def _fail(prog: str, message: str, runs: RunDirs, status: int = 2) -> None:
    runs.remove_failed()
    line = " ".join(message.split()) if "\n" in message else message
    print(f"{prog}: error: {line}", file=sys.stderr)
    raise SystemExit(status)


class _SweepJob:
    """One job of a sweep (``-m``): skipped when a rerun finds it finished (``done.json`` with the
    same overrides, written atomically after the task returned), recorded in ``failed.json``
    when it fails, so that the other jobs go on and the summary reports it."""

    def __init__(self, d: Path, overrides: list[str], prog: str) -> None:
        self.dir, self.overrides, self.prog = d, overrides, prog

    @classmethod
    def current(cls, prog: str) -> _SweepJob | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return cls(Path(hc.runtime.output_dir), list(hc.overrides.task), prog)

    def finished_before(self) -> bool:
        import json

        path = self.dir / "done.json"
        try:
            same = json.loads(path.read_text()).get("overrides") == self.overrides
        except (OSError, ValueError):
            return False
        if same:
            print(f"{self.prog}: job {self.dir.name} finished before, skipped: "
                  f"{' '.join(self.overrides)}", file=sys.stderr, flush=True)
        return same

    def done(self) -> None:
        import json

        from sim.common.files import atomic_write_bytes

        (self.dir / "failed.json").unlink(missing_ok=True)
        atomic_write_bytes((json.dumps({"overrides": self.overrides}) + "\n").encode(),
                           self.dir / "done.json")

    def failed(self, error: str) -> None:
        import json

        from sim.common.files import atomic_write_bytes

        (self.dir / "done.json").unlink(missing_ok=True)
        atomic_write_bytes((json.dumps({"overrides": self.overrides, "error": error}) + "\n")
                           .encode(), self.dir / "failed.json")
        print(f"{self.prog}: job {self.dir.name} failed ({' '.join(self.overrides)}): {error}",
              file=sys.stderr, flush=True)


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class SweepSummary(_Callback):
    """Hydra callback (added by :func:`run_hydra` to every ``-m`` run): at the end of a sweep,
    one comparison table of the finished jobs and every failed job with its error; a sweep with a
    failed job exits with status 2 after the others have run."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import json

        sweep = Path(str(config.hydra.sweep.dir))
        failed = []
        for p in sorted(sweep.rglob("failed.json")):
            try:
                failed.append((p.parent.name, json.loads(p.read_text())))
            except (OSError, ValueError):
                failed.append((p.parent.name, {"error": "unreadable failed.json"}))
        try:
            from analysis.results import load_runs

            df = load_runs(sweep)
            vary = [c for c in df.attrs["overrides"] if df[c].astype(str).nunique() > 1]
            cols = (vary or ["label"]) + [c for c in ("hit_rate", "ttft_s.p50", "e2e_s.p90",
                                            "slo_attainment", "tokens_per_s") if c in df.columns]
            print(f"\nsweep {sweep}: {len(df)} runs finished, {len(failed)} failed")
            print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        except MoesimError:
            print(f"\nsweep {sweep}: no run finished, {len(failed)} failed")
        if failed:
            lines = [f"job {n} ({' '.join(f.get('overrides', []))}): {f.get('error')}"
                     for n, f in failed]
            for line in lines:
                print(f"  FAILED {line}", file=sys.stderr)
            # a BaseException: Hydra turns a callback's Exception into a warning
            raise AppFailed(f"{len(failed)} job(s) of the sweep failed (the others finished; "
                            f"rerun the same command with hydra.sweep.dir={sweep} to retry "
                            f"only those): {lines[0]}")


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
