"""Importers: real routing traces in other people's formats -> :class:`~traces.format.RoutingTrace`.

Every importer reads its sources in the order given, keeps request ids as the source gives them,
checks each file and raises :class:`~sim.errors.TraceFormatError` naming the file, the line and what
was expected on the first violation. Nothing is written here; the CLI validates and writes.

Formats (see ``../shared/data/README.md``):

``moe-beyond-csv``
    DeepSeek-V2-Lite-Chat prefill routing recorded by MoE-Beyond: one CSV per prompt,
    ``prompt_N_data.csv`` with columns ``Layer ID,Batch Number,Token,Activated Expert IDs``, one row
    per (layer, token), rows grouped by layer (all tokens of layer 1, then layer 2, ...), expert
    ids a quoted list of ``top_k`` ints. Request id = ``N``; layer ids 1..26; 64 experts; top-6.

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

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim.errors import TraceFormatError
from sim.files import read_nonempty
from traces.format import RoutingTrace, TraceMeta, make_tokens

PathLike = str | Path

# ------------------------------------------------------------------------------------------------
# moe-beyond-csv (DeepSeek-V2-Lite)
# ------------------------------------------------------------------------------------------------
MOE_BEYOND_COLUMNS = ("Layer ID", "Batch Number", "Token", "Activated Expert IDs")
_PROMPT_RE = re.compile(r"^prompt_(\d+)_data$")


def _prompt_id(path: Path) -> str:
    m = _PROMPT_RE.match(path.stem)
    return m.group(1) if m else path.stem


def _parse_int_lists(col, path: Path, top_k: int, first_line: int) -> np.ndarray:
    """Parse a pyarrow string array of ``"[a, b, ...]"`` into (N, top_k) int64 (vectorised)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise TraceFormatError(f"{path}: line {first_line + i}: expert list is empty, expected "
                               f"{top_k} expert ids like \"[1, 2, ...]\"")
    s = pc.utf8_trim_whitespace(col)
    ok = pc.and_(pc.starts_with(s, "["), pc.ends_with(s, "]")).to_numpy(zero_copy_only=False)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise TraceFormatError(f"{path}: line {first_line + i}: expert ids {s[i].as_py()!r}, expected "
                               f"a bracketed list of {top_k} ints like \"[1, 2, ...]\"")
    inner = pc.utf8_slice_codeunits(s, 1, -1)
    parts = pc.split_pattern(inner, ",")
    lens = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    if (lens != top_k).any():
        i = int(np.flatnonzero(lens != top_k)[0])
        got = 0 if not inner[i].as_py().strip() else int(lens[i])
        raise TraceFormatError(f"{path}: line {first_line + i}: {got} expert ids {s[i].as_py()!r}, "
                               f"expected top_k={top_k}")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    isint = pc.match_substring_regex(flat, r"^-?[0-9]{1,9}$").to_numpy(zero_copy_only=False)
    if not isint.all():
        j = int(np.flatnonzero(~isint)[0])
        raise TraceFormatError(f"{path}: line {first_line + j // top_k}: expert id {flat[j].as_py()!r} "
                               f"is not an integer")
    return pc.cast(flat, pa.int64()).to_numpy().reshape(n, top_k)


