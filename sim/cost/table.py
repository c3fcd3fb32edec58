"""The table cost model: interpolates profiles measured by ``realrun`` calibration.

CSV layout (one file per device, header required, one row per measurement)::

    op,device,dtype,tokens,experts,hidden,intermediate,bytes,time_s

- ``op``: ``expert`` (one expert's FFN over ``tokens`` tokens), ``gate`` (router of one layer,
  ``tokens`` tokens, ``experts`` = routed experts), ``attention`` (one layer's attention over a
  batch of ``tokens`` tokens, unsharded), ``copy`` (host-to-device copy of ``bytes``),
  ``all_to_all`` (one all-to-all, ``bytes`` sent per GPU, ``experts`` column = number of GPUs).
- ``device``: the GPU name (e.g. ``h100-sxm``); ``dtype``: weight dtype (``bf16``, ``fp8``).
- ``tokens``, ``experts``, ``hidden``, ``intermediate``, ``bytes``: integers, 0 where the op has
  no such dimension; ``time_s``: measured median seconds (float > 0).
- Optional columns (0 when absent): ``context`` (attention: the (query, key) pairs the batch
  attends, causal), ``kv_tokens`` (attention: the KV tokens read, once per query tile:
  :func:`sim.cost.analytic.kv_read_tokens`) and ``sequences`` (attention: the requests of the
  batch). ``op`` may also be ``iteration``: per iteration besides the layers, against ``tokens``.

Attention rows that carry ``context``, ``kv_tokens`` or ``sequences`` (``moesim realrun
calibrate`` writes them) are fitted, by least squares on the relative error with non-negative
coefficients, as ``c0 + c_tok * tokens + c_ctx * context + c_kv * kv_tokens + c_seq * sequences``
(decode reads its KV per query, prefill per tile: the two terms tell them apart);
``attention_s`` answers all but the per-sequence part, which the protocol gives only per
iteration and ``iteration_s`` charges (``num_layers * c_seq * sequences``). Older rows
(tokens only) are interpolated in tokens. The copy link's bandwidth is the largest measured
copy's bytes per second, its latency what the smallest copy took beyond that.

Rows are selected by ``device``, ``dtype`` and the model's ``hidden`` / ``intermediate`` (for
``expert``, ``gate`` and ``attention``); within a selection the time is interpolated linearly in
``tokens`` (or ``bytes``). A query outside the measured range is answered by the nearest
measured point scaled linearly (per token or per byte) and **counted** in :meth:`report`
(``out_of_range`` per op), which the simulator writes into ``metrics.json``. An op with no
matching rows falls back to the analytic model and is counted under ``fallback``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.common.errors import ConfigError
from sim.cost.analytic import AnalyticCost
from sim.cost.base import moe_by_sum

COLUMNS = ("op", "device", "dtype", "tokens", "experts", "hidden", "intermediate", "bytes", "time_s")
OPS = ("expert", "gate", "attention", "copy", "all_to_all", "iteration")
OPTIONAL_COLUMNS = ("context", "kv_tokens", "sequences")
_INT_COLUMNS = ("tokens", "experts", "hidden", "intermediate", "bytes")


def read_profile(path: str | Path) -> pd.DataFrame:
    """Read and check a calibration CSV; errors name the file, the row and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: cost table not found")
    try:
        df = pd.read_csv(path, dtype={"op": str, "device": str, "dtype": str})
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing columns {missing}; expected header {','.join(COLUMNS)}")
    for i, op in enumerate(df["op"].tolist()):
        if op not in OPS:
            raise ConfigError(f"{path}: row {i + 2}: op {op!r}, expected one of {list(OPS)}")
    for c in OPTIONAL_COLUMNS:
        if c not in df.columns:
            df[c] = 0
    for c in (*_INT_COLUMNS, *OPTIONAL_COLUMNS, "time_s"):
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() | (v < 0) if c != "time_s" else v.isna() | (v <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            want = "a positive number" if c == "time_s" else "an integer >= 0"
            raise ConfigError(f"{path}: row {i + 2}: {c} = {df[c].iloc[i]!r}, expected {want}")
        df[c] = v
    return df


class TableCost:
    """Interpolated measured times, with an analytic fallback for unmeasured ops (reported)."""

    def __init__(self, profile: pd.DataFrame, fallback: AnalyticCost, where: str = "<table>",
                 device: str | None = None) -> None:
        """Rows of ``device`` (default: the fallback's hardware name) and the model's dtype."""
        self.fallback = fallback
        m, hw = fallback.model, fallback.hw
        device = device or hw.name
        for c in OPTIONAL_COLUMNS:
            if c not in profile.columns:
                profile = profile.assign(**{c: 0})
        sel = profile[(profile["device"] == device) & (profile["dtype"] == m.dtype)]
        if sel.empty:
            raise ConfigError(f"{where}: no rows for device={device!r} dtype={m.dtype!r}")
        self._curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        shape_ok = (sel["hidden"] == m.hidden_size)
        for op, x, extra in (("expert", "tokens", sel["intermediate"] == m.expert_intermediate_size),
                             ("gate", "tokens", sel["experts"] == m.num_experts),
                             ("attention", "tokens", None), ("copy", "bytes", None),
                             ("all_to_all", "bytes", None), ("iteration", "tokens", None)):
            rows = sel[sel["op"] == op]
            if op in ("expert", "gate", "attention", "iteration"):
                rows = rows[shape_ok[rows.index]]
                if extra is not None:
                    rows = rows[extra[rows.index]]
            if op == "attention" and (rows[list(OPTIONAL_COLUMNS)] > 0).any(axis=None):
                self._fit_attention(rows)
            elif len(rows):
                g = rows.groupby(x)["time_s"].median().sort_index()
                self._curves[op] = (g.index.to_numpy(np.float64), g.to_numpy(np.float64))
        self.out_of_range: dict[str, int] = {op: 0 for op in OPS}
        self.fallback_calls: dict[str, int] = {op: 0 for op in (*OPS, "all_reduce")}
        self.host_link_latency_s = fallback.host_link_latency_s
        self.host_link_bytes_per_s = fallback.host_link_bytes_per_s
        if "copy" in self._curves:
            xs, ys = self._curves["copy"]
            if xs[-1] > 0:
                self.host_link_bytes_per_s = float(xs[-1] / ys[-1])
                self.host_link_latency_s = max(0.0, float(ys[0] - xs[0] / self.host_link_bytes_per_s))
        #: per-copy setup beyond a fetch's first: in the latency and bandwidth above
        self.host_copy_overhead_s = 0.0

    _attn: tuple[float, ...] | None = None  # c0, c_tok, c_ctx, c_kv, c_seq
    _attn_max: tuple[float, float] = (0.0, 0.0)  # measured tokens, context

    def _fit_attention(self, rows: pd.DataFrame) -> None:
        X = np.column_stack([np.ones(len(rows)), rows["tokens"], rows["context"],
                             rows["kv_tokens"], rows["sequences"]]).astype(np.float64)  # (N, 5)
        y = rows["time_s"].to_numpy(np.float64)
        w = 1.0 / y  # relative error: small batches weigh as much as large ones
        self._attn = tuple(float(c) for c in nonneg_lstsq(X * w[:, None], y * w))
        self._attn_max = (float(rows["tokens"].max()), float(rows["context"].max()))

    #: the profile's device copies in line with compute (``copies_in_line`` in the meta.json
    #: beside the CSV: realrun's CPU): the layer walk charges a prefetch's copy where it is issued
    copies_in_line: bool = False

    @classmethod
    def from_csv(cls, path: str | Path, fallback: AnalyticCost, device: str | None = None) -> TableCost:
        t = cls(read_profile(path), fallback, str(path), device)
        meta = Path(path).parent / "meta.json"
        if meta.is_file():
            import json

            try:
                t.copies_in_line = bool(json.loads(meta.read_text()).get("copies_in_line", False))
            except (ValueError, AttributeError):
                raise ConfigError(f"{meta}: not a JSON object (the profile's meta.json)") from None
        return t

    def _interp(self, op: str, x: np.ndarray) -> np.ndarray | None:
        curve = self._curves.get(op)
        if curve is None:
            self.fallback_calls[op] += int(np.size(x))
            return None
        xs, ys = curve
        x = np.asarray(x, dtype=np.float64)
        y = np.interp(x, xs, ys)
        lo, hi = x < xs[0], x > xs[-1]
        n_out = int(np.count_nonzero(lo | hi))
        if n_out:
            self.out_of_range[op] += n_out
            # nearest measured point scaled per unit (no silent flat clamp)
            y = np.where(hi, ys[-1] * x / max(xs[-1], 1.0), y)
            y = np.where(lo & (xs[0] > 0), ys[0] * x / max(xs[0], 1.0), y)
        return y

    def gate_s(self, tokens: int) -> float:
        y = self._interp("gate", np.array([tokens]))
        return self.fallback.gate_s(tokens) if y is None else float(y[0])

    def expert_s(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens)
        nz = t > 0
        out = np.zeros(t.shape, dtype=np.float64)
        if nz.any():
            y = self._interp("expert", t[nz])
            out[nz] = self.fallback.expert_s(t[nz]) if y is None else y
        return out

    def moe_s(self, tokens: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
        """The measured per-expert times summed per (layer, GPU): each measured expert ran alone."""
        return moe_by_sum(self.expert_s(tokens), group, groups)

    def attention_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    shards: int, kv_tokens: int | None = None) -> float:
        tokens = prefill_tokens + decode_tokens
        if tokens == 0:
            return 0.0
        if self._attn is not None:
            c0, c_tok, c_ctx, c_kv, _ = self._attn
            if tokens > self._attn_max[0] or context_tokens > self._attn_max[1]:
                self.out_of_range["attention"] += 1
            kv = context_tokens if kv_tokens is None else kv_tokens
            return (c0 + c_tok * tokens + c_ctx * context_tokens + c_kv * kv) / shards
        y = self._interp("attention", np.array([tokens]))
        if y is None:
            return self.fallback.attention_s(prefill_tokens, decode_tokens, context_tokens, shards,
                                             kv_tokens)
        return float(y[0]) / shards

    def layer_collectives_s(self, tokens: int) -> float:
        t = self.fallback.layer_collectives_s(tokens)
        if t:
            self.fallback_calls["all_reduce"] += 1
        return t

    def iteration_s(self, prefill_tokens: int, decode_tokens: int, context_tokens: int,
                    kv_tokens: int, sequences: int) -> float:
        if "iteration" in self._curves:
            t = 0.0 if self._attn is None else \
                self.fallback.model.num_layers * self._attn[4] * sequences
            return t + float(self._interp("iteration", np.array([prefill_tokens + decode_tokens]))[0])
        t = self.fallback.iteration_s(prefill_tokens, decode_tokens, context_tokens, kv_tokens,
                                      sequences)
        if t:
            self.fallback_calls["iteration"] += 1
        return t

    def copy_s(self, nbytes: float) -> float:
        y = self._interp("copy", np.array([nbytes]))
        return self.fallback.copy_s(nbytes) if y is None else float(y[0])

    def all_to_all_s(self, bytes_per_gpu: float, gpus: int, inter_node: bool) -> float:
        if gpus <= 1:
            return 0.0
        y = self._interp("all_to_all", np.array([bytes_per_gpu]))
        return self.fallback.all_to_all_s(bytes_per_gpu, gpus, inter_node) if y is None else float(y[0])

    def report(self) -> dict:
        return {"out_of_range": {k: v for k, v in self.out_of_range.items() if v},
                "fallback": {k: v for k, v in self.fallback_calls.items() if v}}


def nonneg_lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares ``X c ~ y`` with ``c >= 0``: features whose coefficient comes out negative
    are dropped (set to 0) and the rest refitted, until none is negative."""
    keep = np.ones(X.shape[1], dtype=bool)
    c = np.zeros(X.shape[1])
    while keep.any():
        sol = np.linalg.lstsq(X[:, keep], y, rcond=None)[0]
        if (sol >= 0).all():
            c[keep] = sol
            break
        idx = np.flatnonzero(keep)
        keep[idx[np.argmin(sol)]] = False
    return c
