"""The on-disk caches' shared file handling (:mod:`sim.serving.pool_cache`,
:mod:`traces.workload_cache`): a content address's code part (the source of the modules that
decide the contents) and a ``.npz`` file (no pickles) holding named arrays, its key and a SHA-256
of its arrays, written atomically and read back only when key and digest match."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from sim.common.files import atomic_write


def source_digest(modules: Iterable[str]) -> str:
    """SHA-256 over each module's name and source, found without importing it (a cache hit then
    needs none of them loaded); a module not found counts as empty."""
    h = hashlib.sha256()
    for name in modules:
        spec = find_spec(name)
        h.update(name.encode() + b"\0" + Path(spec.origin if spec else "").read_bytes() + b"\0")
    return h.hexdigest()


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays by name: each one's name, dtype, shape and bytes (the contiguous
    array's own buffer, the bytes ``tobytes`` would copy)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a)
    return h.hexdigest()


def read_npz(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path`` under ``key`` (``key`` among them), or None when the file
    cannot be read, names another key or does not match its digest."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arr = {k: z[k] for k in z.files}
        digest = str(arr.pop("digest"))
        if str(arr["key"]) != key or arrays_digest(arr) != digest:
            return None
        return arr
    except Exception:  # noqa: BLE001 - any unreadable file is a miss, never an error
        return None


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Store ``arrays`` (their ``key`` included) at ``path`` atomically, with their digest."""
    arr = {**arrays, "digest": np.array(arrays_digest(arrays))}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arr)

    atomic_write(path, write)
