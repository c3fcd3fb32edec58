"""Run a task function as a Hydra app from a ``moesim`` subcommand.

``run_hydra(config_name, task, argv, prog)`` gives every experiment subcommand the same behaviour:
``key=value`` overrides, ``-m`` sweeps, ``hydra.run.dir=DIR``, ``--cfg job``; configs are found in
the ``conf`` package, so they work from a checkout and from an installed wheel; each app's schema
(:mod:`sim.schemas`) is registered first, so an unknown key or a wrong type is an error.

Bad input is one line on stderr, ``<prog>: error: <what, naming the key>``, and exit status 2
(``SystemExit(2)``), with no traceback: a :class:`~sim.errors.MoesimError` raised by the task, a
key left ``???``, and Hydra's own errors (unknown key, wrong type, unknown config, bad override
syntax; Hydra is run with ``HYDRA_FULL_ERROR=1`` so that they reach us instead of its report). A
failed run removes the run directory it created if nothing but Hydra's files (``.hydra/``, the
job's log) is in it; a directory that existed before, or that holds output, is kept.
``-h``/``--help`` prints the app's usage (its module docstring) and its keys.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.errors import ConfigError, MoesimError, short_error
from sim.hydra_help import app_help

CONFIG_PATH = "pkg://conf"

#: what to give for a key a YAML leaves ``???``
_MISSING_HINTS = {
    "trace.path": "FILE (a routing trace written by 'moesim trace import')",
    "checkpoint": "DIR (the checkpoint/ folder of a 'moesim predictor train' run)",
}


#: the flags Hydra's command line takes (anything else starting with "-" is an error)
_HYDRA_FLAGS = frozenset({
    "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p", "--run", "-r",
    "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"})


def _single_run(argv: list[str]) -> bool:
    """True when ``argv`` asks for one run (no ``-m``, no ``hydra.mode`` override)."""
    return not any(a in ("-m", "--multirun") or "hydra.mode" in a for a in argv)


def _no_mode(self: Any, config_name: str | None, overrides: list[str]) -> None:
    """``Hydra.get_mode`` for a single run: no config of ours sets ``hydra.mode``, so Hydra's
    answer is None (run mode) and the extra composition it makes to find that out (a whole
    ``compose_config``, about 0.08 s) is skipped; Hydra then composes once, as for any run."""
    return None


class _AppFailed(BaseException):
    """Carries a task's one-line error past Hydra's job runner (which catches ``Exception``)."""



#: top-level keys of the cache and placement apps before one vocabulary across commands (issue 14),
#: and what they are now (an unknown-key error names the new one)
RENAMED_KEYS = {
    "num_gpus": "cluster.expert_parallel",
    "capacity_fracs": "cluster.expert_budget_fractions",
    "policies": "policy.caches (moesim cache) or policy.placements (moesim placement)",
    "prefetch": "policy.prefetch",
    "prefetch_kwargs": "policy.prefetch_args",
    "reroute": "policy.reroute",
    "policy_kwargs": "policy.placement_args",
}

def run_hydra(config_name: str, task: Callable[[Any], Any], argv: list[str], prog: str) -> int:
    """Run ``task`` as the Hydra app ``conf/<config_name>.yaml``; 0, or ``SystemExit(2)``."""
    import hydra

    from sim.schemas import register_app_schemas

    register_app_schemas(config_name)  # its own schema (and sim_schema): no others
    if "-h" in argv or "--help" in argv:
        print(app_help(config_name, prog, sys.modules[task.__module__].__doc__ or ""))
        return 0
    _check_override_syntax(argv, prog)
    runs = _RunDirs(argv)

    def _task(cfg: Any) -> Any:
        runs.started()
        job = _SweepJob.current(prog)
        if job is not None and job.finished_before():
            return None
        try:
            _check_keys(cfg, config_name)
            _check_missing(cfg, prog)
            result = task(cfg)
        except MoesimError as exc:
            if job is None:
                raise _AppFailed(str(exc)) from None
            return job.failed(str(exc))
        except Exception as exc:
            if job is None:
                raise
            return job.failed(f"{type(exc).__name__}: {short_error(exc)}")
        if job is not None:
            job.done()
        return result

    _task.__module__ = f"moesim.{config_name}"  # Hydra's job name (log file, help): the app's
    app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(_task)
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    if "-m" in argv or "--multirun" in argv:  # the summary of the sweep, failed jobs included
        argv = [*argv, "+hydra.callbacks.moesim_sweep._target_=sim.hydra_app.SweepSummary"]
    sys.argv = [prog, *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # raise errors to us instead of printing a report
    skip_mode = _single_run(argv)
    if skip_mode:
        from hydra._internal.hydra import Hydra

        saved_get_mode = Hydra.get_mode
        Hydra.get_mode = _no_mode  # type: ignore[method-assign]
    try:
        app()
    except _AppFailed as exc:
        _fail(prog, str(exc), runs)
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(exc, MoesimError):
            _fail(prog, str(exc), runs)
        if isinstance(exc, HydraException | OmegaConfBaseException):
            _fail(prog, hydra_error_line(exc), runs)
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


def _fail(prog: str, message: str, runs: _RunDirs) -> None:
    runs.remove_failed()
    line = " ".join(message.split()) if "\n" in message else message
    print(f"{prog}: error: {line}", file=sys.stderr)
    raise SystemExit(2)


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

        from sim.files import atomic_write_bytes

        (self.dir / "failed.json").unlink(missing_ok=True)
        atomic_write_bytes((json.dumps({"overrides": self.overrides}) + "\n").encode(),
                           self.dir / "done.json")

    def failed(self, error: str) -> None:
        import json

        from sim.files import atomic_write_bytes

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
            raise _AppFailed(f"{len(failed)} job(s) of the sweep failed (the others finished; "
                              f"rerun the same command with hydra.sweep.dir={sweep} to retry "
                              f"only those): {lines[0]}")


def run_dir() -> str:
    """The current Hydra run (or sweep job) directory."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


