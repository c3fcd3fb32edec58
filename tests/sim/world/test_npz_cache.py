"""The caches' shared .npz handling (sim/common/npz_cache.py): a round trip, every way a file is
refused (another key, a changed array under the old digest, not an .npz, missing), and the
digests worked out by hand."""

from __future__ import annotations

import hashlib

import numpy as np

from sim.common.npz_cache import arrays_digest, read_npz, source_digest, write_npz


def test_round_trip_and_refusals(tmp_path):
    f = tmp_path / "k.npz"
    arrays = {"key": np.array("k"), "x": np.arange(3, dtype=np.int64)}
    write_npz(f, arrays)
    got = read_npz(f, "k")
    assert got is not None and got["x"].tolist() == [0, 1, 2] and str(got["key"]) == "k"
    assert read_npz(f, "other") is None  # another key
    bad = {**arrays, "x": np.array([0, 1, 3], dtype=np.int64),
           "digest": np.array(arrays_digest(arrays))}  # a changed array under the old digest
    with open(f, "wb") as fh:
        np.savez(fh, **bad)
    assert read_npz(f, "k") is None
    f.write_bytes(b"not an npz")
    assert read_npz(f, "k") is None
    assert read_npz(tmp_path / "missing.npz", "k") is None


def test_digest_by_hand():
    """One int64 array [1] named x: SHA-256 of ``x:<i8:(1,)\\0`` then its 8 bytes; names sorted."""
    a = np.array([1], dtype=np.int64)
    assert arrays_digest({"x": a}) == hashlib.sha256(b"x:<i8:(1,)\0" + a.tobytes()).hexdigest()
    b = np.array([2], dtype=np.int64)
    assert arrays_digest({"y": b, "x": a}) == arrays_digest({"x": a, "y": b})


def test_source_digest_reads_the_module_source():
    import sim.common.npz_cache as mod

    with open(mod.__file__, "rb") as fh:
        src = fh.read()
    want = hashlib.sha256(b"sim.common.npz_cache\0" + src + b"\0").hexdigest()
    assert source_digest(["sim.common.npz_cache"]) == want
    assert want != source_digest(["sim.common.files"])
