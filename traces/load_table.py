"""Expert load tables: per-layer, per-expert token counts, for what records counts, not routing.

A load table says how many tokens each expert of each MoE layer received, summed over a recording
window. It can drive placement (which needs only loads) and ``moesim trace stats`` (popularity
skew), but it CANNOT drive a cache replay or the simulator: it has no token order, no requests and
no per-token expert sets, so ``read_trace`` refuses it ("holds a 'load' table").

On disk: one Parquet file, one row per (layer, expert): ``layer_id`` int32, ``expert`` int32,
``count`` int64, rows in layer then expert order; schema metadata ``moesim`` = JSON with
``schema_version``, ``kind`` = "load", ``model``, ``num_layers``, ``num_experts``, ``layer_ids``,
``source``, ``extra``. In memory: :class:`LoadTable`, ``counts`` (L, E) int64.

``sglang-expert-distribution`` (importer)
    SGLang's expert-distribution recorder (``--expert-distribution-recorder-mode stat``, then the
    ``/start_expert_distribution_record``, ``/stop_...`` and ``/dump_expert_distribution_record``
    endpoints) writes ``expert_distribution_recorder_<time>.pt`` into
    ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR`` with ``torch.save`` of a dict: ``rank`` (int),
    ``logical_count`` (int tensor [buffered_steps, num_layers, num_logical_experts]: tokens routed
    to each logical expert in each forward pass kept in its buffer; all ranks already summed), and
    ``average_utilization_rate_over_window`` (float or None). The importer sums ``logical_count``
    over steps and over the files given. A ``per_token`` mode dump (``records``, per-token
    ``topk_ids_of_layer``) is a different thing and is refused. Files are loaded with
    ``torch.load(weights_only=True)``: tensors and plain values only, no code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.errors import TraceFormatError, short_error
from sim.common.files import atomic_write_table, read_nonempty
from traces.format import META_KEY, SCHEMA_VERSION, TraceMeta, read_meta

LOAD_KIND = "load"


#: a load table's metadata: :class:`traces.format.TraceMeta`'s fields (same order, same defaults,
#: same ``layer_ids`` default of 0..L-1) less ``top_k``, which counts do not have
LoadMeta = make_dataclass(
    "LoadMeta",
    [(f.name, f.type, field(default=f.default, default_factory=f.default_factory))
     for f in fields(TraceMeta) if f.name != "top_k"],
    namespace={"__post_init__": TraceMeta.__post_init__, "__module__": __name__})


@dataclass
class LoadTable:
    counts: np.ndarray  # (L, E) int64 tokens routed to expert e of layer l
    meta: LoadMeta

    def validate(self, where: str = "<memory>") -> None:
        c, m = self.counts, self.meta
        if c.ndim != 2 or c.shape != (m.num_layers, m.num_experts) or 0 in c.shape:
            raise TraceFormatError(f"{where}: counts have shape {c.shape}, expected ({m.num_layers}, "
                                   f"{m.num_experts})")
        if len(m.layer_ids) != m.num_layers:
            raise TraceFormatError(f"{where}: {len(m.layer_ids)} layer_ids for {m.num_layers} layers")
        if (c < 0).any():
            l, e = (int(x) for x in np.argwhere(c < 0)[0])
            raise TraceFormatError(f"{where}: layer {m.layer_ids[l]} expert {e}: count {int(c[l, e])} "
                                   f"is negative")
        if c.sum() == 0:
            raise TraceFormatError(f"{where}: all counts are zero; nothing was recorded")


def write_load_table(table: LoadTable, path: str | os.PathLike) -> None:
    import pyarrow as pa

    table.validate(str(path))
    L, E = table.counts.shape
    meta = {"schema_version": SCHEMA_VERSION, "kind": LOAD_KIND, **asdict(table.meta)}
    t = pa.table({"layer_id": pa.array(np.repeat(table.meta.layer_ids, E), type=pa.int32()),
                  "expert": pa.array(np.tile(np.arange(E), L), type=pa.int32()),
                  "count": pa.array(table.counts.reshape(-1).astype(np.int64), type=pa.int64())})
    atomic_write_table(t.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), Path(path))


def read_load_table(path: str | os.PathLike) -> LoadTable:
    import pyarrow.parquet as pq

    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") != LOAD_KIND:
        raise TraceFormatError(f"{path}: holds a {meta.get('kind')!r} table, expected a load table")
    try:
        m = LoadMeta(**{k: meta[k] for k in ("model", "num_layers", "num_experts")},
                     source=meta.get("source", ""), layer_ids=meta.get("layer_ids", []),
                     extra=meta.get("extra", {}))
        t = pq.read_table(path, columns=["layer_id", "expert", "count"])
    except KeyError as exc:
        raise TraceFormatError(f"{path}: moesim metadata lacks {exc.args[0]!r}") from None
    except Exception as exc:
        raise TraceFormatError(f"{path}: not a load table ({short_error(exc)})") from None
    L, E = m.num_layers, m.num_experts
    if t.num_rows != L * E:
        raise TraceFormatError(f"{path}: {t.num_rows} rows, expected layers x experts = {L * E}")
    lt = LoadTable(t.column("count").to_numpy().astype(np.int64).reshape(L, E), m)
    lt.validate(str(path))
    return lt


def load_table(path: str | os.PathLike) -> np.ndarray:
    """(L, E) float64 expert loads from a load table or a routing trace: what placement consumes."""
    kind = read_meta(path).get("kind")
    if kind == LOAD_KIND:
        return read_load_table(path).counts.astype(np.float64)
    from traces.format import read_trace
    from traces.stats import popularity_counts

    return popularity_counts(read_trace(path)).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# stats
# ------------------------------------------------------------------------------------------------
def load_stats(table: LoadTable) -> dict[str, Any]:
    from traces.stats import gini, norm_entropy, top_share

    c = table.counts.astype(np.float64)
    live = c.sum(axis=1) > 0  # a dense layer (DeepSeek's first) records no routed tokens
    shares = c[live] / c[live].sum(axis=1, keepdims=True)
    g, h, top = gini(shares), norm_entropy(shares), top_share(shares)
    m = table.meta
    return {"kind": LOAD_KIND, "model": m.model, "num_layers": m.num_layers, "num_experts": m.num_experts,
            "source": m.source, "routed_tokens_per_layer": c.sum(axis=1).astype(np.int64).tolist(),
            "note": "expert counts only: usable for placement and popularity, not for a cache replay",
            "layers_without_tokens": [m.layer_ids[i] for i in np.flatnonzero(~live)],
            "popularity": {"gini_mean": float(np.mean(g)), "gini_per_layer": np.round(g, 4).tolist(),
                           "entropy_mean": float(np.mean(h)), "top10pct_share_mean": float(np.mean(top)),
                           "hottest_expert_per_layer": c.argmax(axis=1).astype(int).tolist()}}


def format_load_stats(s: dict[str, Any]) -> str:
    p = s["popularity"]
    return "\n".join([
        f"load table: {s['model']}, {s['num_layers']} layers x {s['num_experts']} experts "
        f"({s['note']})",
        f"routed tokens per layer: {s['routed_tokens_per_layer'][:8]}"
        f"{' ...' if s['num_layers'] > 8 else ''}",
        f"popularity: gini mean {p['gini_mean']:.3f}, normalised entropy mean {p['entropy_mean']:.3f}, "
        f"top-10% experts' share {p['top10pct_share_mean']:.3f}",
    ])


# ------------------------------------------------------------------------------------------------
# SGLang
# ------------------------------------------------------------------------------------------------
def _read_sglang(path: Path) -> np.ndarray:
    import torch

    read_nonempty(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or non-torch files
        raise TraceFormatError(f"{path}: not a torch.save file moesim can read safely "
                               f"({short_error(exc)})") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{path}: holds a {type(obj).__name__}, expected the recorder's dict "
                               f"with logical_count")
    if "logical_count" not in obj:
        if "records" in obj:
            raise TraceFormatError(f"{path}: a per_token recorder dump (records); expected a stat-mode "
                                   f"dump with logical_count")
        raise TraceFormatError(f"{path}: keys {sorted(map(str, obj))}, expected logical_count")
    c = obj["logical_count"]
    if not isinstance(c, torch.Tensor):
        raise TraceFormatError(f"{path}: logical_count is {type(c).__name__}, expected a tensor")
    if c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool:
        raise TraceFormatError(f"{path}: logical_count has dtype {c.dtype}, expected integer counts")
    a = c.numpy().astype(np.int64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise TraceFormatError(f"{path}: logical_count has shape {tuple(c.shape)}, expected "
                               f"[steps, num_layers, num_experts]")
    if (a < 0).any():
        s, l, e = (int(x) for x in np.argwhere(a < 0)[0])
        raise TraceFormatError(f"{path}: step {s} layer {l} expert {e}: count {int(a[s, l, e])} is negative")
    return a.sum(axis=0)


def import_sglang_distribution(paths: Sequence[str | os.PathLike], model: str = "sglang",
                               first_layer_id: int = 0) -> LoadTable:
    total = None
    for p in map(Path, paths):
        c = _read_sglang(p)
        if total is not None and c.shape != total.shape:
            raise TraceFormatError(f"{p}: counts of shape {c.shape}, expected {total.shape} like "
                                   f"{Path(paths[0]).name}")
        total = c if total is None else total + c
    L, E = total.shape
    lt = LoadTable(total, LoadMeta(model=model, num_layers=L, num_experts=E,
                                   source="sglang-expert-distribution: " + ", ".join(map(str, paths)),
                                   layer_ids=list(range(first_layer_id, first_layer_id + L)),
                                   extra={"format": "sglang-expert-distribution", "files": len(paths)}))
    lt.validate(", ".join(map(str, paths)))
    return lt


LOAD_FORMATS = {
    "sglang-expert-distribution": "SGLang expert_distribution_recorder_*.pt (stat mode): a per-layer "
                                  "expert LOAD table, not a routing trace (no cache replay)",
}
