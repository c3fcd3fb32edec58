"""The workload (request-trace) format: one row per request.

Columns::

    request_id     str     as given by the source (row number where it has none)
    arrival_s      float64 seconds from the first request (the first arrives at 0.0)
    prompt_tokens  int64   > 0
    output_tokens  int64   >= 1
    task           str     task name where known, "unknown" otherwise

Rows are sorted by arrival (stable: ties keep source order). On disk: one Parquet file whose
schema metadata ``moesim`` says ``kind`` = "workload", ``schema_version`` and ``source``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.common.errors import TraceFormatError, short_error
from sim.common.files import atomic_write_table
from traces.format import META_KEY, SCHEMA_VERSION, read_meta

if TYPE_CHECKING:  # imported where a table is made: a cached workload needs no pandas
    import pandas as pd

WORKLOAD_COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "task")


def make_workload(
    arrival_s: Any, prompt_tokens: Any, output_tokens: Any, task: Any = "unknown",
    request_id: Any = None,
) -> pd.DataFrame:
    import pandas as pd

    arrival = np.asarray(arrival_s, dtype=np.float64)
    n = len(arrival)
    df = pd.DataFrame({
        "request_id": [str(i) for i in range(n)] if request_id is None
        else [str(r) for r in request_id],
        "arrival_s": arrival,
        "prompt_tokens": np.asarray(prompt_tokens, dtype=np.int64),
        "output_tokens": np.asarray(output_tokens, dtype=np.int64),
        "task": [task] * n if isinstance(task, str) else [str(t) for t in task],
    })
    if n:
        df["arrival_s"] = df["arrival_s"] - df["arrival_s"].min()
    return df.sort_values("arrival_s", kind="stable").reset_index(drop=True)


@dataclass
class WorkloadColumns:
    """A workload table's columns, ``len()`` its requests, without pandas: the values the
    simulator reads from a DataFrame's columns (:meth:`of`: the same conversions), so either
    gives the same run."""

    request_id: list[str]
    arrival_s: np.ndarray  # (R,) float64
    prompt_tokens: np.ndarray  # (R,) int64
    output_tokens: np.ndarray  # (R,) int64
    task: list[str]

    def __len__(self) -> int:
        return len(self.request_id)

    def head(self, n: int) -> WorkloadColumns:
        """The first ``n`` requests (``df.iloc[:n]``)."""
        return WorkloadColumns(self.request_id[:n], self.arrival_s[:n], self.prompt_tokens[:n],
                               self.output_tokens[:n], self.task[:n])

    @classmethod
    def of(cls, table: Any) -> WorkloadColumns:
        """``table``'s columns: itself, or a workload DataFrame's (ids and tasks as ``str``)."""
        if isinstance(table, cls):
            return table
        return cls(request_id=table["request_id"].astype(str).tolist(),
                   arrival_s=table["arrival_s"].to_numpy(np.float64),
                   prompt_tokens=table["prompt_tokens"].to_numpy(np.int64),
                   output_tokens=table["output_tokens"].to_numpy(np.int64),
                   task=table["task"].astype(str).tolist())


def make_columns(
    arrival_s: Any, prompt_tokens: Any, output_tokens: Any, task: Any = "unknown",
    request_id: Any = None,
) -> WorkloadColumns:
    """:func:`make_workload`'s table as columns, without pandas, for arrivals with no NaN: the
    same values (arrivals less their minimum, then the rows in stable order of arrival: numpy's
    stable argsort orders a float column without NaN as pandas' stable ``sort_values`` does)."""
    arrival = np.asarray(arrival_s, dtype=np.float64)
    n = len(arrival)
    if np.isnan(arrival).any():
        raise ValueError("make_columns: arrival_s holds NaN (make_workload sorts those last)")
    ids = [str(i) for i in range(n)] if request_id is None else [str(r) for r in request_id]
    tasks = [task] * n if isinstance(task, str) else [str(t) for t in task]
    if n:
        arrival = arrival - arrival.min()
    order = np.argsort(arrival, kind="stable")
    rows = order.tolist()
    return WorkloadColumns(request_id=[ids[i] for i in rows], arrival_s=arrival[order],
                           prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64)[order],
                           output_tokens=np.asarray(output_tokens, dtype=np.int64)[order],
                           task=[tasks[i] for i in rows])


def validate_workload(df: pd.DataFrame, where: str = "<memory>") -> None:
    missing = [c for c in WORKLOAD_COLUMNS if c not in df.columns]
    if missing:
        raise TraceFormatError(f"{where}: workload lacks columns {missing}")
    if len(df) == 0:
        raise TraceFormatError(f"{where}: workload has no requests")
    a = df["arrival_s"].to_numpy(dtype=np.float64)
    if not np.isfinite(a).all() or (a < 0).any():
        i = int(np.flatnonzero(~np.isfinite(a) | (a < 0))[0])
        raise TraceFormatError(f"{where}: request row {i}: arrival_s {a[i]} must be finite and >= 0")
    if (np.diff(a) < 0).any():
        i = int(np.flatnonzero(np.diff(a) < 0)[0]) + 1
        raise TraceFormatError(f"{where}: request row {i}: arrivals not sorted")
    for col, lo in (("prompt_tokens", 1), ("output_tokens", 1)):
        v = df[col].to_numpy()
        if (v < lo).any():
            i = int(np.flatnonzero(v < lo)[0])
            raise TraceFormatError(f"{where}: request row {i}: {col} = {v[i]}, expected >= {lo}")


def write_workload(df: pd.DataFrame, path: str | os.PathLike, source: str = "") -> None:
    import pyarrow as pa

    path = Path(path)
    validate_workload(df, str(path))
    table = pa.Table.from_pandas(df[list(WORKLOAD_COLUMNS)], preserve_index=False)
    meta = {"schema_version": SCHEMA_VERSION, "kind": "workload", "source": source,
            "num_requests": len(df)}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    atomic_write_table(table, path)


def read_workload(path: str | os.PathLike) -> pd.DataFrame:
    import pyarrow.parquet as pq

    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != "workload":
        raise TraceFormatError(f"{path}: holds a {meta.get('kind')!r} table, expected a workload")
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:
        raise TraceFormatError(f"{path}: not a readable Parquet file ({short_error(exc)})") from None
    validate_workload(df, str(path))
    df["request_id"] = df["request_id"].astype(str)
    df["task"] = df["task"].astype(str)
    return df
