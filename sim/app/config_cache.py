"""Hydra's composed config, cached on disk: a warm single run skips the composition (about 0.4 s of
Hydra merging YAML files into the schema) and the schema's registration.

Content-addressed: the file's name is a SHA-256 over everything the composition reads
(:func:`config_key`): the config name, the overrides in order (a plain ``hydra.run.dir=DIR`` as a
placeholder, see below), the run mode's arguments, the working directory, the job's name, the
versions of Python, Hydra (its own configs and schemas) and OmegaConf, each config source of
the search path (a ``pkg://`` or ``file://`` folder: every file's path and bytes; ``conf`` is
one), the source of every loaded module of the project's packages (:data:`PROJECT_PACKAGES`:
the schema's dataclasses and whatever they read) and of Hydra's plugins, and the ConfigStore's
entries not Hydra's or ours; and :data:`FORMAT`. A search path with another kind of source, or
one that ``hydra.searchpath`` extends (an override, or a config: the composition reads those
folders itself), is not cached. A changed file, override or schema is a new key: never a stale
config. (The modules loaded when the key is made are the same for every process that runs the
same command; a second run in one process may have loaded more: a miss, then a hit.)

``hydra.run.dir=DIR`` with a plain path value (:data:`PLAIN_DIR`: Hydra's parser gives back the
text itself) enters the key as a placeholder, so a run into a new folder reuses the config:
on a hit, ``hydra.run.dir`` and that override's line in ``hydra.overrides.hydra`` are set to the
run's, the two places the value reaches in a composition (tests/sim/app/test_config_cache.py
compares them with a composition). A hit whose ``hydra.job.env_copy`` variables differ from
the environment's is a miss.

The file holds the key, a SHA-256 of the payload and the payload: the config pickled, read
back by an unpickler that loads only classes of OmegaConf, Hydra and the project, typing's
generic names and builtin containers (:class:`_Unpickler`); a file that fails to read, names
another key or does not match its digest is ignored and rewritten, never trusted. A
composition that warns is not stored (a hit would not warn). Written atomically
(:func:`sim.common.files.atomic_write`); at most :data:`MAX_FILES` files are kept (the oldest
go). Only plain single runs use it (:func:`sim.app.hydra_app.run_hydra`: no ``-m``, no flags).

Where: ``$MOESIM_CACHE_DIR/configs``, else ``$XDG_CACHE_HOME/moesim/configs``, else
``~/.cache/moesim/configs``; ``MOESIM_CONFIG_CACHE=off`` (or ``0``, ``false``, ``no``) turns it
off. A directory that cannot be written is no error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sim.common.files import atomic_write_bytes
from sim.common.files import cache_dir as shared_cache_dir

#: bump when the file layout or what the key covers changes
FORMAT = 1
#: the project's top-level packages (pyproject.toml's ``packages.find``)
PROJECT_PACKAGES = ("sim", "traces", "realrun", "kernels", "analysis", "conf")
#: a ``hydra.run.dir`` value that Hydra's override parser returns as its own text: a path of
#: these characters with a ``/`` in it (several tokens, so never a number, bool or null)
PLAIN_DIR = re.compile(r"[A-Za-z0-9_./@%+:-]*/[A-Za-z0-9_./@%+:-]*")
#: the most files the folder keeps
MAX_FILES = 256
_MAGIC = b"moesim-config-cache\n"
_RUN_DIR = "hydra.run.dir="


def cache_dir() -> Path | None:
    """The config cache's folder, or None when ``MOESIM_CONFIG_CACHE`` turns it off."""
    return shared_cache_dir("configs", "MOESIM_CONFIG_CACHE")


def _tree_digest(h: Any, folder: str) -> bool:
    """Add every file under ``folder`` (its path below it and its bytes, in sorted order;
    ``__pycache__`` left out) to ``h``; False when ``folder`` is not a directory."""
    if not os.path.isdir(folder):
        return False
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            h.update(f"{rel}/{name}\0{len(data)}\0".encode() + data)
    return True


def _sources_digest(h: Any, names: list[str]) -> None:
    """Add each loaded module's name and the bytes of its file to ``h``."""
    for name in names:
        f = getattr(sys.modules.get(name), "__file__", None)
        data = b""
        if f:
            with open(f, "rb") as fh:
                data = fh.read()
        h.update(f"{name}\0{len(data)}\0".encode() + data)


