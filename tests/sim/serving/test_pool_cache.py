"""The routing pool's disk cache (sim/serving/pool_cache.py): a hit gives the same pool and leaves
the generator where sampling would; the key covers what decides the pool; a corrupt, truncated,
tampered or misnamed file is ignored and rewritten; the folder follows the environment."""

from __future__ import annotations

import numpy as np
import pytest

import sim.serving.pool_cache as pc
from sim.serving.binding import RoutingPool, build_pool
from sim.world.config import ModelConfig, TraceConfig


def _model() -> ModelConfig:
    from traces.synth_params import load_params

    p = load_params("deepseek-v2-lite")
    return ModelConfig(name="deepseek-v2-lite", num_layers=p.num_layers, num_experts=p.num_experts,
                       top_k=p.top_k)


def _build(seed=0, size=2, tokens=16, tasks=("chat", "code")):
    rng = np.random.default_rng(seed)
    pool = build_pool(_model(), TraceConfig(pool_size=size, pool_tokens=tokens), list(tasks), rng)
    return pool, rng.integers(0, 1 << 62)  # the next draw: where sampling left the generator


def _same(a, b):
    assert a.experts.dtype == b.experts.dtype == np.int16
    assert np.array_equal(a.experts, b.experts) and np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.lengths, b.lengths) and a.tasks == b.tasks and a.source == b.source
    assert {t: v.tolist() for t, v in a.by_task.items()} == {t: v.tolist() for t, v in b.by_task.items()}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("MOESIM_POOL_CACHE", raising=False)
    return tmp_path / "pools"


def _files(folder):
    return sorted(folder.glob("*.npz"))


def test_hit_equals_fresh_sample(folder, monkeypatch):
    fresh, nxt = _build()
    (f,) = _files(folder)
    calls = []
    real = pc.write_pool
    monkeypatch.setattr(pc, "write_pool", lambda *a: calls.append(a) or real(*a))
    again, nxt2 = _build()
    assert not calls  # read back, not sampled and written again
    _same(fresh, again)
    assert nxt == nxt2
    monkeypatch.setenv("MOESIM_POOL_CACHE", "off")
    off, nxt3 = _build()
    _same(fresh, off)
    assert nxt3 == nxt and _files(folder) == [f]


def test_key_covers_what_decides_the_pool(folder):
    _build()
    for kw in (dict(seed=1), dict(size=3), dict(tokens=17), dict(tasks=("code", "chat"))):
        _build(**kw)
    assert len(_files(folder)) == 5
    rng = np.random.default_rng(0)
    k = pc.pool_key("g", {"a": 1}, ["chat"], 2, 16, rng)
    assert k == pc.pool_key("g", {"a": 1}, ["chat"], 2, 16, np.random.default_rng(0))
    for other in (pc.pool_key("h", {"a": 1}, ["chat"], 2, 16, rng),
                  pc.pool_key("g", {"a": 2}, ["chat"], 2, 16, rng)):
        assert other != k
    rng.integers(0, 2)
    assert pc.pool_key("g", {"a": 1}, ["chat"], 2, 16, rng) != k


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "renamed", "empty"])
def test_a_damaged_file_is_ignored_and_rewritten(folder, damage):
    fresh, nxt = _build()
    (f,) = _files(folder)
    good = f.read_bytes()
    if damage == "garbage":
        f.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        f.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "flipped":  # a valid file whose pool was changed: the digest no longer fits
        key = f.stem
        pool, state = pc.read_pool(f, key, RoutingPool)
        pool.experts[0, 0, 0] ^= 1
        arr = pc._arrays(pool, key, state)
        arr["digest"] = np.array("0" * 64)
        with open(f, "wb") as fh:
            np.savez(fh, **arr)
    else:  # a sound file of another key under this name
        pc.write_pool(f, "f" * 64, fresh, {"x": 1})
    assert pc.read_pool(f, f.stem, RoutingPool) is None
    again, nxt2 = _build()
    _same(fresh, again)
    assert nxt2 == nxt
    assert f.read_bytes() == good  # rewritten: the same bytes as the first write


def test_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MOESIM_CACHE_DIR", raising=False)
    monkeypatch.delenv("MOESIM_POOL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert pc.cache_dir() == tmp_path / "x" / "moesim" / "pools"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert pc.cache_dir() == tmp_path / "h" / ".cache" / "moesim" / "pools"
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "m"))
    assert pc.cache_dir() == tmp_path / "m" / "pools"
    for off in ("off", "0", "False", " no "):
        monkeypatch.setenv("MOESIM_POOL_CACHE", off)
        assert pc.cache_dir() is None
    monkeypatch.setenv("MOESIM_POOL_CACHE", "on")
    assert pc.cache_dir() == tmp_path / "m" / "pools"


def test_unwritable_folder_is_no_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(blocker))  # pools/ cannot be made under a file
    fresh, _ = _build()
    monkeypatch.setenv("MOESIM_POOL_CACHE", "off")
    _same(fresh, _build()[0])
