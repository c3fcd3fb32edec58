"""Load run and sweep directories into pandas.

A *run directory* holds ``metrics.json`` (simulated quantities only) and, when Hydra made it,
``.hydra/overrides.yaml`` (the ``key=value`` overrides of that run). A *sweep directory* holds run
directories at any depth (Hydra's ``multirun/DATE/TIME/N/``).

:func:`load_runs` returns one row per run: ``run_dir``, ``label`` (a stable name: the run's
overrides, ``k=v k=v``, or the name a driver gave it in ``config.json``, as the demo's runs), one
column per *config* key that varies between the runs (from ``.hydra/config.yaml`` or
``config.json``; overrides always count as varying) and one column per scalar metric, nested keys
joined with ``.`` (``ttft_s.p50``); every metric is kept. Wall-clock figures kept out of
``metrics.json`` (``run_info.json`` of the simulator, ``timings.json`` of realrun) come in as
``wall.*`` and ``timing.*`` columns. ``df.attrs``: ``overrides``, ``config_columns``,
``metric_columns`` and ``failed``: the job directories under the root that hold no metrics
(a failed or unfinished run), each with its error where the sweep recorded one.
Metrics that hold a list of records (``results`` of ``moesim cache``, for
instance) are expanded by :func:`load_records` instead: one row per record, with the run's
overrides repeated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from sim.common.errors import MoesimError


def find_runs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) that holds a metrics.json, sorted."""
    root = Path(root)
    if not root.exists():
        raise MoesimError(f"{root}: no such directory")
    if (root / "metrics.json").is_file():
        return [root]
    runs = sorted({p.parent for p in root.rglob("metrics.json")}, key=_natural_key)
    if not runs:
        raise MoesimError(f"{root}: holds no metrics.json; expected a run or sweep directory")
    return runs


def find_failed(root: str | Path) -> list[dict[str, str]]:
    """Job directories (a ``.hydra/`` folder or a ``failed.json``) under ``root`` without a
    ``metrics.json``: runs that failed or never finished, each with its recorded error."""
    root = Path(root)
    jobs = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    jobs |= {p.parent for p in root.rglob("failed.json")}
    out = []
    for d in sorted(jobs, key=_natural_key):
        if (d / "metrics.json").is_file() or d == root and any(root.rglob("*/metrics.json")):
            continue
        error = "no metrics.json (the run failed or was interrupted)"
        if (d / "failed.json").is_file():
            try:
                error = json.loads((d / "failed.json").read_text()).get("error", error)
            except (json.JSONDecodeError, OSError):
                pass
        ov = read_overrides(d)
        out.append({"run_dir": str(d), "label": run_label(d, ov), "error": error})
    return out


def run_label(run_dir: Path, overrides: dict[str, Any]) -> str:
    """A run's stable name: the label a driver wrote in config.json, else its overrides, else
    its directory name."""
    cfg = run_dir / "config.json"
    if cfg.is_file():
        try:
            label = json.loads(cfg.read_text()).get("label")
        except (json.JSONDecodeError, OSError):
            label = None
        if label:
            return str(label)
    if overrides:
        return " ".join(f"{k}={v}" for k, v in overrides.items())
    return run_dir.name


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config, flattened: ``.hydra/config.yaml`` or ``config.json``'s
    ``config``."""
    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        import yaml

        try:
            return flatten(yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError:
            return {}
    path = run_dir / "config.json"
    if path.is_file():
        try:
            return flatten(json.loads(path.read_text()).get("config") or {})
        except (json.JSONDecodeError, OSError):
            return {}
    return {}


def _natural_key(p: Path) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in p.parts]


def read_overrides(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    import yaml

    out: dict[str, Any] = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
        if isinstance(out[key], list | dict):
            out[key] = json.dumps(out[key])
    return out


def read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MoesimError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars of a nested dict, keys joined with '.'; lists are left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            continue
        else:
            out[key] = v
    return out


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per run (see the module docstring)."""
    rows, configs, metric_keys = [], [], {}
    override_keys: dict[str, None] = {}
    for run in find_runs(root):
        ov = read_overrides(run)
        row: dict[str, Any] = {"run_dir": str(run), "label": run_label(run, ov)}
        override_keys.update(dict.fromkeys(ov))
        row.update(ov)
        configs.append(read_config(run))
        metrics = flatten(read_metrics(run))
        metric_keys.update(dict.fromkeys(metrics))
        row.update(metrics)
        for extra in ("run_info.json", "timings.json"):  # wall-clock figures, kept apart
            path = run / extra
            if path.is_file():
                row.update(flatten(json.loads(path.read_text()), "wall." if extra ==
                                   "run_info.json" else "timing."))
        rows.append(row)
    varying = _varying(configs, exclude=set(override_keys) | set(metric_keys))
    for row, cfg in zip(rows, configs):
        row.update({k: cfg.get(k) for k in varying})
    df = pd.DataFrame(rows)
    df.attrs["overrides"] = list(override_keys)
    df.attrs["config_columns"] = list(override_keys) + [k for k in varying if k not in override_keys]
    df.attrs["metric_columns"] = list(metric_keys)
    df.attrs["failed"] = find_failed(root)
    return df


def _varying(configs: list[dict[str, Any]], exclude: set[str]) -> list[str]:
    """Config keys whose value is not the same in every run (absent counts as a value)."""
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if k not in exclude
            and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def load_records(root: str | Path, key: str = "results") -> pd.DataFrame:
    """One row per record of the list ``metrics[key]`` of every run under ``root``."""
    rows = []
    override_keys: dict[str, None] = {}
    for run in find_runs(root):
        metrics = read_metrics(run)
        records = metrics.get(key)
        if not isinstance(records, list):
            continue
        ov = read_overrides(run)
        override_keys.update(dict.fromkeys(ov))
        base = {"run_dir": str(run), "run": run_label(run, ov), **ov}
        for rec in records:
            if isinstance(rec, dict):
                rows.append({**base, **flatten(rec)})
    if not rows:
        raise MoesimError(f"{root}: no run holds a '{key}' list in its metrics.json")
    df = pd.DataFrame(rows)
    df.attrs["overrides"] = list(override_keys)
    df.attrs["failed"] = find_failed(root)
    return df
