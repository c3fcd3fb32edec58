"""The cache log: every call each GPU's cache received in a simulation (``moesim sim
output.cache_log=true`` writes it to ``cache_log.parquet``), so that the replay driver serves the
same sequence again and must count what the simulator counted (:func:`sim.replay.cache.replay_log`,
tests/sim/test_cross_driver.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CacheLog:
    """Opt-in record of every call a GPU's cache received (``output.cache_log``), so that the
    replay driver can serve the same sequence and must count the same (:func:`sim.replay.cache.replay_log`).

    Events per GPU, in order: ``("warm", step, keys, ())`` (weights loaded before serving, not a
    load), ``("access", step, keys, active)``, ``("insert", step, keys, protect)`` (prefetch; the
    ``("active", step, keys, ())`` before it, if any, is its active set),
    ``("begin", request, (), ())``, ``("predict", 0, keys, ())`` and ``("reset", 0, (), ())`` (the
    GPU failed: a fresh cache follows)."""

    def __init__(self) -> None:
        self.events: dict[int, list[tuple[str, int, tuple[int, ...], tuple[int, ...]]]] = {}

    def add(self, gpu: int, kind: str, step: int, keys: Any = (), other: Any = ()) -> None:
        self.events.setdefault(gpu, []).append(
            (kind, int(step), tuple(sorted(int(k) for k in keys)), tuple(sorted(int(k) for k in other))))


def write_cache_log(log: Any, path: Path) -> None:
    """A :class:`CacheLog` as Parquet: one row per event (gpu, kind, step, keys, other)."""
    import pyarrow as pa

    from sim.common.files import atomic_write_table

    rows = [(g, *e) for g in sorted(log.events) for e in log.events[g]]
    table = pa.table({
        "gpu": pa.array([r[0] for r in rows], pa.int32()),
        "kind": pa.array([r[1] for r in rows], pa.string()).dictionary_encode(),
        "step": pa.array([r[2] for r in rows], pa.int64()),
        "keys": pa.array([list(r[3]) for r in rows], pa.list_(pa.int32())),
        "other": pa.array([list(r[4]) for r in rows], pa.list_(pa.int32())),
    })
    atomic_write_table(table, path)


def read_cache_log(path: str | Path) -> dict[int, list[tuple[str, int, tuple, tuple]]]:
    """The events per GPU of a ``cache_log.parquet`` (for :func:`sim.replay.cache.replay_log`)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    out: dict[int, list[tuple[str, int, tuple, tuple]]] = {}
    for g, kind, step, keys, other in zip(t["gpu"], t["kind"], t["step"], t["keys"], t["other"]):
        out.setdefault(int(g), []).append((str(kind), int(step), tuple(keys), tuple(other)))
    return out
