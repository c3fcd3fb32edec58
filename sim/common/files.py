"""The ground floor every driver and tool stands on: atomic writes and the input-file reader.

Nothing else in the project writes an output file in place or reads an input file without these:
an output appears whole or not at all (temporary file beside it, then a rename), and an input that
is missing, a directory or empty is a one-line :class:`~sim.common.errors.TraceFormatError` naming it.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sim.common.errors import TraceFormatError


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place; on
    any failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_table(table: Any, path: str | os.PathLike) -> None:
    """Write a pyarrow Table to ``path`` as zstd Parquet via a temporary file and a rename."""
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def cache_dir(name: str, switch: str) -> Path | None:
    """The folder of the on-disk cache ``name``: ``$MOESIM_CACHE_DIR/<name>``, else
    ``$XDG_CACHE_HOME/moesim/<name>``, else ``~/.cache/moesim/<name>``; None when the environment
    variable ``switch`` is ``off``, ``0``, ``false`` or ``no``."""
    if os.environ.get(switch, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    if os.environ.get("MOESIM_CACHE_DIR"):
        return Path(os.environ["MOESIM_CACHE_DIR"]) / name
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moesim" / name


def read_nonempty(path: str | os.PathLike) -> bytes:
    """The bytes of an input file; a clear error when it is missing, a directory or empty."""
    path = Path(path)
    if not path.exists():
        raise TraceFormatError(f"{path}: no such file")
    if path.is_dir():
        raise TraceFormatError(f"{path}: is a directory, expected a file")
    data = path.read_bytes()
    if not data.strip():
        raise TraceFormatError(f"{path}: file is empty")
    return data


def require_file(path: str | os.PathLike | None, key: str,
                 what: str = "a routing trace written by 'moesim trace import'") -> Path:
    """``path`` named by config ``key`` as an existing regular file, else a one-line error that
    names the key (``what`` says what the file should be)."""
    if path is None or str(path) in ("", "???"):
        raise TraceFormatError(f"{key} is empty; give {key}=FILE ({what})")
    p = Path(path)
    if not p.exists():
        raise TraceFormatError(f"{key}={path}: no such file ({what})")
    if p.is_dir():
        raise TraceFormatError(f"{key}={path}: is a directory, expected a file ({what})")
    return p


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (restored afterwards). The simulator and the replay
    allocate millions of short-lived lists and sets and make no reference cycles in their loops;
    the collector's passes over them cost 5-20 % of the run."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