# ------------------------------------------------------------------------------------------------
# checks and messages
# ------------------------------------------------------------------------------------------------
def _check_override_syntax(argv: list[str], prog: str) -> None:
    """Each ``key=value`` must parse under Hydra's override grammar; name the one that does not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") and arg.split("=", 1)[0] not in _HYDRA_FLAGS:
            print(f"{prog}: error: unknown option {arg!r} (options: --help, -m, --cfg job, "
                  f"--hydra-help; settings are key=value)", file=sys.stderr)
            raise SystemExit(2)
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_override(arg)
        except HydraException as exc:
            print(f"{prog}: error: bad override {arg!r}: {short_error(exc)} (quote lists and "
                  f"values with spaces, e.g. 'key=[a,b]')", file=sys.stderr)
            raise SystemExit(2) from None


def _check_keys(cfg: Any, config_name: str, prefix: str = "") -> None:
    """Keys a schema does not have (Hydra lets '+key=...' add them) are an error."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind):
        extra = sorted(set(cfg.keys()) - {f.name for f in dataclasses.fields(kind)})
        if extra:
            raise ConfigError(f"unknown key {prefix + str(extra[0])!r}: the {config_name} config has "
                              f"no such key (--help lists the keys)")
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_keys(child, config_name, f"{prefix}{key}.")


def _check_missing(cfg: Any, prog: str) -> None:
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} has no value; give {key}={_MISSING_HINTS.get(key, '...')}"
                          + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))


