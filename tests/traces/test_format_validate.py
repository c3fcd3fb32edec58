"""traces.format.validate on in-memory traces: one bad trace per rule, each named in one line
(the importers' own checks cannot hide a rule that validate() lost)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.common.errors import TraceFormatError
from traces.format import RoutingTrace, TraceMeta, make_tokens, validate


def good() -> RoutingTrace:
    # 2 requests (a: 3 tokens, b: 2), 2 layers numbered 1 and 2, 4 experts, top-2
    ex = np.array([[[0, 1], [2, 3]], [[1, 2], [3, 0]], [[3, 2], [0, 1]],
                   [[0, 3], [1, 2]], [[2, 1], [0, 3]]], dtype=np.int16)  # (5, 2, 2)
    w = np.full(ex.shape, 0.5, dtype=np.float32)
    tok = make_tokens(["a", "a", "a", "b", "b"], [0, 1, 2, 0, 1], "prefill", "chat")
    return RoutingTrace(ex, w, tok, TraceMeta("toy", 2, 4, 2, layer_ids=[1, 2]))


def _meta(**kw):
    def f(tr):
        for k, v in kw.items():
            setattr(tr.meta, k, v)
    return f


def _set(t, l, k, v):
    def f(tr):
        tr.experts[t, l, k] = v
    return f


def _tok(col, values):
    def f(tr):
        tr.tokens[col] = pd.Series(values, dtype=object if col != "position" else np.int64)
    return f


def _weights(t, l, k, v):
    def f(tr):
        tr.weights[t, l, k] = v
    return f


def _replace(**kw):
    def f(tr):
        for k, v in kw.items():
            setattr(tr, k, v)
    return f


CASES = [
    ("num_layers zero", _meta(num_layers=0), "metadata num_layers must be a positive integer, got 0"),
    ("num_experts float", _meta(num_experts=4.0), "metadata num_experts must be a positive integer"),
    ("top_k negative", _meta(top_k=-1), "metadata top_k must be a positive integer, got -1"),
    ("top_k > experts", _meta(top_k=5), "top_k 5 exceeds num_experts 4"),
    ("layer_ids short", _meta(layer_ids=[1]), "metadata layer_ids has 1 entries, expected num_layers=2"),
    ("experts 2-d", _replace(experts=np.zeros((5, 4), dtype=np.int16)),
     r"experts has shape \(5, 4\), expected \(T, 2, 2\)"),
    ("experts wrong K", _replace(experts=np.zeros((5, 2, 3), dtype=np.int16)),
     r"experts has shape \(5, 2, 3\), expected \(T, 2, 2\)"),
    ("no tokens", _replace(experts=np.zeros((0, 2, 2), dtype=np.int16), weights=None),
     "trace has no tokens"),
    ("token table short", lambda tr: setattr(tr, "tokens", tr.tokens.iloc[:4]),
     "token table has 4 rows, experts has 5 tokens"),
    ("token column missing", lambda tr: setattr(tr, "tokens", tr.tokens.drop(columns=["task"])),
     r"token table lacks columns \['task'\]"),
    ("float experts", _replace(experts=np.zeros((5, 2, 2), dtype=np.float32)),
     "experts must be integers, got dtype float32"),
    ("expert id too large", _set(2, 1, 0, 4), "token 2 layer 2: expert id 4 out of range, expected 0..3"),
    ("expert id negative", _set(4, 0, 1, -1), "token 4 layer 1: expert id -1 out of range"),
    ("duplicate expert", _set(3, 1, 1, 1),
     r"token 3 layer 2: expert chosen twice in top-2 \[1, 1\], expected 2 distinct experts"),
    ("weights shape", _replace(weights=np.zeros((5, 2, 1), dtype=np.float32)),
     r"weights shape \(5, 2, 1\) != experts shape \(5, 2, 2\)"),
    ("weight nan", _weights(1, 1, 0, np.nan), "token 1 layer 2: gate weight nan is not finite"),
    ("weight inf", _weights(0, 0, 1, np.inf), "token 0 layer 1: gate weight inf is not finite"),
    ("phase", _tok("phase", ["prefill", "decode", "encode", "prefill", "decode"]),
     r"token 2: phase 'encode', expected one of \['prefill', 'decode'\]"),
    ("position negative", _tok("position", [0, 1, 2, -1, 0]), "token 3: position -1 is negative"),
    ("request id missing", _tok("request_id", ["a", "a", "a", None, "b"]), "token 3: request_id is missing"),
    ("request not contiguous", _tok("request_id", ["a", "a", "b", "a", "b"]),
     "token 3: request 'a' is not contiguous"),
    ("position repeats", _tok("position", [0, 1, 1, 0, 1]),
     "token 2: position 1 of request 'a' does not follow 1; expected increasing positions"),
    ("last request not contiguous", _tok("request_id", ["a", "a", "b", "b", "a"]),
     "token 4: request 'a' is not contiguous"),
    ("position back in a later request", _tok("position", [0, 1, 2, 1, 1]),
     "token 4: position 1 of request 'b' does not follow 1"),
    ("position goes back", _tok("position", [0, 2, 1, 0, 1]),
     "token 2: position 1 of request 'a' does not follow 2"),
]


def test_the_good_trace_is_valid():
    validate(good())
    validate(good(), "x.parquet")
    tr = good()
    tr.weights = None  # weights are optional
    validate(tr)
    one = good()
    one.meta.top_k = 1
    one.experts = np.array([[[0], [0]]] * 5, dtype=np.int16)  # top-1: the same expert at 2 layers
    one.weights = None
    validate(one)
    # positions may skip (a capture that dropped tokens) but never go back; the boundary resets
    skip = good()
    skip.tokens["position"] = np.array([0, 5, 9, 3, 4], dtype=np.int32)
    validate(skip)


@pytest.mark.parametrize("name,mutate,message", CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_the_file_the_token_and_the_expectation(name, mutate, message):
    tr = good()
    mutate(tr)
    with pytest.raises(TraceFormatError, match=f"^where.parquet: {message}"):
        validate(tr, "where.parquet")
    with pytest.raises(TraceFormatError, match="^<memory>: "):
        tr.validate()


def test_a_duplicate_anywhere_in_a_top_3_is_found():
    ex = np.array([[[0, 1, 2]], [[3, 1, 1]]], dtype=np.int16)  # sorted [1, 1, 3]: 1st and 2nd
    tr = RoutingTrace(ex, None, make_tokens("a", [0, 1], "prefill", "chat"), TraceMeta("toy", 1, 4, 3))
    with pytest.raises(TraceFormatError, match=r"token 1 layer 0: expert chosen twice in top-3 \[3, 1, 1\]"):
        validate(tr)
    tr.experts[1, 0] = [3, 2, 2]  # sorted [2, 2, 3]
    with pytest.raises(TraceFormatError, match="token 1 layer 0: expert chosen twice"):
        validate(tr)
    tr.experts[1, 0] = [2, 3, 2]  # sorted [2, 2, 3] from a non-adjacent pair
    with pytest.raises(TraceFormatError, match="token 1 layer 0: expert chosen twice"):
        validate(tr)


def test_the_first_violation_is_the_one_reported():
    tr = good()
    tr.experts[3, 0, 0] = 9
    tr.experts[1, 1, 1] = 7
    with pytest.raises(TraceFormatError, match="token 1 layer 2: expert id 7"):
        validate(tr)
    tr = good()
    tr.experts[4, 0, :] = [2, 2]
    tr.experts[1, 1, :] = [3, 3]
    with pytest.raises(TraceFormatError, match=r"token 1 layer 2: expert chosen twice in top-2 \[3, 3\]"):
        validate(tr)