def _search_path_digest(h: Any, loader: Any) -> bool:
    """Add each config source of the loader's search path to ``h``; False when one cannot be
    hashed (not Hydra's own configs, a ``pkg://`` package, a ``file://`` folder or the store)."""
    from hydra import __version__ as hydra_version

    for el in loader.config_search_path.get_path():
        scheme, sep, where = str(el.path).partition("://")
        h.update(f"{el.provider}\0{el.path}\0".encode())
        if not sep:
            return False
        if scheme == "structured":
            continue  # the ConfigStore: the schema's source and _store_entries
        if scheme == "pkg" and where == "hydra.conf":
            h.update(hydra_version.encode())
            continue
        if scheme == "pkg":
            try:
                spec = find_spec(where)
            except (ImportError, ValueError):
                return False
            places = list(spec.submodule_search_locations or []) if spec else []
            if not places or not all(_tree_digest(h, p) for p in places):
                return False
        elif scheme == "file":
            if not _tree_digest(h, where):
                return False
        else:
            return False
    return True


def _store_entries() -> list[str]:
    """The ConfigStore's entries not Hydra's and not of the project's classes (a plugin's
    schemas: their sources are hashed with the plugins'), as ``path provider class``."""
    from hydra.core.config_store import ConfigStore

    out: list[str] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        for name in sorted(d):
            node = d[name]
            if isinstance(node, dict):
                walk(node, f"{prefix}{name}/")
                continue
            kind = getattr(getattr(node.node, "_metadata", None), "object_type", None)
            module = getattr(kind, "__module__", "") or ""
            if node.provider == "hydra" or module.partition(".")[0] in PROJECT_PACKAGES:
                continue
            out.append(f"{prefix}{name} {node.provider} {module}.{getattr(kind, '__qualname__', '')}")

    walk(ConfigStore.instance().repo, "")
    return out


def config_key(loader: Any, config_name: str | None, overrides: list[str], run_mode: Any,
               from_shell: bool, validate_sweep_overrides: bool) -> tuple[str, int | None] | None:
    """The content address of the composition (see the module doc) and the position of the
    plain ``hydra.run.dir`` override among ``overrides`` (None: none, or more than one); None
    when the composition cannot be cached."""
    import omegaconf
    from hydra import __version__ as hydra_version
    from hydra import version
    from hydra.core.utils import JobRuntime

    if any("hydra.searchpath" in o for o in overrides):
        return None  # folders the search path reads only inside the composition
    dirs = [i for i, o in enumerate(overrides) if o.startswith(_RUN_DIR)]
    at = dirs[0] if len(dirs) == 1 and PLAIN_DIR.fullmatch(overrides[dirs[0]][len(_RUN_DIR):]) else None
    keyed = [_RUN_DIR + "\0" if i == at else o for i, o in enumerate(overrides)]
    h = hashlib.sha256()
    what = {"format": FORMAT, "config_name": config_name, "overrides": keyed,
            "run_mode": str(run_mode), "from_shell": bool(from_shell),
            "validate_sweep_overrides": bool(validate_sweep_overrides), "cwd": os.getcwd(),
            "job": JobRuntime.instance().get("name"),
            "python": sys.version, "hydra": hydra_version, "version_base": str(version.getbase()),
            "omegaconf": omegaconf.__version__, "store": _store_entries()}
    h.update(json.dumps(what, sort_keys=True).encode() + b"\0")
    project = sorted(n for n in list(sys.modules) if n.partition(".")[0] in PROJECT_PACKAGES
                     or n.startswith("hydra_plugins."))
    try:
        if not _search_path_digest(h, loader):
            return None
        _sources_digest(h, project)
    except OSError:
        return None
    return h.hexdigest(), at


class _Unpickler(pickle.Unpickler):
    """Loads classes of OmegaConf, Hydra and the project (no function of theirs), typing's
    generic names, builtin containers and scalars: nothing a stored config needs runs code."""

    _BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "int", "float",
                           "bool", "bytes", "complex", "object", "type"})
    _TYPING = frozenset({"Any", "Dict", "List", "Tuple", "Optional", "Union", "Set", "FrozenSet",
                         "Mapping", "Sequence", "MutableMapping", "MutableSequence"})

    def find_class(self, module: str, name: str) -> Any:
        top = module.partition(".")[0]
        if ((module == "builtins" and name in self._BUILTINS)
                or (module == "typing" and name in self._TYPING)
                or (module == "collections" and name in ("defaultdict", "OrderedDict"))
                or (module in ("_operator", "operator") and name == "getitem")):
            return super().find_class(module, name)
        if top in ("omegaconf", "hydra", "hydra_plugins", *PROJECT_PACKAGES):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not loaded from the config cache")