def hydra_error_line(exc: BaseException) -> str:
    """One line for a Hydra / OmegaConf error, naming the key or override it is about."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = exc.__cause__
    text = str(exc).strip()
    if isinstance(exc, MissingConfigException):
        lines = text.splitlines()
        first = lines[0].split(": ", 1)[-1] if lines else str(exc)
        found = re.search(r"Could not find '([^']+)/([^'/]+)'", first)
        if found:
            first = f"{found[1]}={found[2]}: no config conf/{found[1]}/{found[2]}.yaml"
        opts = [ln.strip() for ln in lines if ln.startswith("\t") and "provider=" not in ln]
        return first + (f"; available: {', '.join(opts)}" if opts else "")
    full_key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) or (
            cause is None and isinstance(exc, ConfigAttributeError | ConfigKeyError)):
        moved = RENAMED_KEYS.get(str(full_key))
        if moved:
            return f"unknown key {full_key!r}: it is {moved!r} since the keys were renamed"
        return (f"unknown key {full_key!r} (--help lists the keys; '+{full_key}=...' adds one "
                f"only where a config allows it)")
    override = text.split("override ", 1)[1].splitlines()[0] if "override " in text else None
    if isinstance(cause, ValidationError) or isinstance(exc, ValidationError):
        detail = short_error(cause or exc)
        if "is not a ListConfig" in detail and override:
            key, _, value = override.partition("=")
            return f"{override}: {key} is a list; write '{key}=[{value}]'"
        where = override or full_key
        return f"{where}: {detail}" if where else detail
    if cause is not None:
        return f"{short_error(exc)}: {short_error(cause)}"
    return short_error(exc)


# ------------------------------------------------------------------------------------------------
# run directories a failed run leaves behind
# ------------------------------------------------------------------------------------------------
class _RunDirs:
    """The run (job) directories this invocation created, removed again if the run fails while
    they hold nothing but Hydra's own files."""

    def __init__(self, argv: list[str]) -> None:
        self.cwd = Path.cwd().resolve()
        #: hydra.run.dir / hydra.sweep.dir given on the command line -> existed before the run
        self.explicit: dict[Path, bool] = {}
        #: explicit dir -> its deepest ancestor that existed before the run (removal stops there)
        self.root: dict[Path, Path] = {}
        for arg in argv:
            key, sep, value = arg.lstrip("+").partition("=")
            if sep and key in ("hydra.run.dir", "hydra.sweep.dir") and value:
                p = Path(value).resolve()
                self.explicit[p] = p.exists()
                self.root[p] = p if p.exists() else next(a for a in p.parents if a.exists())
        self.created: list[tuple[Path, str, Path | None]] = []
        self.any_started = False

    def started(self) -> None:
        """Called as a job's task starts (Hydra has made its directory and written .hydra/)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        self.any_started = True
        hc = HydraConfig.get()
        d = Path(hc.runtime.output_dir).resolve()
        job = str(hc.job.name)
        sweep = Path(hc.sweep.dir).resolve() if hc.mode == RunMode.MULTIRUN else None
        if self.explicit.get(d) or not self._only_hydra_files(d, job):
            return
        self.created.append((d, job, sweep))

    @staticmethod
    def _only_hydra_files(d: Path, job: str) -> bool:
        try:
            return all(p.name in (".hydra", f"{job}.log", "multirun.yaml") for p in d.iterdir())
        except OSError:
            return False

    def remove_failed(self) -> None:
        for d, job, sweep in reversed(self.created):
            if d == self.cwd or d in self.cwd.parents or not self._only_hydra_files(d, job):
                continue
            shutil.rmtree(d, ignore_errors=True)
            # parents made for it go too: below the explicit dir's old ancestor, or below cwd
            top = next((r for e, r in self.root.items() if e == d or e in d.parents), self.cwd)
            for parent in d.parents:
                if parent == top or top not in parent.parents:
                    break
                if parent == sweep and self._only_hydra_files(parent, job):
                    (parent / "multirun.yaml").unlink(missing_ok=True)
                try:
                    parent.rmdir()  # only an empty directory goes
                except OSError:
                    break
        self.created.clear()


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
