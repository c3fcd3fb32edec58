"""The request traces' disk cache (traces/workload_cache.py): a hit gives the columns the importer's
table gives, without reading the trace again; the key covers the files' bytes and names, the list
form and the parsing code; a corrupt, truncated, tampered or misnamed file is ignored and
rewritten; a missing trace is the importer's error; the folder follows the environment. The
synthetic workload's columns (make_columns, no pandas) equal make_workload's table's."""

from __future__ import annotations

import numpy as np
import pytest

import traces.workload_cache as wc
from sim.common.errors import ConfigError, TraceFormatError
from sim.common.npz_cache import arrays_digest
from sim.engine.run import load_workload_columns, load_workload_table
from sim.world.config import WorkloadConfig
from traces.workload import WorkloadColumns, make_columns, make_workload


def _azure(path, rows):
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                    "".join(f"{t},{p},{o}\n" for t, p, o in rows))
    return path


ROWS = [("2023-11-16 18:00:00.0", 10, 2), ("2023-11-16 18:00:01.25", 11, 3),
        ("2023-11-16 18:00:01.25", 0, 5), ("2023-11-16 18:00:02.5", 12, 4)]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MOESIM_WORKLOAD_CACHE", raising=False)
    return tmp_path / "cache" / "workloads"


def _same(a: WorkloadColumns, b: WorkloadColumns):
    assert a.request_id == b.request_id and a.task == b.task
    for c in ("arrival_s", "prompt_tokens", "output_tokens"):
        x, y = getattr(a, c), getattr(b, c)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), c


def _load(path, **kw):
    return load_workload_columns(WorkloadConfig(path=path, **kw), np.random.default_rng(0))


def _loads(monkeypatch):
    """Counts the importer's reads of a trace."""
    import traces.request_import as ri

    calls = []
    real = ri.import_workload
    monkeypatch.setattr(ri, "import_workload", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_hit_equals_the_importers_table(folder, tmp_path, monkeypatch):
    trace = _azure(tmp_path / "svc_conv.csv", ROWS)
    calls = _loads(monkeypatch)
    first = _load(str(trace))
    want = WorkloadColumns.of(load_workload_table(WorkloadConfig(path=str(trace)),
                                                  np.random.default_rng(0)))
    assert len(calls) == 2  # the run's read (stored), and the reference's
    # seconds from the first request; ids the data rows of the file (row 2, no prompt, dropped);
    # task from the file's name
    assert first.request_id == ["0", "1", "3"] and first.task == ["conversation"] * 3
    assert first.arrival_s.tolist() == [0.0, 1.25, 2.5]
    assert first.prompt_tokens.tolist() == [10, 11, 12] and first.output_tokens.tolist() == [2, 3, 4]
    _same(first, want)
    again = _load(str(trace))
    assert len(calls) == 2 and len(list(folder.glob("*.npz"))) == 1  # read back, not parsed
    _same(again, want)
    head = _load(str(trace), max_requests=2)
    assert head.request_id == ["0", "1"] and head.arrival_s.tolist() == [0.0, 1.25]
    with pytest.raises(ConfigError, match="workload.max_requests=-1"):
        _load(str(trace), max_requests=-1)
    monkeypatch.setenv("MOESIM_WORKLOAD_CACHE", "off")
    _same(_load(str(trace)), want)
    assert len(calls) == 3


def test_key_covers_bytes_names_and_the_list(folder, tmp_path):
    a = _azure(tmp_path / "a_conv.csv", ROWS)
    b = _azure(tmp_path / "b_code.csv", ROWS)  # the same bytes, another name: another task
    assert _load(str(a)).task == ["conversation"] * 3 and _load(str(b)).task == ["code"] * 3
    merged = _load([str(a)])  # a list of one: ids "0:<id>"
    assert merged.request_id == ["0:0", "0:1", "0:3"]
    _azure(a, ROWS[:2])
    assert _load(str(a)).request_id == ["0", "1"]  # new bytes: parsed again, not the old table
    assert len(list(folder.glob("*.npz"))) == 4
    k = wc.workload_key([("x.csv", b"1")], False)
    assert k == wc.workload_key([("x.csv", b"1")], False)
    for other in (wc.workload_key([("x.csv", b"2")], False), wc.workload_key([("y.csv", b"1")], False),
                  wc.workload_key([("x.csv", b"1")], True),
                  wc.workload_key([("x.csv", b"1"), ("x.csv", b"1")], False)):
        assert other != k


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "renamed", "empty", "ragged"])
def test_a_damaged_file_is_ignored_and_rewritten(folder, tmp_path, monkeypatch, damage):
    trace = _azure(tmp_path / "svc_conv.csv", ROWS)
    fresh = _load(str(trace))
    (f,) = folder.glob("*.npz")
    good = f.read_bytes()
    if damage == "garbage":
        f.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        f.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "flipped":  # a valid file whose table was changed: the digest no longer fits
        arr = wc._arrays(fresh, f.stem)
        arr["prompt_tokens"] = arr["prompt_tokens"] + 1
        arr["digest"] = np.array(arrays_digest(wc._arrays(fresh, f.stem)))
        with open(f, "wb") as fh:
            np.savez(fh, **arr)
    elif damage == "ragged":  # digest fits, columns do not fit together
        arr = wc._arrays(fresh, f.stem)
        arr["task"] = arr["task"][:2]
        arr["digest"] = np.array(arrays_digest(arr))
        with open(f, "wb") as fh:
            np.savez(fh, **arr)
    else:  # a sound file of another key under this name
        wc.write_columns(f, "f" * 64, fresh)
    assert wc.read_columns(f, f.stem) is None
    calls = _loads(monkeypatch)
    _same(_load(str(trace)), fresh)
    assert len(calls) == 1  # parsed again
    assert f.read_bytes() == good  # rewritten: the same bytes as the first write