def _check_experts(ex: np.ndarray, path: Path, num_experts: int, line_of) -> None:
    """``ex`` (N, K): ids in range and distinct per row; ``line_of(i)`` names row i's line."""
    bad = (ex < 0) | (ex >= num_experts)
    if bad.any():
        i, k = (int(x) for x in np.argwhere(bad)[0])
        raise TraceFormatError(f"{path}: {line_of(i)}: expert id {int(ex[i, k])} out of range, expected "
                               f"0..{num_experts - 1}")
    if ex.shape[1] > 1:
        s = np.sort(ex, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise TraceFormatError(f"{path}: {line_of(i)}: expert chosen twice {ex[i].tolist()}, "
                                   f"expected {ex.shape[1]} distinct expert ids")


def _read_moe_beyond_file(path: Path, layer_ids: np.ndarray, num_experts: int, top_k: int):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    data = read_nonempty(path)
    header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    cols = [c.strip() for c in header.split(",")]
    if tuple(cols) != MOE_BEYOND_COLUMNS:
        raise TraceFormatError(f"{path}: line 1: columns {cols}, expected {list(MOE_BEYOND_COLUMNS)} "
                               f"(moe-beyond-csv)")
    types = {"Layer ID": pa.string(), "Batch Number": pa.string(), "Token": pa.string(),
             "Activated Expert IDs": pa.string()}
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(column_names=list(MOE_BEYOND_COLUMNS), skip_rows=1),
            parse_options=pcsv.ParseOptions(newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                                quoted_strings_can_be_null=False),
        )
    except Exception as exc:  # pyarrow.lib.ArrowInvalid and friends
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceFormatError(f"{path}: not a valid moe-beyond CSV ({msg})") from None
    n_rows = table.num_rows
    L = len(layer_ids)
    if n_rows == 0:
        raise TraceFormatError(f"{path}: no data rows after the header, expected {L} layers of tokens")
    lay_s = table.column("Layer ID").combine_chunks()
    import pyarrow.compute as pc

    isint = pc.match_substring_regex(pc.utf8_trim_whitespace(lay_s), r"^-?[0-9]{1,9}$")
    isint = isint.to_numpy(zero_copy_only=False)
    if not isint.all():
        i = int(np.flatnonzero(~isint)[0])
        raise TraceFormatError(f"{path}: line {i + 2}: Layer ID {lay_s[i].as_py()!r} is not an integer")
    layer = pc.cast(pc.utf8_trim_whitespace(lay_s), pa.int64()).to_numpy()
    unknown = ~np.isin(layer, layer_ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise TraceFormatError(f"{path}: line {i + 2}: Layer ID {int(layer[i])}, expected one of "
                               f"{int(layer_ids[0])}..{int(layer_ids[-1])}")
    if n_rows % L:
        counts = {int(k): int(v) for k, v in zip(*np.unique(layer, return_counts=True))}
        raise TraceFormatError(f"{path}: {n_rows} rows is not {L} layers x tokens (rows per layer "
                               f"{counts}); file truncated?")
    T = n_rows // L
    want = np.repeat(layer_ids, T)
    off = layer != want
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise TraceFormatError(f"{path}: line {i + 2}: Layer ID {int(layer[i])}, expected {int(want[i])} "
                               f"(rows grouped by layer, {T} tokens per layer); file truncated or "
                               f"reordered?")
    ex = _parse_int_lists(table.column("Activated Expert IDs").combine_chunks(), path, top_k, 2)
    _check_experts(ex, path, num_experts, lambda i: f"line {i + 2}")
    text = table.column("Token").combine_chunks().to_numpy(zero_copy_only=False).reshape(L, T)
    differ = text != text[0]
    if differ.any():
        li, t = (int(x) for x in np.argwhere(differ)[0])
        raise TraceFormatError(f"{path}: line {li * T + t + 2}: token {t} of layer {int(layer_ids[li])} is "
                               f"{text[li, t]!r}, layer {int(layer_ids[0])} has {text[0, t]!r}; expected "
                               f"the same tokens in every layer")
    experts = ex.reshape(L, T, top_k).transpose(1, 0, 2)  # (T, L, K)
    return experts, list(text[0])


def import_moe_beyond_csv(
    paths: Sequence[PathLike], *, num_experts: int = 64, top_k: int = 6,
    layer_ids: Sequence[int] = tuple(range(1, 27)), task: str = "unknown",
    model: str = "DeepSeek-V2-Lite-Chat",
) -> RoutingTrace:
    """Import MoE-Beyond ``prompt_N_data.csv`` files (one prefill request per file, in order)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise TraceFormatError("moe-beyond-csv: no input files given")
    lids = np.asarray(layer_ids, dtype=np.int64)
    blocks: list[np.ndarray] = []
    texts: list[str] = []
    rids: list[str] = []
    seen: dict[str, Path] = {}
    lengths: list[int] = []
    for p in paths:
        rid = _prompt_id(p)
        if rid in seen:
            raise TraceFormatError(f"{p}: request id {rid!r} already came from {seen[rid]}; expected "
                                   f"each prompt once")
        seen[rid] = p
        ex, tx = _read_moe_beyond_file(p, lids, num_experts, top_k)
        blocks.append(ex.astype(np.int16))
        texts.extend(tx)
        rids.append(rid)
        lengths.append(ex.shape[0])
    experts = np.concatenate(blocks, axis=0)  # (T, L, K)
    lens = np.asarray(lengths, dtype=np.int64)
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    tokens = make_tokens(
        request_id=np.repeat(np.asarray(rids, dtype=object), lens),
        position=np.arange(len(experts), dtype=np.int64) - starts,
        phase="prefill", task=task, text=texts,
    )
    folders = sorted({str(p.parent) for p in paths})
    meta = TraceMeta(
        model=model, num_layers=len(lids), num_experts=num_experts, top_k=top_k,
        source=f"moe-beyond-csv: {len(paths)} file(s) from {', '.join(folders)} "
               f"(MoE-Beyond, github.com/ngavhane/moe-beyond training_data_eamc)",
        layer_ids=[int(x) for x in lids],
        extra={"format": "moe-beyond-csv", "num_files": len(paths)},
    )
    return RoutingTrace(experts=experts, weights=None, tokens=tokens, meta=meta)


# ------------------------------------------------------------------------------------------------
# speculative-moe-jsonl (Mixtral-8x7B)
# ------------------------------------------------------------------------------------------------
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
    data = read_nonempty(path)
    out: list[tuple[int, dict]] = []
    for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{path}: line {i}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                   f"file truncated?") from None
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
        out.append((i, obj))
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
        _check_experts(ex, p, E, lambda i, lines=lines: f"line {int(lines[i])}")
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


#: --format name -> (importer, what the sources are)
ROUTING_FORMATS = {
    "moe-beyond-csv": "DeepSeek-V2-Lite prompt_N_data.csv files (MoE-Beyond)",
    "speculative-moe-jsonl": "Mixtral-8x7B *_routing.jsonl files (speculative-moe)",
}
