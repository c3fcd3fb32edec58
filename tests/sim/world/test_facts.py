"""The facts the three drivers share (sim/world/facts.py), each pinned on its edges."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.common.errors import ConfigError
from sim.world.facts import (
    COUNT_FIELDS,
    CacheCounts,
    batch_executions,
    cache_slots,
    expert_bytes_of_trace,
    known_models,
    model_for_trace,
    model_named,
    stable_float,
)
from sim.world.model import expert_bytes
from traces.format import TraceMeta


def test_cache_slots_rounds_down_within_bounds():
    assert cache_slots(0.0, 8) == 0 and cache_slots(1.0, 8) == 8
    assert cache_slots(0.5, 7) == 3 and cache_slots(0.999, 1000) == 999
    assert cache_slots(0.29, 100) == 29 and cache_slots(0.57, 100) == 57  # binary 0.57*100 < 57
    assert cache_slots(1.0, 0) == 0
    assert cache_slots("0.25", 64) == 16  # a string from a config is a number
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(ConfigError, match=r"^budget=.*expected a fraction in \[0, 1\] of the experts$"):
            cache_slots(bad, 8, "budget")
    with pytest.raises(ConfigError, match="^capacity fraction: a negative number of experts"):
        cache_slots(0.5, -1)


def test_stable_float_keeps_twelve_significant_digits():
    assert stable_float(0.1 + 0.2) == 0.3
    assert stable_float(1 / 3) == 0.333333333333
    assert stable_float(np.float32(0.5)) == 0.5 and isinstance(stable_float(np.int64(2)), float)
    assert stable_float(123456789012345) == 123456789012000.0


def test_cache_counts_add_up_and_record_in_order():
    a = CacheCounts(hits=3, misses=2, streamed=1, evictions=1, prefetched=4, rerouted=5)
    assert (a.accesses, a.loads) == (10, 6)
    assert a.hit_rate == 0.3
    assert CacheCounts().hit_rate == 1.0  # nothing accessed: nothing missed
    b = CacheCounts(hits=1, misses=1, streamed=0, evictions=2, prefetched=0, rerouted=0)
    t = CacheCounts.total([a, b])
    assert dataclasses.astuple(t) == (4, 3, 1, 3, 4, 5, 0, 0)
    assert dataclasses.astuple(a) == (3, 2, 1, 1, 4, 5, 0, 0)
    assert a.add(b) is a and a == t
    rec = t.record(7)
    assert tuple(rec) == COUNT_FIELDS
    assert rec == {"accesses": 12, "hits": 4, "late_prefetch_hits": 0, "misses": 3,
                   "hit_rate": 0.333333333333, "rerouted": 5, "streamed": 1, "evictions": 3,
                   "prefetched": 4, "prefetch_skipped": 0, "loads": 7, "h2d_bytes": 49}
    # a hit the timing finds still in flight is a late prefetch hit: an access still, not a hit
    t.hit_was_late(2)
    assert (t.hits, t.late_prefetch_hits, t.accesses, t.resident_hits) == (2, 2, 12, 4)
    assert t.hit_rate == 2 / 12
    t.hit_was_late()  # one, by default
    assert (t.hits, t.late_prefetch_hits, t.accesses) == (1, 3, 12)
    assert all(type(v) is int for k, v in rec.items() if k != "hit_rate")


def test_batch_executions_edges():
    with pytest.raises(ConfigError, match="batch_size=0; expected a positive number of tokens"):
        batch_executions(np.zeros((2, 1), dtype=np.int64), 0, 4)
    starts, ids = batch_executions(np.zeros((0, 2), dtype=np.int64), 4, 4)
    assert starts.tolist() == [0] and ids.tolist() == []
    starts, ids = batch_executions(np.array([[3], [3], [3]]), 2, 4)  # 2 batches, one run each
    assert starts.tolist() == [0, 1, 2] and ids.tolist() == [3, 3]
    assert starts.dtype == np.int64 and ids.dtype == np.int64


def test_models_by_name_and_by_trace():
    assert {"deepseek-v2-lite", "mixtral-8x7b", "mixtral-8x22b"} <= set(known_models())
    assert known_models() == sorted(known_models())
    with pytest.raises(ConfigError, match="model='nope': no such model config; known: deepseek"):
        model_named("nope")
    # the longest matching prefix: mixtral-8x22b, not mixtral-8x7b... nor a shorter one
    assert model_for_trace("mistralai/Mixtral-8x22B-Instruct-v0.1").name == "mixtral-8x22b"
    assert model_for_trace("MIXTRAL-8x7B").name == "mixtral-8x7b"
    with pytest.raises(ConfigError, match="no model config matches the trace's model 'org/x'"):
        model_for_trace("org/x")
    meta = TraceMeta("mixtral-8x7b", 32, 8, 2)
    with pytest.raises(ConfigError, match="expert_bytes=0; expected a positive number of bytes"):
        expert_bytes_of_trace(meta, override=0)
    assert expert_bytes_of_trace(meta, model=model_named("deepseek-v2-lite")) == expert_bytes(
        model_named("deepseek-v2-lite"))
    # a model named explicitly wins over what a capture recorded
    rec = dataclasses.replace(meta, extra={"expert_bytes": 5})
    assert expert_bytes_of_trace(rec) == 5
    assert expert_bytes_of_trace(rec, model="mixtral-8x7b") == 3 * 4096 * 14336 * 2
    assert expert_bytes_of_trace(rec, model="mixtral-8x7b", override=9) == 9


def test_model_lookup_messages_and_paths():
    from types import SimpleNamespace

    known = ", ".join(known_models())
    with pytest.raises(ConfigError) as e:
        model_named("nope")
    assert str(e.value) == f"model='nope': no such model config; known: {known}"
    with pytest.raises(ConfigError) as e:
        model_for_trace("x")
    assert str(e.value) == (f"no model config matches the trace's model 'x' (known: {known}); give "
                            f"model=NAME or expert_bytes=N")
    # only the last path part names the model
    assert model_for_trace("hub/org/DeepSeek-V2-Lite-Chat").name == "deepseek-v2-lite"
    with pytest.raises(ConfigError):
        model_for_trace("deepseek-v2-lite/other")
    # a meta without an `extra` field (any object with a model name) works
    assert expert_bytes_of_trace(SimpleNamespace(model="mixtral-8x7b")) == 3 * 4096 * 14336 * 2
    assert expert_bytes_of_trace(SimpleNamespace(model="mixtral-8x7b"), override=1) == 1