def read_config(path: Path, key: str) -> dict[str, Any] | None:
    """The payload stored at ``path`` under ``key``, or None when the file is missing or not to
    be trusted (unreadable, another key, a wrong digest, a class it may not load)."""
    try:
        data = path.read_bytes()
        head, body = data[:len(_MAGIC) + 130], data[len(_MAGIC) + 130:]
        if head != _MAGIC + key.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n":
            return None
        payload = _Unpickler(io.BytesIO(body)).load()
        return payload if isinstance(payload, dict) and "cfg" in payload else None
    except Exception:  # noqa: BLE001 - any unreadable file is a miss, never an error
        return None


def write_config(folder: Path, key: str, payload: dict[str, Any]) -> None:
    """Store ``payload`` under ``key`` atomically, with its digest; the oldest files beyond
    :data:`MAX_FILES` go."""
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    data = _MAGIC + key.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    atomic_write_bytes(data, folder / f"{key}.pkl")
    files = list(folder.glob("*.pkl"))
    if len(files) > MAX_FILES:
        files.sort(key=lambda p: p.stat().st_mtime_ns)
        for p in files[:len(files) - MAX_FILES]:
            p.unlink(missing_ok=True)


def _served(payload: dict[str, Any], overrides: list[str], at: int | None) -> Any:
    """The cached config for this run: its ``hydra.run.dir`` and override line set to the run's;
    None when the cached one does not fit (its environment copies differ)."""
    cfg = payload["cfg"]
    job = cfg.hydra.job
    if any(job.env_set.get(k) != os.environ.get(k) for k in job.env_copy):
        return None
    if at is not None:
        old = _RUN_DIR + str(payload["run_dir"])
        lines = cfg.hydra.overrides.hydra
        where = [i for i, line in enumerate(lines) if line == old]
        if len(where) != 1 or cfg.hydra.run.dir != payload["run_dir"]:
            return None
        cfg.hydra.run.dir = overrides[at][len(_RUN_DIR):]
        lines[where[0]] = overrides[at]
    return cfg


@contextmanager
def composition_cache(prepare: Callable[[], None], enabled: bool = True) -> Iterator[None]:
    """While inside, Hydra's ``ConfigLoaderImpl.load_configuration`` serves a run-mode
    composition from the cache when it can, else composes (after ``prepare()``: the schema's
    registration, which only a composition needs) and stores the result; not ``enabled``:
    Hydra's own, untouched."""
    if not enabled:
        yield
        return
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.types import RunMode

    real = ConfigLoaderImpl.load_configuration

    def load(self: Any, config_name: str | None, overrides: list[str], run_mode: Any,
             from_shell: bool = True, validate_sweep_overrides: bool = True) -> Any:
        folder = cache_dir()
        found = None
        if folder is not None and run_mode == RunMode.RUN:
            found = config_key(self, config_name, overrides, run_mode, from_shell,
                               validate_sweep_overrides)
        if found is not None:
            payload = read_config(folder / f"{found[0]}.pkl", found[0])
            cfg = _served(payload, overrides, found[1]) if payload is not None else None
            if cfg is not None:
                return cfg
        prepare()
        with warnings.catch_warnings(record=True) as caught:
            cfg = real(self, config_name=config_name, overrides=overrides, run_mode=run_mode,
                       from_shell=from_shell, validate_sweep_overrides=validate_sweep_overrides)
        for w in caught:  # shown as they would have been
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        if found is not None and not caught and not cfg.hydra.searchpath:
            run_dir = str(cfg.hydra.run.dir) if found[1] is not None else None
            try:
                write_config(folder, found[0], {"cfg": cfg, "run_dir": run_dir})
            except Exception:  # noqa: BLE001 - a cache that cannot be written: the run goes on
                pass
        return cfg

    ConfigLoaderImpl.load_configuration = load  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = real  # type: ignore[method-assign]
