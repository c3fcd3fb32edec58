"""The routing-trace format: numpy arrays in memory, one Parquet file on disk.

In memory a :class:`RoutingTrace` holds, for T tokens, L MoE layers and top-k K::

    experts  (T, L, K) int16    expert ids chosen by the router, in the router's order
    weights  (T, L, K) float32  gate weights, or None where the source did not record them
    tokens   DataFrame, T rows  request_id (str), position (int32), phase ('prefill'|'decode'),
                                task (str), text (str or None)
    meta     TraceMeta          model, num_layers, num_experts, top_k, source, layer_ids

Tokens of one request are contiguous and in position order; requests appear in trace order.

On disk: one Parquet file, one row per token, with the token-table columns plus ``experts`` (a
fixed-size list of L*K int16) and, where known, ``weights`` (fixed-size list of L*K float32). The
schema metadata key ``moesim`` holds a JSON object with ``schema_version``, ``kind`` = "routing",
and the :class:`TraceMeta` fields.

This module is the only reader and writer of the format; every importer produces a RoutingTrace
and calls :func:`write_trace`. Validation runs on load and before every write; each violation is a
:class:`~sim.common.errors.TraceFormatError` naming the file, the token (row) and layer, and what was
expected. Writes are atomic (temporary file in the target folder, then rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.common.errors import TraceFormatError, short_error
from sim.common.files import atomic_write_table

if TYPE_CHECKING:  # pandas is imported where a token table is made or read: not by a cache hit
    import pandas as pd

SCHEMA_VERSION = 1
META_KEY = b"moesim"
PHASES = ("prefill", "decode")
TOKEN_COLUMNS = ("request_id", "position", "phase", "task", "text")


@dataclass
class TraceMeta:
    model: str
    num_layers: int
    num_experts: int
    top_k: int
    source: str = ""
    #: the model's own numbering of the L MoE layers (DeepSeek-V2-Lite: 1..26; default 0..L-1)
    layer_ids: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layer_ids:
            self.layer_ids = list(range(self.num_layers))


def check_expert_ids(experts: np.ndarray, num_experts: int, where_of: Any) -> None:
    """Every id of ``experts`` (..., K) in 0..num_experts-1 and distinct along the last axis, else
    a :class:`TraceFormatError` whose message starts with ``where_of(index)`` (``index``: the
    leading indices of the offending row, e.g. (token, layer)). The one expert-id check of the
    trace format, its importers and the serving-engine importers."""
    bad = (experts < 0) | (experts >= num_experts)
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        raise TraceFormatError(f"{where_of(i[:-1])}: expert id {int(experts[i])} out of range, "
                               f"expected 0..{num_experts - 1}")
    K = experts.shape[-1]
    if K > 1:
        s = np.sort(experts, axis=-1)
        dup = (s[..., 1:] == s[..., :-1]).any(axis=-1)
        if dup.any():
            i = tuple(int(x) for x in np.argwhere(dup)[0])
            raise TraceFormatError(f"{where_of(i)}: expert chosen twice in top-{K} "
                                   f"{experts[i].tolist()}, expected {K} distinct experts")


def expert_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L, E) int64: how many tokens chose expert e at layer l, from experts (T, L, K). The one
    place expert popularity is counted (stats, the generator's fit, placement planning)."""
    T, L, K = experts.shape
    if experts.size and (int(experts.min()) < 0 or int(experts.max()) >= num_experts):
        raise ValueError(f"expert ids {int(experts.min())}..{int(experts.max())} outside "
                         f"0..{num_experts - 1}")
    out = np.zeros(L * num_experts, dtype=np.int64)
    base = (np.arange(L, dtype=np.intp) * num_experts)[None, :, None]  # each layer's first key
    step = max(1, (1 << 16) // max(L * K, 1))
    for a in range(0, T, step):  # rows at a time as keys ``layer * E + expert`` (one bincount
        # each, a 512 KiB temporary: no (T, L, K) int64 one, 500 MB for a DeepSeek-V3 pool);
        # integers, the same in any order
        idx = experts[a:a + step].astype(np.intp)
        idx += base
        out += np.bincount(idx.reshape(-1), minlength=L * num_experts)
    return out.reshape(L, num_experts)


@dataclass
class RoutingTrace:
    experts: np.ndarray  # (T, L, K) int16
    weights: np.ndarray | None  # (T, L, K) float32 or None
    tokens: pd.DataFrame  # T rows, TOKEN_COLUMNS
    meta: TraceMeta

    # ---- shape --------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return self.meta.num_layers

    @property
    def num_experts(self) -> int:
        return self.meta.num_experts

    @property
    def top_k(self) -> int:
        return self.meta.top_k

    # ---- requests -----------------------------------------------------------------------------
    def request_ids(self) -> list[str]:
        """Request ids in trace order."""
        import pandas as pd

        return list(pd.unique(self.tokens["request_id"]))

    def request_bounds(self) -> np.ndarray:
        """(R+1,) int64 offsets: request r owns tokens ``bounds[r]:bounds[r+1]``."""
        rid = self.tokens["request_id"].to_numpy()
        if len(rid) == 0:
            return np.zeros(1, dtype=np.int64)
        change = np.flatnonzero(rid[1:] != rid[:-1]) + 1
        return np.concatenate([[0], change, [len(rid)]]).astype(np.int64)

    def request_tasks(self) -> list[str]:
        b = self.request_bounds()
        task = self.tokens["task"].to_numpy()
        return [str(task[i]) for i in b[:-1]]

    def select_requests(self, request_ids: list[str]) -> RoutingTrace:
        """A new trace with the named requests, in the given order."""
        b = self.request_bounds()
        index = {r: i for i, r in enumerate(self.request_ids())}
        missing = [r for r in request_ids if r not in index]
        if missing:
            raise TraceFormatError(f"requests not in trace: {missing[:5]}")
        rows = np.concatenate(
            [np.arange(b[index[r]], b[index[r] + 1]) for r in request_ids]
        ) if request_ids else np.zeros(0, dtype=np.int64)
        return self.take(rows)

    def take(self, rows: np.ndarray) -> RoutingTrace:
        rows = np.asarray(rows, dtype=np.int64)
        return RoutingTrace(
            experts=self.experts[rows],
            weights=None if self.weights is None else self.weights[rows],
            tokens=self.tokens.iloc[rows].reset_index(drop=True),
            meta=TraceMeta(**asdict(self.meta)),
        )

    # ---- checks -------------------------------------------------------------------------------
    def validate(self, where: str = "<memory>") -> None:
        validate(self, where)


def make_tokens(
    request_id: Any, position: Any, phase: Any, task: Any, text: Any = None
) -> pd.DataFrame:
    """Build a token table with the canonical dtypes (scalars broadcast)."""
    import pandas as pd

    n = len(position) if hasattr(position, "__len__") else None
    df = pd.DataFrame({"position": np.asarray(position, dtype=np.int32)})
    n = len(df)
    for name, value in (("request_id", request_id), ("phase", phase), ("task", task)):
        if isinstance(value, str):
            df[name] = pd.Series([value] * n, dtype=object)
        else:
            df[name] = pd.Series(np.asarray(value, dtype=object).astype(str), dtype=object)
    if text is None:
        df["text"] = pd.Series([None] * n, dtype=object)
    else:
        df["text"] = pd.Series(list(text), dtype=object)
    return df[list(TOKEN_COLUMNS)]


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def validate(trace: RoutingTrace, where: str = "<memory>") -> None:
    """Raise TraceFormatError naming ``where``, the token row and layer for the first violation."""
    import pandas as pd

    m = trace.meta
    for name in ("num_layers", "num_experts", "top_k"):
        v = getattr(m, name)
        if not isinstance(v, int | np.integer) or v <= 0:
            raise TraceFormatError(f"{where}: metadata {name} must be a positive integer, got {v!r}")
    if m.top_k > m.num_experts:
        raise TraceFormatError(
            f"{where}: top_k {m.top_k} exceeds num_experts {m.num_experts}")
    if len(m.layer_ids) != m.num_layers:
        raise TraceFormatError(
            f"{where}: metadata layer_ids has {len(m.layer_ids)} entries, expected num_layers="
            f"{m.num_layers}")
    e = trace.experts
    if e.ndim != 3 or e.shape[1:] != (m.num_layers, m.top_k):
        raise TraceFormatError(
            f"{where}: experts has shape {e.shape}, expected (T, {m.num_layers}, {m.top_k})")
    T = e.shape[0]
    if T == 0:
        raise TraceFormatError(f"{where}: trace has no tokens")
    if len(trace.tokens) != T:
        raise TraceFormatError(
            f"{where}: token table has {len(trace.tokens)} rows, experts has {T} tokens")
    missing = [c for c in TOKEN_COLUMNS if c not in trace.tokens.columns]
    if missing:
        raise TraceFormatError(f"{where}: token table lacks columns {missing}")
    if not np.issubdtype(e.dtype, np.integer):
        raise TraceFormatError(f"{where}: experts must be integers, got dtype {e.dtype}")
    check_expert_ids(e, m.num_experts,
                     lambda i: f"{where}: token {i[0]} layer {m.layer_ids[i[1]]}")
    if trace.weights is not None:
        w = trace.weights
        if w.shape != e.shape:
            raise TraceFormatError(f"{where}: weights shape {w.shape} != experts shape {e.shape}")
        nonfinite = ~np.isfinite(w)
        if nonfinite.any():
            t, l, k = (int(x) for x in np.argwhere(nonfinite)[0])
            raise TraceFormatError(
                f"{where}: token {t} layer {m.layer_ids[l]}: gate weight {w[t, l, k]} is not finite")
    tok = trace.tokens
    phase = tok["phase"].to_numpy()
    badp = ~np.isin(phase, PHASES)
    if badp.any():
        t = int(np.flatnonzero(badp)[0])
        raise TraceFormatError(
            f"{where}: token {t}: phase {phase[t]!r}, expected one of {list(PHASES)}")
    pos = tok["position"].to_numpy()
    if (pos < 0).any():
        t = int(np.flatnonzero(pos < 0)[0])
        raise TraceFormatError(f"{where}: token {t}: position {pos[t]} is negative")
    rid = tok["request_id"].to_numpy()
    if pd.isna(tok["request_id"]).any():
        t = int(np.flatnonzero(pd.isna(tok["request_id"]).to_numpy())[0])
        raise TraceFormatError(f"{where}: token {t}: request_id is missing")
    b = trace.request_bounds()
    starts = rid[b[:-1]]
    if len(set(starts.tolist())) != len(starts):
        seen: set = set()
        for i, r in enumerate(starts):
            if r in seen:
                raise TraceFormatError(
                    f"{where}: token {int(b[i])}: request {r!r} is not contiguous; expected each "
                    f"request's tokens together")
            seen.add(r)
    # positions strictly increase inside a request
    same = rid[1:] == rid[:-1]
    back = same & (pos[1:] <= pos[:-1])
    if back.any():
        t = int(np.flatnonzero(back)[0]) + 1
        raise TraceFormatError(
            f"{where}: token {t}: position {pos[t]} of request {rid[t]!r} does not follow "
            f"{pos[t - 1]}; expected increasing positions")


# ------------------------------------------------------------------------------------------------
# Parquet I/O
# ------------------------------------------------------------------------------------------------
def write_trace(trace: RoutingTrace, path: str | os.PathLike) -> None:
    """Validate and atomically write ``trace`` to ``path`` (Parquet)."""
    import pyarrow as pa

    path = Path(path)
    validate(trace, str(path))
    T, L, K = trace.experts.shape
    tok = trace.tokens
    cols: dict[str, Any] = {
        "request_id": pa.array(tok["request_id"].astype(str).tolist(), type=pa.string()),
        "position": pa.array(tok["position"].to_numpy(dtype=np.int32), type=pa.int32()),
        "phase": pa.array(tok["phase"].astype(str).tolist(), type=pa.string()).dictionary_encode(),
        "task": pa.array(tok["task"].astype(str).tolist(), type=pa.string()).dictionary_encode(),
        "text": pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                          for v in tok["text"].tolist()], type=pa.string()),
        "experts": pa.FixedSizeListArray.from_arrays(
            pa.array(trace.experts.astype(np.int16).reshape(-1)), L * K),
    }
    if trace.weights is not None:
        cols["weights"] = pa.FixedSizeListArray.from_arrays(
            pa.array(trace.weights.astype(np.float32).reshape(-1)), L * K)
    meta = {"schema_version": SCHEMA_VERSION, "kind": "routing", **asdict(trace.meta)}
    table = pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    atomic_write_table(table, path)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a moesim Parquet file (routing trace or workload)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise TraceFormatError(f"{path}: no such file")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise TraceFormatError(f"{path}: not a readable Parquet file ({short_error(exc)})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceFormatError(f"{path}: Parquet file has no moesim metadata; expected a file "
                               f"written by moesim (import it with 'moesim trace import')")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise TraceFormatError(f"{path}: moesim metadata is not valid JSON") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TraceFormatError(
            f"{path}: schema_version {version!r}, this moesim reads version {SCHEMA_VERSION}")
    return meta


