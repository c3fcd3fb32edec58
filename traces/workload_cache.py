"""The request traces a run reads, cached on disk as the workload's columns
(:class:`traces.workload.WorkloadColumns`): parsed once (pandas, :mod:`traces.request_import`) and
read back by every later run with numpy alone.

Content-addressed: the file's name is a SHA-256 over everything that determines the table (each
file's name, which gives its task, and a SHA-256 of its bytes; whether ``workload.path`` was a
list, which merges the files and renames the ids; the source of the modules that parse them,
the caller's loader included; the versions of numpy, pandas and pyarrow) and :data:`FORMAT`.
The file (``.npz``, no pickles) holds the columns and a SHA-256 of its contents: a file that
fails to read, names another key, does not match its digest or holds columns that do not fit
together is ignored and rewritten, never trusted. A table whose strings would not come back
equal from the file (a trailing NUL) is not stored. Written atomically
(:func:`sim.common.files.atomic_write`). A trace file that is missing or not a regular file is
not looked up: the importer reports it.

Where: ``$MOESIM_CACHE_DIR/workloads``, else ``$XDG_CACHE_HOME/moesim/workloads``, else
``~/.cache/moesim/workloads`` (:func:`sim.common.files.cache_dir`); ``MOESIM_WORKLOAD_CACHE=off``
turns it off. A directory that cannot be written is no error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.files import cache_dir
from sim.common.npz_cache import read_npz, source_digest, write_npz
from traces.workload import WorkloadColumns

#: bump when the file layout or what the key covers changes
FORMAT = 1
#: the modules whose code decides the table's contents (their source is part of the key)
SOURCES = ("traces.request_import", "traces.workload", "traces.format", "traces.workload_cache")
_NUMERIC = ("arrival_s", "prompt_tokens", "output_tokens")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def workload_key(files: Sequence[tuple[str, bytes]], listed: bool, sources: Sequence[str] = ()
                 ) -> str:
    """The content address of the table read from ``files`` ((name, bytes) each, in order);
    ``listed``: ``workload.path`` was a list; ``sources``: the modules of the caller's loader,
    whose code decides the table too (see the module doc)."""
    what = {"format": FORMAT, "listed": bool(listed), "code": source_digest((*SOURCES, *sources)),
            "files": [[name, hashlib.sha256(data).hexdigest()] for name, data in files],
            "numpy": np.__version__, "pandas": _version("pandas"), "pyarrow": _version("pyarrow")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _arrays(cols: WorkloadColumns, key: str) -> dict[str, np.ndarray]:
    return {"key": np.array(key), "request_id": np.array(cols.request_id, dtype=str),
            "task": np.array(cols.task, dtype=str),
            **{c: np.ascontiguousarray(getattr(cols, c)) for c in _NUMERIC}}


def read_columns(path: Path, key: str) -> WorkloadColumns | None:
    """The table stored at ``path`` under ``key``, or None when the file is missing or not to
    be trusted (unreadable, another key, a wrong digest, columns that do not fit together)."""
    arr = read_npz(path, key)
    if arr is None:
        return None
    try:
        n = len(arr["request_id"])
        kinds = {"request_id": "U", "task": "U", "arrival_s": "f", "prompt_tokens": "i",
                 "output_tokens": "i"}
        if any(arr[c].ndim != 1 or len(arr[c]) != n or arr[c].dtype.kind != k
               for c, k in kinds.items()):
            return None
        return WorkloadColumns(request_id=arr["request_id"].tolist(),
                               arrival_s=arr["arrival_s"].astype(np.float64),
                               prompt_tokens=arr["prompt_tokens"].astype(np.int64),
                               output_tokens=arr["output_tokens"].astype(np.int64),
                               task=arr["task"].tolist())
    except Exception:  # noqa: BLE001 - any unreadable file is a miss, never an error
        return None


def write_columns(path: Path, key: str, cols: WorkloadColumns) -> bool:
    """Store ``cols`` at ``path`` atomically with its key and a digest; False (nothing written)
    when its strings would not read back equal."""
    arr = _arrays(cols, key)
    if arr["request_id"].tolist() != cols.request_id or arr["task"].tolist() != cols.task:
        return False
    write_npz(path, arr)
    return True


def cached_workload(paths: Sequence[str | os.PathLike], listed: bool, load: Callable[[], Any],
                    sources: Sequence[str] = ()) -> WorkloadColumns:
    """The columns of the table ``load()`` reads from ``paths`` (a workload DataFrame): from the
    cache, or loaded and stored for the next run. ``sources``: the modules ``load`` is written
    in (part of the key)."""
    folder = cache_dir("workloads", "MOESIM_WORKLOAD_CACHE")
    files = [Path(p) for p in paths]
    if folder is None or not files or not all(f.is_file() for f in files):
        return WorkloadColumns.of(load())
    try:
        key = workload_key([(f.name, f.read_bytes()) for f in files], listed, sources)
    except OSError:  # unreadable: the importer says why
        return WorkloadColumns.of(load())
    path = folder / f"{key}.npz"
    hit = read_columns(path, key) if path.exists() else None
    if hit is not None:
        return hit
    cols = WorkloadColumns.of(load())
    try:
        write_columns(path, key, cols)
    except OSError:  # a cache that cannot be written: the run goes on without it
        pass
    return cols
