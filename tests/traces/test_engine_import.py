# ruff: noqa: E501  (a table of cases reads better one per line)
"""vLLM routed-experts and per-layer Parquet importers, on small files written to the documented
formats; malformed input fails in one line, exit 2, no output file."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import run

from traces.format import read_trace

L, K, E = 3, 2, 8


def routed(T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(T)]).astype(np.int32)


def b64npy(a) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a))
    return base64.b64encode(buf.getvalue()).decode()


def response(rid="cmpl-1", P=4, N=3, arr=None, **over) -> dict:
    arr = routed(P + N - 1) if arr is None else arr
    r = {"id": rid, "object": "text_completion", "model": "tiny-mixtral",
         "choices": [{"index": 0, "text": "abc", "finish_reason": "length", "routed_experts": b64npy(arr)}],
         "usage": {"prompt_tokens": P, "completion_tokens": N, "total_tokens": P + N}}
    r.update(over)
    return r


def jsonl(path: Path, objs) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


# ---- vLLM -----------------------------------------------------------------------------------------
def test_vllm_jsonl_and_npz(tmp_path, capsys):
    a0, a1 = routed(6, 1), routed(9, 2)
    src = jsonl(tmp_path / "responses.jsonl", [response("cmpl-a", 4, 3, a0, task="chat"), response("cmpl-b", 5, 5, a1)])
    a2 = routed(4, 3)
    np.savez(tmp_path / "req-9.npz", routed_experts=a2, prompt_token_ids=np.arange(3), token_ids=np.arange(2))
    out = tmp_path / "o.parquet"
    rc, _, err = run(["trace", "import", "--format", "vllm-routed-experts", str(src), str(tmp_path / "req-9.npz"),
                      "--num-experts", str(E), "-o", str(out)], capsys)
    assert rc == 0, err
    tr = read_trace(out)
    assert tr.request_ids() == ["cmpl-a", "cmpl-b", "req-9"]
    assert tr.request_tasks() == ["chat", "default", "default"]
    np.testing.assert_array_equal(tr.experts, np.concatenate([a0, a1, a2]))
    assert tr.weights is None
    ph = tr.tokens["phase"].tolist()
    assert ph[:6] == ["prefill"] * 4 + ["decode"] * 2 and ph[15:] == ["prefill"] * 3 + ["decode"]
    assert (tr.num_layers, tr.top_k, tr.num_experts) == (L, K, E)


def test_vllm_several_choices_use_their_token_ids(tmp_path, capsys):
    r = response("cmpl-n", 4, 5)
    r["choices"] = [{"index": i, "token_ids": [1] * n, "routed_experts": b64npy(routed(4 + n - 1, i))}
                    for i, n in enumerate((2, 3))]
    out = tmp_path / "o.parquet"
    rc, _, err = run(["trace", "import", "--format", "vllm-routed-experts", str(jsonl(tmp_path / "r.jsonl", [r])),
                      "--num-experts", str(E), "-o", str(out)], capsys)
    assert rc == 0, err
    assert read_trace(out).request_ids() == ["cmpl-n/0", "cmpl-n/1"]


def _vllm_case(build):
    def make(tmp_path: Path) -> list[str]:
        name, content = build()
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif name.endswith(".npz"):
            np.savez(p, **content)
        else:
            jsonl(p, content)
        return [str(p), "--num-experts", str(E)]
    return make


def _choice(**kw):
    r = response()
    r["choices"][0].update(kw)
    return r


VLLM_BAD = [
    ("not json", lambda: ("r.jsonl", ["{not json"])),
    ("no choices", lambda: ("r.jsonl", [{"id": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}])),
    ("no usage", lambda: ("r.jsonl", [{k: v for k, v in response().items() if k != "usage"}])),
    ("routed_experts missing", lambda: ("r.jsonl", [_choice(routed_experts=None) | {"choices": [{"index": 0}]}])),
    ("routed_experts a list, not base64", lambda: ("r.jsonl", [_choice(routed_experts=[[1, 2]])])),
    ("bad base64", lambda: ("r.jsonl", [_choice(routed_experts="%%%notbase64")])),
    ("base64 of garbage", lambda: ("r.jsonl", [_choice(routed_experts=base64.b64encode(b"hello").decode())])),
    ("2-D array", lambda: ("r.jsonl", [_choice(routed_experts=b64npy(np.zeros((6, 2), np.int32)))])),
    ("float array", lambda: ("r.jsonl", [_choice(routed_experts=b64npy(np.zeros((6, L, K), np.float32)))])),
    ("row count != P+N-1", lambda: ("r.jsonl", [response(P=4, N=3, arr=routed(7))])),
    ("expert id out of range", lambda: ("r.jsonl", [response(arr=np.where(routed(6) == 0, E, routed(6)))])),
    ("duplicate expert", lambda: ("r.jsonl", [response(arr=np.zeros((6, L, K), np.int32))])),
    ("layers differ between requests", lambda: ("r.jsonl", [response("a"), response("b", arr=routed(6)[:, :2])])),
    ("request id twice", lambda: ("r.jsonl", [response("a"), response("a")])),
    ("negative prompt_tokens", lambda: ("r.jsonl", [response() | {"usage": {"prompt_tokens": -1, "completion_tokens": 3}}])),
    ("npz without prompt_token_ids", lambda: ("r.npz", {"routed_experts": routed(4)})),
    ("npz that is not a zip", lambda: ("r.npz", b"PK not really")),
    ("bare npy", lambda: ("r.npy", b"\x93NUMPY")),
    ("empty file", lambda: ("r.jsonl", b"")),
]


@pytest.mark.parametrize("name,build", VLLM_BAD, ids=[c[0] for c in VLLM_BAD])
def test_vllm_malformed_input_fails_cleanly(name, build, tmp_path, capsys):
    args = _vllm_case(build)(tmp_path)
    out = tmp_path / "out.parquet"
    rc, _, err = run(["trace", "import", "--format", "vllm-routed-experts", *args, "-o", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("moesim: error: "), (name, err)
    assert not out.exists() and list(tmp_path.glob(".out.parquet.*")) == []


def test_vllm_needs_num_experts(tmp_path, capsys):
    src = jsonl(tmp_path / "r.jsonl", [response()])
    rc, _, err = run(["trace", "import", "--format", "vllm-routed-experts", str(src), "-o", str(tmp_path / "o.parquet")], capsys)
    assert rc == 2 and "--num-experts" in err


# ---- layer-parquet (FLAME-MoE-Traces layout) -------------------------------------------------------
def write_layer(path: Path, indices, scores) -> Path:
    """FLAME-MoE's layer file: scores list<float16>, indices list<int16>."""
    t = pa.table({"scores": pa.array([list(map(float, s)) for s in scores], type=pa.list_(pa.float16())),
                  "indices": pa.array([list(map(int, i)) for i in indices], type=pa.list_(pa.int16()))})
    pq.write_table(t, path)
    return path


