"""speculative-moe's routing JSONL -> :class:`~traces.format.RoutingTrace`: the
``speculative-moe-jsonl`` format of the trace importer (sim/app/trace_cmd.py).

``speculative-moe-jsonl``
    Mixtral-8x7B decode routing recorded by speculative-moe: one JSON object per (problem, layer,
    token) with ``dataset``, ``problem_id``, ``layer`` (0..31), ``experts`` [2], ``gating_probs``
    [2] and the token position as ``token_idx`` or ``token_pos``. Request id = ``dataset/problem_id``
    (problem ids restart at 0 in every dataset); with ``id_scope="file"`` it is
    ``file-stem/problem_id`` instead (needed when one problem was recorded in two files, as
    ``humaneval_1`` and ``humaneval_2`` both hold HumanEval problem 0). A request id seen twice is an
    error, never a silent merge. A token lacking some of its layer records is "missing": with
    ``missing="drop"`` the token is dropped and counted, with ``missing="fail"`` the import fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim.common.errors import TraceFormatError
from traces.format import RoutingTrace, TraceMeta, check_expert_ids, make_tokens
from traces.request_import import read_jsonl

PathLike = str | Path


@dataclass
class MissingReport:
    """What an import found missing, per file."""

    #: file -> request id -> number of missing (layer, token) records among tokens that exist
    records: dict[str, dict[str, int]] = field(default_factory=dict)
    #: file -> request id -> number of tokens dropped for lacking some layer
    dropped_tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    #: file -> request id -> token positions absent from every layer (gaps in the position range)
    absent_positions: dict[str, dict[str, int]] = field(default_factory=dict)

    def total_records(self) -> int:
        return sum(sum(v.values()) for v in self.records.values())

    def lines(self) -> list[str]:
        out = []
        for f in self.records:
            rec = sum(self.records[f].values())
            drop = sum(self.dropped_tokens.get(f, {}).values())
            gap = sum(self.absent_positions.get(f, {}).values())
            per = ", ".join(f"{r}: {n}" for r, n in self.records[f].items() if n)
            out.append(f"{f}: {rec} missing (layer, token) records, {drop} tokens dropped, {gap} "
                       f"positions absent in every layer" + (f" [per request {per}]" if per else ""))
        return out

    def as_dict(self) -> dict:
        return {"records": self.records, "dropped_tokens": self.dropped_tokens,
                "absent_positions": self.absent_positions}


_SPEC_KEYS = ("dataset", "problem_id", "layer", "experts", "gating_probs")


def _read_jsonl_records(path: Path) -> list[tuple[int, dict]]:
    """(line, record) of each non-blank line: JSON objects (read by the one JSONL reader)."""
    out = read_jsonl(path, hint="; file truncated?")
    for i, obj in out:
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
    if not out:
        raise TraceFormatError(f"{path}: file is empty")
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def import_speculative_moe_jsonl(
    paths: Sequence[PathLike], *, missing: str = "drop", id_scope: str = "dataset",
    num_layers: int = 32, num_experts: int = 8, top_k: int = 2,
    model: str = "Mixtral-8x7B-Instruct-v0.1", report: MissingReport | None = None,
) -> RoutingTrace:
    """Import speculative-moe ``*_routing.jsonl`` files (decode tokens with gate probabilities).

    ``missing``: "drop" drops every token lacking some layer record (counted in ``report``), "fail"
    raises. ``id_scope``: "dataset" -> request id ``dataset/problem_id``; "file" ->
    ``file-stem/problem_id``. Fill ``report`` (if given) with the per-file missing counts.
    """
    if missing not in ("drop", "fail"):
        raise TraceFormatError(f"--missing {missing!r}, expected 'drop' or 'fail'")
    if id_scope not in ("dataset", "file"):
        raise TraceFormatError(f"--id-scope {id_scope!r}, expected 'dataset' or 'file'")
    paths = [Path(p) for p in paths]
    if not paths:
        raise TraceFormatError("speculative-moe-jsonl: no input files given")
    report = report if report is not None else MissingReport()
    L, E, K = num_layers, num_experts, top_k
    exp_blocks, w_blocks, rid_all, pos_all, task_all = [], [], [], [], []
    seen: dict[str, Path] = {}
    for p in paths:
        recs = _read_jsonl_records(p)
        # ---- per-record checks and columns ----------------------------------------------------
        n = len(recs)
        layer = np.empty(n, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        ex = np.empty((n, K), dtype=np.int64)
        w = np.empty((n, K), dtype=np.float64)
        keys: list[tuple[str, str]] = []
        for j, (line, o) in enumerate(recs):
            miss = [k for k in _SPEC_KEYS if k not in o]
            pk = "token_idx" if "token_idx" in o else "token_pos" if "token_pos" in o else None
            if miss or pk is None:
                miss += [] if pk else ["token_idx (or token_pos)"]
                raise TraceFormatError(f"{p}: line {line}: record lacks {miss}, expected keys "
                                       f"{list(_SPEC_KEYS)} + token_idx/token_pos (speculative-moe-jsonl)")
            if not (_is_int(o["layer"]) and _is_int(o[pk])):
                raise TraceFormatError(f"{p}: line {line}: layer {o['layer']!r} and {pk} {o[pk]!r} must "
                                       f"be integers")
            e_, g_ = o["experts"], o["gating_probs"]
            if not isinstance(e_, list) or not isinstance(g_, list) or len(e_) != K or len(g_) != K:
                raise TraceFormatError(f"{p}: line {line}: experts {e_!r} / gating_probs {g_!r}, expected "
                                       f"lists of top_k={K}")
            if not all(_is_int(v) for v in e_):
                raise TraceFormatError(f"{p}: line {line}: experts {e_!r} must be integers")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in g_) \
                    or not all(math.isfinite(v) for v in g_):
                raise TraceFormatError(f"{p}: line {line}: gating_probs {g_!r} must be finite numbers")
            layer[j], pos[j] = o["layer"], o[pk]
            ex[j], w[j] = e_, g_
            ds = str(o["dataset"])
            keys.append((ds, str(o["problem_id"])))
        lines = np.asarray([r[0] for r in recs], dtype=np.int64)
        check_expert_ids(ex, E, lambda i, lines=lines, p=p: f"{p}: line {int(lines[i[0]])}")
        bad = (layer < 0) | (layer >= L)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TraceFormatError(f"{p}: line {lines[i]}: layer {int(layer[i])} out of range, expected "
                                   f"0..{L - 1}")
        if (pos < 0).any():
            i = int(np.flatnonzero(pos < 0)[0])
            raise TraceFormatError(f"{p}: line {lines[i]}: token position {int(pos[i])} is negative")
        # ---- group into requests (first-appearance order within the file) ----------------------
        key_codes, uniq = pd.factorize(pd.Series([f"{d}\x00{q}" for d, q in keys]), sort=False)
        fname = str(p)
        report.records.setdefault(fname, {})
        report.dropped_tokens.setdefault(fname, {})
        report.absent_positions.setdefault(fname, {})
        for r, key in enumerate(uniq):
            ds, prob = key.split("\x00", 1)
            rid = f"{ds}/{prob}" if id_scope == "dataset" else f"{p.stem}/{prob}"
            if rid in seen:
                hint = " (use --id-scope file to tell recordings apart)" if id_scope == "dataset" else ""
                raise TraceFormatError(f"{p}: request id {rid!r} already came from {seen[rid]}; expected "
                                       f"unique request ids{hint}")
            seen[rid] = p
            sel = np.flatnonzero(key_codes == r)
            rpos, rlay = pos[sel], layer[sel]
            upos, tok = np.unique(rpos, return_inverse=True)
            T = len(upos)
            cell = tok * L + rlay
            order = np.argsort(cell, kind="stable")
            dupc = np.flatnonzero(np.diff(cell[order]) == 0)
            if len(dupc):
                i = sel[order[dupc[0] + 1]]
                raise TraceFormatError(
                    f"{p}: line {lines[i]}: second record for request {rid!r} layer {int(layer[i])} "
                    f"token {int(pos[i])}, expected one per (layer, token)")
            have = np.zeros((T, L), dtype=bool)
            have[tok, rlay] = True
            rex = np.full((T, L, K), -1, dtype=np.int16)
            rw = np.zeros((T, L, K), dtype=np.float32)
            rex[tok, rlay] = ex[sel]
            rw[tok, rlay] = w[sel]
            n_missing = int((~have).sum())
            report.records[fname][rid] = n_missing
            report.absent_positions[fname][rid] = int(upos[-1] + 1 - T) if T else 0
            full = have.all(axis=1)
            if n_missing and missing == "fail":
                t, li = (int(x) for x in np.argwhere(~have)[0])
                raise TraceFormatError(
                    f"{p}: request {rid!r}: {n_missing} missing (layer, token) records in "
                    f"{int((~full).sum())} tokens, first at token {int(upos[t])} layer {li} "
                    f"(--missing fail; use --missing drop to drop such tokens)")
            report.dropped_tokens[fname][rid] = int((~full).sum())
            if not full.any():
                raise TraceFormatError(f"{p}: request {rid!r}: every token lacks some layer record, "
                                       f"nothing left to import")
            exp_blocks.append(rex[full])
            w_blocks.append(rw[full])
            rid_all.append(np.full(int(full.sum()), rid, dtype=object))
            pos_all.append(upos[full])
            task_all.append(np.full(int(full.sum()), ds, dtype=object))
    meta = TraceMeta(
        model=model, num_layers=L, num_experts=E, top_k=K,
        source=f"speculative-moe-jsonl: {', '.join(str(p) for p in paths)} (speculative-moe, "
               f"github.com/Mario928/speculative-moe @216e26e)",
        layer_ids=list(range(L)),
        extra={"format": "speculative-moe-jsonl", "missing_policy": missing, "id_scope": id_scope,
               "missing": report.as_dict()},
    )
    tokens = make_tokens(request_id=np.concatenate(rid_all), position=np.concatenate(pos_all),
                         phase="decode", task=np.concatenate(task_all))
    return RoutingTrace(experts=np.concatenate(exp_blocks), weights=np.concatenate(w_blocks),
                        tokens=tokens, meta=meta)


