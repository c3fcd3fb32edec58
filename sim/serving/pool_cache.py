"""The generated routing pool, cached on disk: sampled once per (generator parameters, tasks, pool
size, tokens per entry, generator state) and read back by every later run.

Content-addressed: the file's name is a SHA-256 over everything that determines the pool (the
parameter set's JSON, the tasks in order, ``trace.pool_size``, ``trace.pool_tokens``, the random
generator's state before sampling, numpy's version, the source of the modules that sample and
assemble it) and :data:`FORMAT`; the same seed gives the same key and the same bytes. The file
(``.npz``, no pickles) holds the pool, the generator's state after sampling (restored on a hit, so
a run that draws from the generator afterwards draws the same numbers) and a SHA-256 of its
contents: a file that fails to read, names another key or does not match its digest is ignored
and rewritten, never trusted. Written atomically (:func:`sim.common.files.atomic_write`).

Where: ``$MOESIM_CACHE_DIR/pools``, else ``$XDG_CACHE_HOME/moesim/pools``, else
``~/.cache/moesim/pools``. ``MOESIM_POOL_CACHE=off`` (or ``0``, ``false``, ``no``) turns it off. A
directory that cannot be written is no error: the pool is sampled as without a cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sim.common.files import cache_dir as shared_cache_dir
from sim.common.npz_cache import read_npz, source_digest, write_npz

#: bump when the file layout or what the key covers changes
FORMAT = 1
#: the modules whose code decides the pool's contents (their source is part of the key)
SOURCES = ("traces.synth", "traces.synth_sample", "traces.synth_params", "traces.format",
           "sim.serving.binding")


def cache_dir() -> Path | None:
    """The pool cache's folder, or None when ``MOESIM_POOL_CACHE`` turns it off."""
    return shared_cache_dir("pools", "MOESIM_POOL_CACHE")


def pool_key(generator: str, params_raw: dict[str, Any], tasks: list[str], pool_size: int,
             pool_tokens: int, rng: np.random.Generator) -> str:
    """The content address of a generated pool (see the module doc)."""
    what = {"format": FORMAT, "generator": generator, "params": params_raw, "tasks": list(tasks),
            "pool_size": int(pool_size), "pool_tokens": int(pool_tokens),
            "rng": rng.bit_generator.state, "numpy": np.__version__, "code": source_digest(SOURCES)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _arrays(pool: Any, key: str, rng_after: dict[str, Any]) -> dict[str, np.ndarray]:
    ex = pool.experts
    small = ex.size == 0 or (int(ex.min()) >= 0 and int(ex.max()) < 256)
    return {"key": np.array(key), "experts": ex.astype(np.uint8) if small else ex,
            "offsets": pool.offsets.astype(np.int64), "lengths": pool.lengths.astype(np.int64),
            "tasks": np.array(list(pool.tasks), dtype=str), "source": np.array(pool.source),
            "rng": np.array(json.dumps(rng_after, sort_keys=True))}


def read_pool(path: Path, key: str, pool_cls: Any) -> tuple[Any, dict[str, Any]] | None:
    """The pool (a ``pool_cls``: :class:`sim.serving.binding.RoutingPool`) stored at ``path``
    under ``key`` and the generator state after it, or None when the file is missing or not to
    be trusted (unreadable, another key, a wrong digest, arrays that do not fit together)."""
    arr = read_npz(path, key)
    if arr is None:
        return None
    try:
        ex, off, ln = arr["experts"], arr["offsets"], arr["lengths"]
        if ex.ndim != 3 or off.shape != ln.shape or len(arr["tasks"]) != len(off) or (
                len(off) and (off.min() < 0 or int((off + ln).max()) > len(ex))):
            return None
        pool = pool_cls(experts=ex.astype(np.int16), offsets=off, lengths=ln,
                           tasks=[str(t) for t in arr["tasks"].tolist()], source=str(arr["source"]))
        return pool, json.loads(str(arr["rng"]))
    except Exception:  # noqa: BLE001 - any unreadable file is a miss, never an error
        return None


def write_pool(path: Path, key: str, pool: Any, rng_after: dict[str, Any]) -> None:
    """Store ``pool`` at ``path`` atomically, with its key, the generator state and a digest."""
    write_npz(path, _arrays(pool, key, rng_after))


def cached_pool(key: str, rng: np.random.Generator, make: Callable[[], Any], pool_cls: Any) -> Any:
    """The pool under ``key`` from the cache (``rng`` set to the state sampling it left), or
    ``make()`` (which draws from ``rng``), stored for the next run."""
    folder = cache_dir()
    if folder is None:
        return make()
    path = folder / f"{key}.npz"
    hit = read_pool(path, key, pool_cls) if path.exists() else None
    if hit is not None:
        pool, state = hit
        rng.bit_generator.state = state
        return pool
    pool = make()
    try:
        write_pool(path, key, pool, rng.bit_generator.state)
    except OSError:  # a cache that cannot be written: the run goes on without it
        pass
    return pool
