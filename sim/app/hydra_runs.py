"""Run directories of the Hydra apps (:mod:`sim.app.hydra_app`) and the single-run shortcut.

:class:`RunDirs`: a failed run removes the run (job) directories it created if nothing but
Hydra's files (``.hydra/``, the job's log) is in them, and the parents made for them; a directory
that existed before, or that holds output, is kept. :func:`single_run` / :func:`no_mode`: a run
without ``-m`` skips the composition Hydra makes only to find out the mode.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any


def drop_log_files(d: Path) -> None:
    """Close and detach every logging file handler writing under ``d`` (Hydra's job log), so a
    record logged after ``d`` is removed (a later run in the same process) goes nowhere instead
    of failing to reopen the file."""
    d = Path(d).resolve()
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in list(lg.handlers):
            name = getattr(h, "baseFilename", None)
            if name is not None and (d == Path(name).parent or d in Path(name).parents):
                lg.removeHandler(h)
                h.close()


def single_run(argv: list[str]) -> bool:
    """True when ``argv`` asks for one run (no ``-m``, no ``hydra.mode`` override)."""
    return not any(a in ("-m", "--multirun") or "hydra.mode" in a for a in argv)


def no_mode(self: Any, config_name: str | None, overrides: list[str]) -> None:
    """``Hydra.get_mode`` for a single run: no config of ours sets ``hydra.mode``, so Hydra's
    answer is None (run mode) and the extra composition it makes to find that out (a whole
    ``compose_config``, about 0.08 s) is skipped; Hydra then composes once, as for any run."""
    return None


class RunDirs:
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
        #: Hydra's default sweep root, if this invocation would be the one to make it
        self.multirun = self.cwd / "multirun"
        self.multirun_existed = self.multirun.exists()

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
    def _only_sweep_files(d: Path) -> bool:
        """Nothing but folders and ``multirun.yaml`` files under ``d`` (no job wrote there)."""
        try:
            return d.is_dir() and all(p.is_dir() or p.name == "multirun.yaml" for p in d.rglob("*"))
        except OSError:
            return False

    @staticmethod
    def _only_hydra_files(d: Path, job: str) -> bool:
        try:
            return all(p.name in (".hydra", f"{job}.log", "multirun.yaml") for p in d.iterdir())
        except OSError:
            return False

    def remove_failed(self) -> None:
        if not self.any_started:  # a sweep that failed before its first job: its folder goes
            for d, existed in self.explicit.items():
                if not existed and self._only_sweep_files(d):
                    drop_log_files(d)
                    shutil.rmtree(d, ignore_errors=True)
                    for parent in d.parents:
                        if parent == self.root[d]:
                            break
                        try:
                            parent.rmdir()
                        except OSError:
                            break
            if not self.multirun_existed and self._only_sweep_files(self.multirun):
                shutil.rmtree(self.multirun, ignore_errors=True)
        for d, job, sweep in reversed(self.created):
            if d == self.cwd or d in self.cwd.parents or not self._only_hydra_files(d, job):
                continue
            drop_log_files(d)
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
