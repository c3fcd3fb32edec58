"""Request-trace importers: Azure LLM inference CSV and Mooncake JSONL -> workload table.

The workload table is :mod:`traces.workload`'s format: ``request_id``, ``arrival_s`` (seconds from
the first request), ``prompt_tokens``, ``output_tokens``, ``task``.

``azure-csv``
    ``TIMESTAMP,ContextTokens,GeneratedTokens`` (Azure LLM inference trace 2023, CC-BY-4.0).
    ``TIMESTAMP`` is a date-time; arrival = seconds from the earliest request over all files.
``mooncake-jsonl``
    One JSON object per line with ``timestamp`` (ms), ``input_length``, ``output_length`` (Mooncake
    FAST'25 traces, Apache-2.0); ``hash_ids`` is ignored.

Request id = the row number in its file (0-based, data rows only), prefixed with the file stem and
``/`` when several files are merged. Task = the one named in the file name where it says
(``_code`` -> "code", ``_conv``/``conversation`` -> "conversation", ``toolagent`` -> "toolagent",
``synthetic`` -> "synthetic"), "unknown" otherwise, unless ``task`` is given. A request with zero
prompt or zero output tokens cannot be served by the simulator: ``zero="fail"`` (default) rejects
the file naming the row, ``zero="drop"`` drops such rows and counts them in ``dropped``.

:func:`load_workload` accepts a workload Parquet or one of the raw files directly (by extension,
then by sniffing the first line); :func:`load_workloads` merges several of any of these by arrival
time (``workload.path`` given as a list), each request keeping its file's task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.common.errors import TraceFormatError
from sim.common.files import read_nonempty
from traces.workload import make_workload, read_workload, validate_workload

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
WORKLOAD_FORMATS = {
    "azure-csv": "Azure LLM inference trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens)",
    "mooncake-jsonl": "Mooncake trace JSONL (timestamp ms, input_length, output_length)",
}


def task_from_name(path: Path) -> str:
    s = path.stem.lower()
    for needle, task in (("_code", "code"), ("conversation", "conversation"), ("_conv", "conversation"),
                         ("toolagent", "toolagent"), ("synthetic", "synthetic")):
        if needle in s:
            return task
    return "unknown"


def _int_column(values: pd.Series, path: Path, name: str, line0: int) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce")
    bad = v.isna().to_numpy() | ~np.isfinite(v.to_numpy(dtype=np.float64, na_value=np.nan))
    f = v.to_numpy(dtype=np.float64, na_value=np.nan)
    bad |= ~bad & (np.floor(np.nan_to_num(f)) != np.nan_to_num(f))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TraceFormatError(f"{path}: line {line0 + i}: {name} {values.iloc[i]!r} is not a whole number")
    out = f.astype(np.int64)
    if (out < 0).any():
        i = int(np.flatnonzero(out < 0)[0])
        raise TraceFormatError(f"{path}: line {line0 + i}: {name} {out[i]} is negative")
    return out


def _read_azure(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(arrival seconds since epoch, prompt, output, first data line)."""
    import io

    data = read_nonempty(path)
    header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    cols = [c.strip() for c in header.split(",")]
    if tuple(cols) != AZURE_COLUMNS:
        raise TraceFormatError(f"{path}: line 1: columns {cols}, expected {list(AZURE_COLUMNS)} (azure-csv)")
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise TraceFormatError(f"{path}: not a valid CSV ({str(exc).strip().splitlines()[0]})") from None
    if len(df) == 0:
        raise TraceFormatError(f"{path}: no requests after the header")
    ts = pd.to_datetime(df["TIMESTAMP"].str.strip(), errors="coerce", format="mixed")
    if ts.isna().any():
        i = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise TraceFormatError(f"{path}: line {i + 2}: TIMESTAMP {df['TIMESTAMP'].iloc[i]!r} is not a "
                               f"date-time like 2023-11-16 18:17:03.97")
    t_s = (ts - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy(dtype=np.float64)
    return (t_s, _int_column(df["ContextTokens"], path, "ContextTokens", 2),
            _int_column(df["GeneratedTokens"], path, "GeneratedTokens", 2), 2)


def read_jsonl(path: str | os.PathLike, data: bytes | None = None, hint: str = "") -> list[tuple[int, Any]]:
    """(line number from 1, parsed value) for each non-blank line of the JSONL file ``path`` (its
    bytes ``data`` where already read). A line that is not JSON fails naming the file and line,
    with ``hint`` appended to the message."""
    if data is None:
        data = read_nonempty(path)
    out = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{path}: line {n}: not valid JSON ({exc.msg}){hint}") from None
    return out


def _read_mooncake(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    rows = []
    lines = []
    for i, o in read_jsonl(path, hint="; file truncated?"):
        if not isinstance(o, dict) or any(k not in o for k in MOONCAKE_KEYS):
            raise TraceFormatError(f"{path}: line {i}: expected an object with keys {list(MOONCAKE_KEYS)} "
                                   f"(mooncake-jsonl)")
        rows.append([o[k] for k in MOONCAKE_KEYS])
        lines.append(i)
    df = pd.DataFrame(rows, columns=list(MOONCAKE_KEYS))
    ln = np.asarray(lines)
    prompt = _int_column(df["input_length"], path, "input_length", 1)
    output = _int_column(df["output_length"], path, "output_length", 1)
    t = pd.to_numeric(df["timestamp"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(t).all() or (t < 0).any():
        i = int(np.flatnonzero(~np.isfinite(t) | (t < 0))[0])
        raise TraceFormatError(f"{path}: line {ln[i]}: timestamp {df['timestamp'].iloc[i]!r}, expected "
                               f"milliseconds >= 0")
    return t / 1000.0, prompt, output, 1


def import_workload(
    paths: Sequence[str | os.PathLike], fmt: str, *, task: str | None = None, zero: str = "fail",
    dropped: dict[str, int] | None = None, origins: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Read request traces of format ``fmt`` into one workload table (sorted by arrival).

    ``origins`` (azure-csv only, whose timestamps are wall-clock dates): filled with the epoch
    seconds of the earliest request kept, per file."""
    if fmt not in WORKLOAD_FORMATS:
        raise TraceFormatError(f"workload format {fmt!r}, expected one of {list(WORKLOAD_FORMATS)}")
    if zero not in ("fail", "drop"):
        raise TraceFormatError(f"zero-length policy {zero!r}, expected 'fail' or 'drop'")
    paths = [Path(p) for p in paths]
    if not paths:
        raise TraceFormatError(f"{fmt}: no input files given")
    reader = _read_azure if fmt == "azure-csv" else _read_mooncake
    parts = []
    for p in paths:
        t_s, prompt, output, line0 = reader(p)
        back = np.flatnonzero(np.diff(t_s) < 0)
        if len(back):
            i = int(back[0]) + 1
            raise TraceFormatError(
                f"{p}: data row {i + 1}: arrival {t_s[i]:.3f} s is before row {i}'s "
                f"{t_s[i - 1]:.3f} s; expected non-decreasing "
                f"arrival times (sort the file, or split it into files that are each in order)")
        ids = np.arange(len(t_s)).astype(str).astype(object)
        if len(paths) > 1:
            ids = np.asarray([f"{p.stem}/{i}" for i in ids], dtype=object)
        zero_rows = (prompt < 1) | (output < 1)
        if zero_rows.any():
            if zero == "fail":
                i = int(np.flatnonzero(zero_rows)[0])
                raise TraceFormatError(
                    f"{p}: line {line0 + i}: prompt tokens {prompt[i]}, output tokens {output[i]}; "
                    f"expected both >= 1 ({int(zero_rows.sum())} such rows; --zero drop drops them)")
            if dropped is not None:
                dropped[str(p)] = int(zero_rows.sum())
        keep = ~zero_rows
        if origins is not None and fmt == "azure-csv" and keep.any():
            origins[str(p)] = float(t_s[keep].min())
        parts.append(pd.DataFrame({"request_id": ids[keep], "t": t_s[keep], "p": prompt[keep],
                                   "o": output[keep], "task": task or task_from_name(p)}))
    df = pd.concat(parts, ignore_index=True)
    if len(df) == 0:
        raise TraceFormatError(f"{', '.join(map(str, paths))}: no requests left to import")
    if df["request_id"].duplicated().any():
        r = df["request_id"][df["request_id"].duplicated()].iloc[0]
        raise TraceFormatError(f"request id {r!r} occurs twice (same file given twice?)")
    wl = make_workload(df["t"].to_numpy(), df["p"].to_numpy(), df["o"].to_numpy(),
                       task=df["task"].tolist(), request_id=df["request_id"].tolist())
    validate_workload(wl, ", ".join(map(str, paths)))
    return wl


def sniff_workload_format(path: str | os.PathLike) -> str:
    """'parquet', 'azure-csv' or 'mooncake-jsonl' for ``path`` (by extension, then first line)."""
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(f"{p}: no such file")
    with open(p, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PAR1":
        return "parquet"
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    if p.suffix.lower() == ".csv" or first.startswith("TIMESTAMP"):
        return "azure-csv"
    if p.suffix.lower() in (".jsonl", ".json") or first.startswith("{"):
        return "mooncake-jsonl"
    raise TraceFormatError(f"{p}: cannot tell the workload format; expected a workload Parquet, an Azure "
                           f"CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or a Mooncake JSONL")


def load_workload(path: str | os.PathLike, *, task: str | None = None, zero: str = "drop") -> pd.DataFrame:
    """A workload table from a workload Parquet or directly from an Azure CSV / Mooncake JSONL.

    Raw files drop zero-length requests by default here (``zero="fail"`` to reject them).
    """
    fmt = sniff_workload_format(path)
    if fmt == "parquet":
        return read_workload(path)
    return import_workload([path], fmt, task=task, zero=zero)


def load_workloads(paths: Sequence[str | os.PathLike], key: str = "workload.path") -> pd.DataFrame:
    """Several request traces (any mix of the formats :func:`load_workload` reads) merged into one
    workload: a cluster serving several services at once.

    Each request keeps its own file's task (a workload Parquet's ``task`` column; an Azure or
    Mooncake file's task from its name). Clocks: when every file is an Azure CSV (wall-clock
    dates), they are merged on that common clock (the Azure 2023 conversation trace starts
    77 s before the code trace, and stays so); otherwise each file's arrivals count from its own
    first request. Merge order: by arrival time; ties keep the order of the list, then the file's
    row order (stable). Request ids become ``<i>:<id>`` (``i``: the file's position in the list).
    A bad entry fails in one line naming ``key[i]`` and the file.
    """
    from sim.common.files import require_file

    paths = list(paths)
    if not paths:
        raise TraceFormatError(f"{key}=[] names no file; give a request trace or a list of them")
    parts, origins = [], []
    for i, path in enumerate(paths):
        where = f"{key}[{i}]"
        require_file(path, where, what="a request trace: workload Parquet, Azure CSV or Mooncake JSONL")
        try:
            fmt = sniff_workload_format(path)
            orig: dict[str, float] = {}
            if fmt == "parquet":
                df = read_workload(path)
            else:
                df = import_workload([path], fmt, zero="drop", origins=orig)
        except TraceFormatError as exc:
            raise TraceFormatError(f"{where}={path}: {exc}") from None
        origins.append(orig.get(str(Path(path))))
        df = df.copy()
        df["request_id"] = [f"{i}:{r}" for r in df["request_id"]]
        parts.append(df)
    if all(o is not None for o in origins):  # one wall clock: keep the files' offsets
        first = min(origins)
        for df, o in zip(parts, origins):
            df["arrival_s"] = df["arrival_s"] + (o - first)
    merged = pd.concat(parts, ignore_index=True)  # list order, then row order
    merged = merged.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    merged["arrival_s"] = merged["arrival_s"] - merged["arrival_s"].iloc[0]
    validate_workload(merged, f"{key}={paths}")
    return merged
