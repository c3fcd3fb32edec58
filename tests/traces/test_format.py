"""Round trip of the routing-trace Parquet format is lossless (hypothesis property test)."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
