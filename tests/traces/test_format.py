"""Round trip of the routing-trace Parquet format is lossless (hypothesis property test)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces.format import RoutingTrace, TraceMeta, make_tokens, read_trace, write_trace


@st.composite
def traces(draw):
    L = draw(st.integers(1, 4))
    E = draw(st.integers(2, 12))
    K = draw(st.integers(1, min(E, 4)))
    lens = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    T = sum(lens)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    experts = np.argsort(rng.random((T, L, E)), axis=2)[:, :, :K].astype(np.int16)  # distinct per row
    weights = None
    if draw(st.booleans()):
        weights = rng.standard_normal((T, L, K)).astype(np.float32)
    text_alphabet = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
    texts = draw(st.one_of(st.none(), st.lists(st.one_of(st.none(), text_alphabet), min_size=T, max_size=T)))
    rids = draw(st.lists(st.text(min_size=1, max_size=5), min_size=len(lens), max_size=len(lens),
                         unique=True))
    tasks = draw(st.lists(st.sampled_from(["code", "math", "unknown", "ü-task"]), min_size=len(lens),
                          max_size=len(lens)))
    starts = [draw(st.integers(0, 1000)) for _ in lens]
    pos = np.concatenate([s + np.cumsum(rng.integers(1, 3, size=n)) for s, n in zip(starts, lens)])
    tokens = make_tokens(
        request_id=np.repeat(np.asarray(rids, dtype=object), lens), position=pos,
        phase=draw(st.sampled_from(["prefill", "decode"])),
        task=np.repeat(np.asarray(tasks, dtype=object), lens), text=texts)
    meta = TraceMeta(model=draw(st.text(max_size=8)), num_layers=L, num_experts=E, top_k=K,
                     source=draw(st.text(max_size=10)),
                     layer_ids=draw(st.lists(st.integers(0, 99), min_size=L, max_size=L)),
                     extra={"k": draw(st.integers(-5, 5))})
    return RoutingTrace(experts=experts, weights=weights, tokens=tokens, meta=meta)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tr=traces())
def test_parquet_round_trip_is_lossless(tr, tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(tr, path)
    back = read_trace(path)
    assert back.meta == tr.meta
    assert back.experts.dtype == np.int16
    np.testing.assert_array_equal(back.experts, tr.experts)
    if tr.weights is None:
        assert back.weights is None
    else:
        np.testing.assert_array_equal(back.weights, tr.weights)  # bit-exact float32
    for col in ("request_id", "position", "phase", "task", "text"):
        a, b = tr.tokens[col].tolist(), back.tokens[col].tolist()
        assert a == b, col
    pd.testing.assert_series_equal(back.tokens["position"], tr.tokens["position"])


# ------------------------------------------------------------------------------------------------
# the on-disk schema, read errors, request selection
# ------------------------------------------------------------------------------------------------
def _small(text=None, weights=True) -> RoutingTrace:
    ex = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 0]], [[3, 2], [0, 1]]], dtype=np.int16)  # (3, 2, 2)
    w = np.linspace(0, 1, ex.size, dtype=np.float32).reshape(ex.shape) if weights else None
    tok = make_tokens(["a", "a", "b"], [0, 1, 0], ["prefill", "decode", "prefill"], ["t1", "t1", "t2"],
                      text=text)
    return RoutingTrace(ex, w, tok, TraceMeta("toy", 2, 4, 2))


def test_written_schema_is_the_documented_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from traces.format import read_meta

    path = tmp_path / "t.parquet"
    write_trace(_small(), path)  # text all None
    schema = pq.read_schema(path)
    types = {f.name: f.type for f in schema}
    assert types["request_id"] == pa.string() and types["text"] == pa.string()
    assert types["position"] == pa.int32()
    assert types["phase"] == pa.dictionary(pa.int32(), pa.string())
    assert types["task"] == pa.dictionary(pa.int32(), pa.string())
    assert types["experts"] == pa.list_(pa.int16(), 4)
    assert types["weights"] == pa.list_(pa.float32(), 4)
    meta = read_meta(path)
    assert meta["schema_version"] == 1 and meta["kind"] == "routing" and meta["top_k"] == 2
    # a NaN text (pandas' missing value) is written as missing
    tr = _small(text=["x", float("nan"), None], weights=False)
    write_trace(tr, tmp_path / "n.parquet")
    back = read_trace(tmp_path / "n.parquet")
    assert back.tokens["text"].tolist() == ["x", None, None] and back.weights is None
    assert "weights" not in pq.read_schema(tmp_path / "n.parquet").names


def test_write_validates_first_and_names_the_file(tmp_path):
    import pytest

    from sim.common.errors import TraceFormatError

    tr = _small()
    tr.experts[1, 0, 0] = 9
    path = tmp_path / "bad.parquet"
    with pytest.raises(TraceFormatError, match=f"^{path}: token 1 layer 0: expert id 9 out of range"):
        write_trace(tr, path)
    assert not path.exists()


def test_read_errors_name_the_file(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from sim.common.errors import TraceFormatError
    from traces.format import read_meta

    missing = tmp_path / "none.parquet"
    with pytest.raises(TraceFormatError, match=f"^{missing}: no such file$"):
        read_meta(missing)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(TraceFormatError, match=rf"^{junk}: not a readable Parquet file \(.+\)$"):
        read_meta(junk)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(TraceFormatError, match=f"^{plain}: Parquet file has no moesim metadata; expected "
                                               f"a file written by moesim \\(import it with 'moesim trace "
                                               f"import'\\)$"):
        read_meta(plain)
    bad_json = tmp_path / "json.parquet"
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata({b"moesim": b"{oops"}), bad_json)
    with pytest.raises(TraceFormatError, match=f"^{bad_json}: moesim metadata is not valid JSON$"):
        read_meta(bad_json)
    v2 = tmp_path / "v2.parquet"
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(
        {b"moesim": json.dumps({"schema_version": 2}).encode()}), v2)
    with pytest.raises(TraceFormatError, match=f"^{v2}: schema_version 2, this moesim reads version 1$"):
        read_meta(v2)


def test_select_take_and_request_tables():
    import pytest

    from sim.common.errors import TraceFormatError

    tr = _small()
    assert tr.request_ids() == ["a", "b"] and tr.request_tasks() == ["t1", "t2"]
    assert tr.request_bounds().tolist() == [0, 2, 3]
    sel = tr.select_requests(["b", "a"])
    assert sel.tokens["request_id"].tolist() == ["b", "a", "a"]
    assert sel.tokens.index.tolist() == [0, 1, 2]
    assert sel.experts.tolist() == tr.experts[[2, 0, 1]].tolist()
    assert np.array_equal(sel.weights, tr.weights[[2, 0, 1]]) and sel.weights.dtype == np.float32
    assert sel.meta == tr.meta and sel.meta is not tr.meta
    empty = tr.select_requests([])
    assert empty.num_tokens == 0 and empty.experts.shape == (0, 2, 2)
    with pytest.raises(TraceFormatError, match=r"^requests not in trace: \['z', 'y'\]$"):
        tr.select_requests(["a", "z", "y"])
    taken = tr.take([2])
    assert taken.request_ids() == ["b"] and taken.tokens["position"].tolist() == [0]
    no_w = _small(weights=False).take([0, 1])
    assert no_w.weights is None and no_w.num_tokens == 2
    with pytest.raises(TraceFormatError, match="^mine.parquet: "):
        bad = _small()
        bad.experts[0, 0, 1] = 0
        bad.validate("mine.parquet")


def _rewrite(src, dst, table=None, meta_edit=None):
    """Write ``src``'s table (or ``table``) to ``dst`` with its moesim metadata edited."""
    import json

    import pyarrow.parquet as pq

    t = pq.read_table(src) if table is None else table
    meta = json.loads(pq.read_schema(src).metadata[b"moesim"])
    if meta_edit:
        meta_edit(meta)
    pq.write_table(t.replace_schema_metadata({b"moesim": json.dumps(meta).encode()}), dst)
    return dst


