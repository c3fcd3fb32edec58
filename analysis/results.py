"""Load run and sweep directories into pandas.

A *run directory* holds ``metrics.json`` (simulated quantities only) and, when Hydra made it,
``.hydra/overrides.yaml`` (the ``key=value`` overrides of that run). A *sweep directory* holds run
directories at any depth (Hydra's ``multirun/DATE/TIME/N/``).

:func:`load_runs` returns one row per run: ``run_dir``, one column per override (named by its key,
values parsed as YAML scalars) and one column per scalar metric, nested keys joined with ``.``
(``ttft_s.p50``); wall-clock figures kept out of ``metrics.json`` (``run_info.json`` of the
simulator, ``timings.json`` of realrun) come in as ``wall.*`` and ``timing.*`` columns.
Metrics that hold a list of records (``results`` of ``moesim cache``, for
instance) are expanded by :func:`load_records` instead: one row per record, with the run's
overrides repeated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import MoesimError


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
    """One row per run (see the module docstring); ``df.attrs["overrides"]`` lists the override
    columns."""
    rows = []
    override_keys: dict[str, None] = {}
    for run in find_runs(root):
        row: dict[str, Any] = {"run_dir": str(run)}
        ov = read_overrides(run)
        override_keys.update(dict.fromkeys(ov))
        row.update(ov)
        row.update(flatten(read_metrics(run)))
        for extra in ("run_info.json", "timings.json"):  # wall-clock figures, kept apart
            path = run / extra
            if path.is_file():
                row.update(flatten(json.loads(path.read_text()), "wall." if extra ==
                                   "run_info.json" else "timing."))
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["overrides"] = list(override_keys)
    return df


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
        base = {"run_dir": str(run), **ov}
        for rec in records:
            if isinstance(rec, dict):
                rows.append({**base, **flatten(rec)})
    if not rows:
        raise MoesimError(f"{root}: no run holds a '{key}' list in its metrics.json")
    df = pd.DataFrame(rows)
    df.attrs["overrides"] = list(override_keys)
    return df