def flame(tmp_path: Path, T: int = 10, layers=(2, 3, 4)) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(0)
    act = tmp_path / "actives" / "iter_0540"
    act.mkdir(parents=True)
    data = {}
    for lid in layers:
        p = rng.dirichlet(np.ones(E), size=T)
        idx = np.argsort(-p, axis=1)[:, :K]
        sc = np.take_along_axis(p, idx, axis=1)
        write_layer(act / f"layer_{lid:02d}.parquet", idx, sc)
        data[lid] = (idx, sc)
    samples = tmp_path / "samples"
    samples.mkdir()
    pq.write_table(pa.table({"token_id": pa.array(np.arange(T // 2), type=pa.int32())}), samples / "000.parquet")
    pq.write_table(pa.table({"token_id": pa.array(np.arange(T - T // 2), type=pa.int32())}), samples / "001.parquet")
    return act, samples, data


def test_layer_parquet_imports(tmp_path, capsys):
    act, samples, data = flame(tmp_path)
    out = tmp_path / "o.parquet"
    rc, _, err = run(["trace", "import", "--format", "layer-parquet", str(act), "--token-ids", str(samples),
                      "--num-experts", str(E), "--seq-len", "4", "-o", str(out)], capsys)
    assert rc == 0, err
    tr = read_trace(out)
    assert tr.meta.layer_ids == [2, 3, 4] and tr.num_tokens == 10 and tr.top_k == K
    assert tr.request_ids() == ["seq0", "seq1", "seq2"] and tr.tokens["position"].tolist()[:5] == [0, 1, 2, 3, 0]
    for l, lid in enumerate((2, 3, 4)):
        np.testing.assert_array_equal(tr.experts[:, l], data[lid][0])
        np.testing.assert_allclose(tr.weights[:, l], data[lid][1], atol=1e-3)  # float16 on disk
    out2 = tmp_path / "o2.parquet"
    rc, _, err = run(["trace", "import", "--format", "layer-parquet", str(act / "layer_03.parquet"),
                      "--num-experts", str(E), "--max-tokens", "3", "-o", str(out2)], capsys)
    assert rc == 0, err
    assert read_trace(out2).num_tokens == 3


def _lp_case(kind):
    def make(tmp_path: Path) -> list[str]:
        act, samples, data = flame(tmp_path)
        idx, sc = data[3]
        f = act / "layer_03.parquet"
        extra: list[str] = []
        if kind == "missing indices column":
            pq.write_table(pa.table({"scores": pa.array(sc.tolist())}), f)
        elif kind == "ragged top-k":
            write_layer(f, [list(i) for i in idx[:-1]] + [[1]], [list(s) for s in sc[:-1]] + [[0.5]])
        elif kind == "expert id out of range":
            idx[4, 1] = E
            write_layer(f, idx, sc)
        elif kind == "duplicate expert":
            idx[2] = [5, 5]
            write_layer(f, idx, sc)
        elif kind == "NaN score":
            sc[1, 0] = np.nan
            write_layer(f, idx, sc)
        elif kind == "scores not descending":
            write_layer(f, idx, sc[:, ::-1] + np.array([0.0, 0.1]))
        elif kind == "layers of different lengths":
            write_layer(f, idx[:7], sc[:7])
        elif kind == "too few token ids":
            (samples / "001.parquet").unlink()
            extra = ["--token-ids", str(samples)]
        elif kind == "not a parquet file":
            f.write_text("garbage")
        elif kind == "badly named layer file":
            f.rename(act / "l3.parquet")
            return [str(act / "l3.parquet"), "--num-experts", str(E)]
        elif kind == "empty folder":
            empty = tmp_path / "empty"
            empty.mkdir()
            return [str(empty), "--num-experts", str(E)]
        elif kind == "no --num-experts":
            return [str(act)]
        return [str(act), "--num-experts", str(E), *extra]
    return make


LP_BAD = ["missing indices column", "ragged top-k", "expert id out of range", "duplicate expert", "NaN score",
          "scores not descending", "layers of different lengths", "too few token ids", "not a parquet file",
          "badly named layer file", "empty folder", "no --num-experts"]


@pytest.mark.parametrize("kind", LP_BAD)
def test_layer_parquet_malformed_input_fails_cleanly(kind, tmp_path, capsys):
    args = _lp_case(kind)(tmp_path)
    out = tmp_path / "out.parquet"
    rc, _, err = run(["trace", "import", "--format", "layer-parquet", *args, "-o", str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("moesim: error: "), (kind, err)
    assert not out.exists()