def test_read_trace_errors_and_defaults(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from sim.common.errors import TraceFormatError

    good = tmp_path / "good.parquet"
    write_trace(_small(), good)
    t = pq.read_table(good)

    p = _rewrite(good, tmp_path / "kind.parquet", meta_edit=lambda m: m.update(kind="workload"))
    with pytest.raises(TraceFormatError, match=f"^{p}: holds a 'workload' table, expected a routing trace$"):
        read_trace(p)
    p = _rewrite(good, tmp_path / "lacks.parquet", meta_edit=lambda m: m.pop("top_k"))
    with pytest.raises(TraceFormatError, match=f"^{p}: moesim metadata lacks 'top_k'$"):
        read_trace(p)
    # optional metadata: source "", layer ids 0..L-1, extra {}
    p = _rewrite(good, tmp_path / "bare.parquet",
                 meta_edit=lambda m: [m.pop(k) for k in ("source", "layer_ids", "extra")])
    bare = read_trace(p)
    assert (bare.meta.source, bare.meta.layer_ids, bare.meta.extra) == ("", [0, 1], {})
    p = _rewrite(good, tmp_path / "cols.parquet", table=t.drop_columns(["experts", "phase"]))
    with pytest.raises(TraceFormatError, match=rf"^{p}: missing columns \['phase', 'experts'\], expected "
                                               rf"\['request_id', 'position', 'phase', 'task', 'experts'\] "
                                               rf"\(\+ text, weights\)$"):
        read_trace(p)
    p = _rewrite(good, tmp_path / "size.parquet", meta_edit=lambda m: m.update(top_k=1, num_experts=4))
    with pytest.raises(TraceFormatError, match=rf"^{p}: column 'experts' has type fixed_size_list<\w+: "
                                               rf"int16>\[4\], expected fixed_size_list of 2\*1=2 values "
                                               rf"per token$"):
        read_trace(p)
    var = t.set_column(t.column_names.index("experts"), "experts",
                       pa.array([[0, 1, 2, 3]] * 3, type=pa.list_(pa.int16())))
    p = _rewrite(good, tmp_path / "var.parquet", table=var)
    with pytest.raises(TraceFormatError, match=rf"^{p}: column 'experts' has type list<\w+: int16>, "
                                               rf"expected fixed_size_list of 2\*2=4"):
        read_trace(p)
    rows = pa.array([[0, 1, 2, 3], None, [1, 2, 3, 0]], type=pa.list_(pa.int16(), 4))
    p = _rewrite(good, tmp_path / "nullrow.parquet",
                 table=t.set_column(t.column_names.index("experts"), "experts", rows))
    with pytest.raises(TraceFormatError, match=rf"^{p}: column 'experts' has missing values \(row 1\)$"):
        read_trace(p)
    vals = pa.array([[0, 1, 2, 3], [0, None, 2, 3], [1, 2, 3, 0]], type=pa.list_(pa.int16(), 4))
    p = _rewrite(good, tmp_path / "nullval.parquet",
                 table=t.set_column(t.column_names.index("experts"), "experts", vals))
    with pytest.raises(TraceFormatError, match=rf"^{p}: column 'experts' has missing values \(row -1\)$"):
        read_trace(p)
    w = pa.array([[0.5] * 4, None, [0.5] * 4], type=pa.list_(pa.float32(), 4))
    p = _rewrite(good, tmp_path / "nullw.parquet",
                 table=t.set_column(t.column_names.index("weights"), "weights", w))
    with pytest.raises(TraceFormatError, match=rf"^{p}: column 'weights' has missing values \(row 1\)$"):
        read_trace(p)


def test_format_edges():
    import pytest

    from sim.common.errors import TraceFormatError
    from traces.format import TOKEN_COLUMNS, validate

    tr = _small()
    # the token table: canonical columns and object dtypes (not pandas' string dtype)
    assert list(tr.tokens.columns) == list(TOKEN_COLUMNS)
    assert all(tr.tokens[c].dtype == object for c in ("request_id", "phase", "task", "text"))
    assert make_tokens("r", [0, 1], "decode", "t")["request_id"].dtype == object
    assert tr.take([]).num_tokens == 0 and tr.take(np.array([1])).request_ids() == ["a"]
    assert list(tr.select_requests(["b"]).tokens.columns) == list(TOKEN_COLUMNS)
    empty = tr.take([])
    assert empty.request_bounds().tolist() == [0] and empty.request_bounds().dtype == np.int64
    one = tr.take([0])
    assert one.request_bounds().tolist() == [0, 1]
    with pytest.raises(TraceFormatError, match=r"^requests not in trace: \['p', 'q', 'r', 's', 't'\]$"):
        tr.select_requests(["p", "q", "r", "s", "t", "u"])
    bad = _small()
    bad.experts[2, 1, :] = [1, 1]
    with pytest.raises(TraceFormatError, match="^<memory>: token 2 layer 1"):
        validate(bad)


def test_read_trace_validates_and_keeps_dtypes(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    import pytest

    import traces.format as fmt
    from sim.common.errors import TraceFormatError

    good = tmp_path / "good.parquet"
    write_trace(_small(text=["x", "y", "z"]), good)
    back = read_trace(good)
    assert back.weights.dtype == np.float32 and back.experts.dtype == np.int16
    assert back.tokens["text"].tolist() == ["x", "y", "z"]
    t = pq.read_table(good)
    p = _rewrite(good, tmp_path / "notext.parquet", table=t.drop_columns(["text"]))
    assert read_trace(p).tokens["text"].tolist() == [None, None, None]
    # a file whose content breaks a rule validate() checks (written around write_trace)
    monkeypatch.setattr(fmt, "validate", lambda *a, **k: None)
    dup = _small()
    dup.experts[1, 0, :] = [2, 2]
    write_trace(dup, tmp_path / "dup.parquet")
    monkeypatch.undo()
    p = tmp_path / "dup.parquet"
    with pytest.raises(TraceFormatError, match=f"^{p}: token 1 layer 0: expert chosen twice"):
        read_trace(p)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(TraceFormatError) as e:
        fmt.read_meta(junk)
    assert "(None)" not in str(e.value) and "arquet" in str(e.value).split("(", 1)[1]


def test_expert_counts_by_hand_and_random():
    """expert_counts: by hand (2 tokens, 2 layers, top-2 of 3), then random pools across its row
    chunks equal to a bincount per layer; an id outside the experts is refused."""
    from traces.format import expert_counts

    ex = np.array([[[0, 2], [1, 2]], [[2, 1], [1, 0]]], dtype=np.int16)  # (T=2, L=2, K=2)
    # layer 0: expert 0 once, 1 once, 2 twice; layer 1: 0 once, 1 twice, 2 once
    assert expert_counts(ex, 3).tolist() == [[1, 1, 2], [1, 2, 1]]
    rng = np.random.default_rng(7)
    for T, L, K, E in [(0, 3, 2, 4), (1, 1, 1, 1), (2500, 5, 3, 9), (70000, 2, 1, 6)]:
        ex = rng.integers(0, E, size=(T, L, K)).astype(np.int16)
        want = [np.bincount(ex[:, layer, :].ravel(), minlength=E).tolist() for layer in range(L)]
        got = expert_counts(ex, E)
        assert got.dtype == np.int64 and got.tolist() == want
    for bad in (-1, 3):
        ex = np.zeros((4, 2, 1), dtype=np.int16)
        ex[2, 1, 0] = bad
        with pytest.raises(ValueError, match="outside 0..2"):
            expert_counts(ex, 3)
