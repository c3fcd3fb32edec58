"""MoE-Beyond's routing CSVs -> :class:`~traces.format.RoutingTrace`: the ``moe-beyond-csv`` format
of the trace importer (sim/app/trace_cmd.py).

``moe-beyond-csv``
    DeepSeek-V2-Lite-Chat prefill routing recorded by MoE-Beyond: one CSV per prompt,
    ``prompt_N_data.csv`` with columns ``Layer ID,Batch Number,Token,Activated Expert IDs``, one row
    per (layer, token), rows grouped by layer (all tokens of layer 1, then layer 2, ...), expert
    ids a quoted list of ``top_k`` ints. Request id = ``N``; layer ids 1..26; 64 experts; top-6.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sim.common.errors import TraceFormatError
from sim.common.files import read_nonempty
from traces.format import RoutingTrace, TraceMeta, check_expert_ids, make_tokens

PathLike = str | Path


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
            # one thread: a parse error must not leave pyarrow's pool parsing later blocks of
            # the file while the error unwinds and the interpreter exits (an abort at exit,
            # "terminate called without an active exception", exit status 134)
            read_options=pcsv.ReadOptions(column_names=list(MOE_BEYOND_COLUMNS), skip_rows=1,
                                          use_threads=False),
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
    check_expert_ids(ex, num_experts, lambda i: f"{path}: line {i[0] + 2}")
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