def read_trace(path: str | os.PathLike) -> RoutingTrace:
    """Read and validate a routing trace written by :func:`write_trace`."""
    import pyarrow.parquet as pq

    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != "routing":
        raise TraceFormatError(f"{path}: holds a {meta.get('kind')!r} table, expected a routing trace")
    try:
        fields = {k: meta[k] for k in ("model", "num_layers", "num_experts", "top_k")}
        tm = TraceMeta(**fields, source=meta.get("source", ""), layer_ids=meta.get("layer_ids", []),
                       extra=meta.get("extra", {}))
    except KeyError as exc:
        raise TraceFormatError(f"{path}: moesim metadata lacks {exc.args[0]!r}") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise TraceFormatError(f"{path}: not a readable Parquet file ({short_error(exc)})") from None
    need = ["request_id", "position", "phase", "task", "experts"]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise TraceFormatError(f"{path}: missing columns {missing}, expected {need} (+ text, weights)")
    T = table.num_rows
    L, K = tm.num_layers, tm.top_k

    def _matrix(name: str, dtype: Any) -> np.ndarray:
        col = table.column(name).combine_chunks()
        import pyarrow as pa

        if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != L * K:
            raise TraceFormatError(
                f"{path}: column {name!r} has type {col.type}, expected fixed_size_list of "
                f"{L}*{K}={L * K} values per token")
        if col.null_count or col.values.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) \
                if col.null_count else -1
            raise TraceFormatError(f"{path}: column {name!r} has missing values (row {row})")
        return col.flatten().to_numpy().astype(dtype, copy=False).reshape(T, L, K)

    experts = _matrix("experts", np.int16)
    weights = _matrix("weights", np.float32) if "weights" in table.column_names else None
    text = table.column("text").to_pylist() if "text" in table.column_names else None
    tokens = make_tokens(
        request_id=table.column("request_id").to_numpy(zero_copy_only=False),
        position=table.column("position").to_numpy(),
        phase=table.column("phase").cast("string").to_numpy(zero_copy_only=False),
        task=table.column("task").cast("string").to_numpy(zero_copy_only=False),
        text=text if text is not None else [None] * T,
    )
    trace = RoutingTrace(experts=experts, weights=weights, tokens=tokens, meta=tm)
    validate(trace, str(path))
    return trace