def test_strings_that_would_not_read_back_are_not_stored(tmp_path):
    cols = WorkloadColumns(["a\0"], np.zeros(1), np.ones(1, np.int64), np.ones(1, np.int64), ["t"])
    path = tmp_path / "w.npz"
    assert not wc.write_columns(path, "k", cols) and not path.exists()
    cols.request_id = ["a"]
    assert wc.write_columns(path, "k", cols)
    _same(wc.read_columns(path, "k"), cols)


def test_a_missing_trace_is_the_importers_error(folder, tmp_path):
    with pytest.raises(TraceFormatError, match="workload.path=.*nope.csv: no such file"):
        _load(str(tmp_path / "nope.csv"))
    with pytest.raises(TraceFormatError, match=r"workload.path\[1\]=.*nope.csv: no such file"):
        _load([str(_azure(tmp_path / "a_conv.csv", ROWS)), str(tmp_path / "nope.csv")])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TraceFormatError, match="empty"):
        _load(str(empty))
    assert not folder.exists() or not list(folder.glob("*.npz"))


def test_folder_from_the_environment_and_unwritable(monkeypatch, tmp_path):
    from sim.common.files import cache_dir

    monkeypatch.delenv("MOESIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir("workloads", "MOESIM_WORKLOAD_CACHE") == tmp_path / "x" / "moesim" / "workloads"
    for off in ("off", "0", "False", " no "):
        monkeypatch.setenv("MOESIM_WORKLOAD_CACHE", off)
        assert cache_dir("workloads", "MOESIM_WORKLOAD_CACHE") is None
    monkeypatch.delenv("MOESIM_WORKLOAD_CACHE")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MOESIM_CACHE_DIR", str(blocker))  # workloads/ cannot be made under a file
    trace = _azure(tmp_path / "svc_conv.csv", ROWS)
    assert _load(str(trace)).request_id == ["0", "1", "3"]


def test_make_columns_by_hand():
    """Arrivals [3, 1, 1] s: less their minimum [2, 0, 0], in stable order of arrival rows 1, 2, 0."""
    c = make_columns([3.0, 1.0, 1.0], [10, 11, 12], [1, 2, 3], task="chat")
    assert c.request_id == ["1", "2", "0"] and c.arrival_s.tolist() == [0.0, 0.0, 2.0]
    assert c.prompt_tokens.tolist() == [11, 12, 10] and c.output_tokens.tolist() == [2, 3, 1]
    assert c.task == ["chat"] * 3 and len(c) == 3 and c.head(1).request_id == ["1"]
    with pytest.raises(ValueError, match="NaN"):
        make_columns([0.0, float("nan")], [1, 1], [1, 1])


@pytest.mark.parametrize("seed", range(8))
def test_make_columns_equals_make_workload(seed):
    """Random tables (ties, unsorted arrivals, an offset, given ids and tasks, none at all): the
    columns equal those of make_workload's DataFrame, bit for bit."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40)) if seed else 0
    arrival = rng.choice([0.0, 0.5, 1.0, 2.25, 7.0, 1e-3], size=n) + (rng.random() * 100 if seed % 2 else 0)
    prompt, output = rng.integers(1, 100, n), rng.integers(1, 50, n)
    kw = ({"task": [f"t{i % 3}" for i in range(n)]} if seed % 3 == 1 else
          {"request_id": [f"r{i}" for i in range(n)], "task": "chat"} if seed % 3 == 2 else {})
    _same(make_columns(arrival, prompt, output, **kw),
          WorkloadColumns.of(make_workload(arrival, prompt, output, **kw)))


def test_synthetic_columns_equal_the_table():
    """moesim sim's synthetic workload as columns (no pandas) equals its table's columns."""
    for kw in ({}, {"max_requests": 7, "task": "code"}, {"num_requests": 1}):
        w = WorkloadConfig(num_requests=kw.pop("num_requests", 50), rate_rps=3.0, **kw)
        _same(load_workload_columns(w, np.random.default_rng(5)),
              WorkloadColumns.of(load_workload_table(w, np.random.default_rng(5))))
    with pytest.raises(ConfigError, match="num_requests must be >= 1"):
        load_workload_columns(WorkloadConfig(num_requests=0), np.random.default_rng(0))


def test_key_covers_the_loaders_code():
    """A loader's own module is part of the key (sim.engine.run's, where moesim sim reads)."""
    files = [("x.csv", b"1")]
    assert wc.workload_key(files, False, ("sim.engine.run",)) != wc.workload_key(files, False)
    assert wc.workload_key(files, False, ("sim.engine.run",)) == wc.workload_key(
        files, False, ("sim.engine.run",))
