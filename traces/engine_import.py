"""Importers for what serving engines and public pretraining-trace datasets record -> RoutingTrace.

``vllm-routed-experts``
    vLLM started with ``--enable-return-routed-experts`` returns, per request, the expert ids its
    router chose: an int array of shape [tokens, layers, top_k] over the MoE layers, one row per
    token that went through a forward pass: the prompt's P tokens, then the generated tokens but
    the last (which is sampled, never forwarded), so rows = P + N - 1 for N generated tokens (vLLM's
    own routed-experts test asserts this). No gate weights, no token text. Two file forms:

    - ``*.jsonl``: one OpenAI-API response per line, as the server sends it (``/v1/completions`` or
      ``/v1/chat/completions``, ``response.model_dump()``): ``choices[i].routed_experts`` is the
      array saved with ``numpy.save`` and base64-encoded; ``usage.prompt_tokens`` gives P and
      ``usage.completion_tokens`` N. Request id = the response ``id`` (``id/i`` when a response has
      several choices, which then need ``token_ids`` for their own N). An optional top-level
      ``task`` string names the task.
    - ``*.npz`` (offline ``LLM.generate``): one request per file, saved as
      ``numpy.savez(f, routed_experts=out.outputs[0].routed_experts,
      prompt_token_ids=out.prompt_token_ids, token_ids=out.outputs[0].token_ids)``;
      request id = the file stem. A bare ``.npy`` lacks the prompt length and is refused.

    The number of experts is not in the data: ``num_experts`` must be given. Rows < P are prefill.

``layer-parquet``
    Per-layer Parquet routing dumps as published with pretraining traces (FLAME-MoE-Traces:
    ``actives/iter_NNNN/layer_NN.parquet``, one file per MoE layer, one row per token, ``indices``
    list<int>[top_k] expert ids and ``scores`` list<float>[top_k] router softmax probabilities
    sorted descending; ``samples/NNN.parquet`` hold ``token_id`` int32, row i aligned with row i of
    every layer file). Sources: layer files or folders of them; layer id = NN of the file name. The
    token stream is cut into requests of ``seq_len`` tokens (default: one request), all ``prefill``
    (a training forward pass); ``token_ids`` files, when given, must align row for row.

Each violation raises :class:`~sim.common.errors.TraceFormatError` naming the file, the row and what was
expected; nothing is written here.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.common.errors import TraceFormatError, short_error
from sim.common.files import read_nonempty
from traces.format import RoutingTrace, TraceMeta, check_expert_ids, make_tokens
from traces.request_import import read_jsonl

PathLike = str | Path


def _need_experts(num_experts: int | None, fmt: str) -> int:
    if num_experts is None or int(num_experts) < 1:
        raise TraceFormatError(f"{fmt}: give --num-experts (the model's routed experts); the files do "
                               f"not hold it")
    return int(num_experts)


def _check_block(ex: np.ndarray, where: str, E: int, layer_ids: list[int] | None = None) -> None:
    """ex (T, L, K): ids in 0..E-1 and distinct per (token, layer) (:func:`check_expert_ids`)."""
    lid = layer_ids or list(range(ex.shape[1]))
    check_expert_ids(ex, E, lambda i: f"{where}: token {i[0]} layer {lid[i[1]]}")


def _as_int_array(a: Any, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3 or 0 in a.shape:
        raise TraceFormatError(f"{where}: routed_experts has shape {a.shape}, expected [tokens, layers, "
                               f"top_k]")
    if not np.issubdtype(a.dtype, np.integer):
        raise TraceFormatError(f"{where}: routed_experts has dtype {a.dtype}, expected integers")
    return a.astype(np.int64)


def _decode_npy_b64(s: Any, where: str) -> np.ndarray:
    if not isinstance(s, str):
        raise TraceFormatError(f"{where}: routed_experts is {type(s).__name__}, expected a base64 string "
                               f"of a .npy array (start the server with --enable-return-routed-experts "
                               f"and send return_routed_experts)")
    try:
        raw = base64.b64decode(s, validate=True)
        if not raw.startswith(b"\x93NUMPY"):
            raise ValueError("no .npy header")
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise TraceFormatError(f"{where}: routed_experts is not base64 of a .npy array "
                               f"({short_error(exc)})") from None


def _int_field(obj: dict, key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TraceFormatError(f"{where}: {key} is {v!r}, expected a non-negative integer")
    return v


def _vllm_jsonl(path: Path, data: bytes) -> list[tuple[str, str | None, np.ndarray, int, int, str]]:
    out = []
    for n, obj in read_jsonl(path, data):
        where = f"{path}: line {n}"
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list) or not obj["choices"]:
            raise TraceFormatError(f"{where}: expected a completions response object with \"choices\"")
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            raise TraceFormatError(f"{where}: no \"usage\" object, expected prompt_tokens/completion_tokens")
        P = _int_field(usage, "prompt_tokens", where)
        rid = obj.get("id")
        if not isinstance(rid, str) or not rid:
            raise TraceFormatError(f"{where}: \"id\" is {rid!r}, expected the response id string")
        task = obj.get("task")
        if task is not None and not isinstance(task, str):
            raise TraceFormatError(f"{where}: \"task\" is {task!r}, expected a string")
        many = len(obj["choices"]) > 1
        for i, ch in enumerate(obj["choices"]):
            if not isinstance(ch, dict) or "routed_experts" not in ch:
                raise TraceFormatError(f"{where}: choice {i} has no routed_experts")
            if many:
                if not isinstance(ch.get("token_ids"), list):
                    raise TraceFormatError(f"{where}: choice {i}: several choices need token_ids for "
                                           f"their own completion length")
                N = len(ch["token_ids"])
            else:
                N = _int_field(usage, "completion_tokens", where)
            ex = _as_int_array(_decode_npy_b64(ch["routed_experts"], where), where)
            out.append((f"{rid}/{i}" if many else rid, task, ex, P, N, where))
    if not out:
        raise TraceFormatError(f"{path}: no responses")
    return out


def _vllm_npz(path: Path) -> tuple[str, None, np.ndarray, int, int, str]:
    where = str(path)
    if not zipfile.is_zipfile(path):
        raise TraceFormatError(f"{where}: not a .npz file (numpy.savez writes a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if "routed_experts" not in keys or "prompt_token_ids" not in keys:
                raise TraceFormatError(f"{where}: holds {sorted(keys)}, expected routed_experts and "
                                       f"prompt_token_ids (and token_ids)")
            ex = _as_int_array(z["routed_experts"], where)
            P = int(np.asarray(z["prompt_token_ids"]).size)
            N = int(np.asarray(z["token_ids"]).size) if "token_ids" in keys else ex.shape[0] - P + 1
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise TraceFormatError(f"{where}: not a readable .npz file ({short_error(exc)})") from None
    return path.stem, None, ex, P, N, where


def import_vllm_routed_experts(paths: Sequence[PathLike], num_experts: int | None, model: str = "vllm",
                               task: str = "default") -> RoutingTrace:
    E = _need_experts(num_experts, "vllm-routed-experts")
    reqs = []
    for p in map(Path, paths):
        data = read_nonempty(p)
        if p.suffix == ".jsonl":
            reqs += _vllm_jsonl(p, data)
        elif p.suffix == ".npz":
            reqs.append(_vllm_npz(p))
        else:
            raise TraceFormatError(f"{p}: expected *.jsonl (server responses) or *.npz (offline "
                                   f"routed_experts + prompt_token_ids); a bare .npy lacks the prompt length")
    L, K = reqs[0][2].shape[1:]
    seen: set[str] = set()
    ex_all, rid_all, pos_all, ph_all, task_all = [], [], [], [], []
    for rid, rtask, ex, P, N, where in reqs:
        if ex.shape[1:] != (L, K):
            raise TraceFormatError(f"{where}: request {rid!r}: routed_experts [.., {ex.shape[1]}, "
                                   f"{ex.shape[2]}], expected [.., {L}, {K}] like the first request")
        if ex.shape[0] != P + N - 1 or P == 0:
            raise TraceFormatError(f"{where}: request {rid!r}: {ex.shape[0]} rows, expected prompt_tokens + "
                                   f"completion_tokens - 1 = {P}+{N}-1 = {P + N - 1}")
        if rid in seen:
            raise TraceFormatError(f"{where}: request id {rid!r} appears twice")
        seen.add(rid)
        _check_block(ex, f"{where}: request {rid!r}", E)
        T = ex.shape[0]
        ex_all.append(ex)
        rid_all += [rid] * T
        pos_all.append(np.arange(T))
        ph_all += ["prefill"] * P + ["decode"] * (T - P)
        task_all += [rtask or task] * T
    meta = TraceMeta(model=model, num_layers=int(L), num_experts=E, top_k=int(K),
                     source="vllm-routed-experts: " + ", ".join(map(str, paths)),
                     extra={"format": "vllm-routed-experts", "weights": "not recorded by vLLM",
                            "layers": "vLLM's MoE layers in model order"})
    tokens = make_tokens(request_id=np.array(rid_all, dtype=object), position=np.concatenate(pos_all),
                         phase=np.array(ph_all, dtype=object), task=np.array(task_all, dtype=object))
    return RoutingTrace(experts=np.concatenate(ex_all).astype(np.int16), weights=None, tokens=tokens,
                        meta=meta)


# ------------------------------------------------------------------------------------------------
# layer-parquet (FLAME-MoE-Traces)
# ------------------------------------------------------------------------------------------------
_LAYER_FILE = re.compile(r"^layer_(\d+)\.parquet$")


def _read_parquet(path: Path, columns: list[str], max_rows: int | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    read_nonempty(path)
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise TraceFormatError(f"{path}: columns {names}, expected {columns}")
        if max_rows is None:
            return pf.read(columns=columns)
        batches, n = [], 0
        for b in pf.iter_batches(columns=columns, batch_size=65536):
            batches.append(b)
            n += b.num_rows
            if n >= max_rows:
                break
        if not batches:
            return pf.read(columns=columns)
        return pa.Table.from_batches(batches).slice(0, max_rows)
    except TraceFormatError:
        raise
    except Exception as exc:
        raise TraceFormatError(f"{path}: not a readable Parquet file ({short_error(exc)})") from None


def _list_matrix(table, col: str, path: Path, K: int | None) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    c = table.column(col).combine_chunks()
    t = c.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise TraceFormatError(f"{path}: column {col!r} has type {c.type}, expected a list per token")
    if c.null_count:
        i = int(np.flatnonzero(c.is_null().to_numpy(zero_copy_only=False))[0])
        raise TraceFormatError(f"{path}: row {i}: {col} is missing")
    lens = pc.list_value_length(c).to_numpy(zero_copy_only=False)
    k = K if K is not None else (int(lens[0]) if len(lens) else 0)
    if len(lens) == 0 or (lens != k).any() or k == 0:
        i = int(np.flatnonzero(lens != k)[0]) if len(lens) and (lens != k).any() else 0
        raise TraceFormatError(f"{path}: row {i}: {col} has {int(lens[i]) if len(lens) else 0} values, "
                               f"expected top_k={k} per token")
    flat = pc.list_flatten(c)
    if flat.null_count:
        raise TraceFormatError(f"{path}: column {col!r} has missing values")
    return flat.to_numpy(zero_copy_only=False).reshape(len(lens), k)


def _layer_files(paths: Sequence[PathLike]) -> list[tuple[int, Path]]:
    files: list[tuple[int, Path]] = []
    for p in map(Path, paths):
        cands = sorted(p.glob("layer_*.parquet")) if p.is_dir() else [p]
        if p.is_dir() and not cands:
            raise TraceFormatError(f"{p}: no layer_NN.parquet files in this folder")
        for f in cands:
            m = _LAYER_FILE.match(f.name)
            if m is None:
                raise TraceFormatError(f"{f}: expected a file named layer_NN.parquet (NN = the layer id)")
            files.append((int(m.group(1)), f))
    files.sort()
    ids = [i for i, _ in files]
    if len(set(ids)) != len(ids):
        raise TraceFormatError(f"layer-parquet: layer {next(i for i in ids if ids.count(i) > 1)} given twice")
    return files


def import_layer_parquet(paths: Sequence[PathLike], num_experts: int | None,
                         token_ids: Sequence[PathLike] = (), seq_len: int | None = None,
                         max_tokens: int | None = None, model: str = "layer-parquet",
                         task: str = "pretrain") -> RoutingTrace:
    E = _need_experts(num_experts, "layer-parquet")
    if (seq_len is not None and seq_len < 1) or (max_tokens is not None and max_tokens < 1):
        raise TraceFormatError("layer-parquet: --seq-len and --max-tokens must be >= 1")
    files = _layer_files(paths)
    ex_layers, w_layers, T, K = [], [], None, None
    for lid, f in files:
        t = _read_parquet(f, ["indices", "scores"], max_tokens)
        if T is not None and t.num_rows != T:
            raise TraceFormatError(f"{f}: {t.num_rows} rows, expected {T} like {files[0][1].name} (one row "
                                   f"per token in every layer file)")
        T = t.num_rows
        ex = _list_matrix(t, "indices", f, K)
        K = ex.shape[1]
        sc = _list_matrix(t, "scores", f, K).astype(np.float32)
        if not np.issubdtype(ex.dtype, np.integer):
            raise TraceFormatError(f"{f}: indices have type {ex.dtype}, expected integers")
        _check_block(ex[:, None, :], str(f), E, [lid])
        bad = ~np.isfinite(sc) | (sc < 0) | (sc > 1)
        if bad.any():
            i, k = (int(x) for x in np.argwhere(bad)[0])
            raise TraceFormatError(f"{f}: row {i}: score {sc[i, k]}, expected a probability in [0, 1]")
        up = (np.diff(sc, axis=1) > 1e-3).any(axis=1)
        if up.any():
            i = int(np.flatnonzero(up)[0])
            raise TraceFormatError(f"{f}: row {i}: scores {sc[i].tolist()} are not sorted descending")
        ex_layers.append(ex)
        w_layers.append(sc)
    n_ids = 0
    for f in _token_files(token_ids):
        n_ids += _read_parquet(f, ["token_id"], None).num_rows
    if token_ids and n_ids < T:
        raise TraceFormatError(f"{', '.join(map(str, token_ids))}: {n_ids} token ids for {T} routed tokens; "
                               f"expected row i of the token files to align with row i of each layer file")
    seq = seq_len or T
    req = np.arange(T) // seq
    meta = TraceMeta(model=model, num_layers=len(files), num_experts=E, top_k=int(K),
                     source="layer-parquet: " + ", ".join(str(f) for _, f in files),
                     layer_ids=[i for i, _ in files],
                     extra={"format": "layer-parquet", "seq_len": seq_len, "max_tokens": max_tokens,
                            "token_id_rows": n_ids or None, "weights": "router softmax scores (top-k)"})
    tokens = make_tokens(request_id=pd.Series(req).map(lambda r: f"seq{r}").to_numpy(dtype=object),
                         position=np.arange(T) % seq, phase="prefill", task=task)
    return RoutingTrace(experts=np.stack(ex_layers, axis=1).astype(np.int16),
                        weights=np.stack(w_layers, axis=1), tokens=tokens, meta=meta)


def _token_files(paths: Sequence[PathLike]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        got = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        if not got:
            raise TraceFormatError(f"{p}: no token-id Parquet files in this folder")
        out += got
    return out


#: --format name -> what the sources are
ENGINE_FORMATS = {
    "vllm-routed-experts": "vLLM --enable-return-routed-experts output: *.jsonl server responses or "
                           "*.npz offline dumps (needs --num-experts)",
    "layer-parquet": "per-layer layer_NN.parquet routing dumps (FLAME-MoE-Traces), optional --token-ids "
                     "(needs --num-experts)",
}
