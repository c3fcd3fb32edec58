"""The policy registries: a name -> a class, and a policy's typed arguments checked on the way in.

Each registered class declares ``Config``, a dataclass of its user-settable arguments (types and
defaults); a policy without any uses :class:`NoArgs`. ``Registry.make(name, **kwargs)`` takes the
arguments its driver supplies (``driver_args``: the cache's ``capacity`` and ``num_keys``, ...)
apart from the user's, checks the user's against the policy's ``Config`` (an unknown name or a
value of the wrong type is one :class:`ConfigError` line naming the policy and what it accepts),
and builds ``cls(**driver, cfg=Config(**user))``.
"""

from __future__ import annotations

import dataclasses
import importlib
import numbers
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from sim.common.errors import ConfigError

P = TypeVar("P")


@dataclasses.dataclass(frozen=True)
class NoArgs:
    """The config of a policy that takes no user arguments."""


class Registry(Generic[P]):
    """Maps a name to a policy class; unknown names are a ConfigError listing the known ones."""

    def __init__(self, kind: str, driver_args: tuple[str, ...] = ()) -> None:
        self.kind = kind
        #: the constructor arguments the driver supplies (never the user's to set)
        self.driver_args = driver_args
        self._classes: dict[str, type[P]] = {}

    def register(self, name: str) -> Callable[[type[P]], type[P]]:
        def deco(cls: type[P]) -> type[P]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} policy {name!r} registered twice")
            cfg = getattr(cls, "Config", None)
            if cfg is None or not dataclasses.is_dataclass(cfg):
                raise TypeError(f"{self.kind} policy {name!r}: Config must be a dataclass")
            self._classes[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> type[P]:
        _load_all()
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            raise ConfigError(f"unknown {self.kind} policy {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        _load_all()
        return sorted(self._classes)

    def config(self, name: str, **user: Any) -> Any:
        """The policy's ``Config`` built from the user's arguments, each checked by name and type."""
        cls = self.get(name)
        cfg_cls = cls.Config  # type: ignore[attr-defined]
        hints = typing.get_type_hints(cfg_cls)
        known = {f.name: f for f in dataclasses.fields(cfg_cls) if f.init}
        out: dict[str, Any] = {}
        for key, value in user.items():
            if key not in known:
                raise ConfigError(f"{self.kind} policy {name!r} has no argument {key!r}; it accepts: "
                                  f"{self.accepts(name)}")
            ok, v = _coerce(value, hints[key])
            if not ok:
                raise ConfigError(f"{self.kind} policy {name!r} argument {key}={value!r}: expected "
                                  f"{_type_name(hints[key])}")
            out[key] = v
        return cfg_cls(**out)

    def accepts(self, name: str) -> str:
        """``period: int = 40, window: int = 40`` (or ``(none)``): the user's arguments."""
        cfg_cls = self.get(name).Config  # type: ignore[attr-defined]
        hints = typing.get_type_hints(cfg_cls)
        parts = []
        for f in dataclasses.fields(cfg_cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "?")
            parts.append(f"{f.name}: {_type_name(hints[f.name])} = {default!r}")
        return ", ".join(parts) or "(none)"

    def make(self, name: str, **kwargs: Any) -> P:
        """Build policy ``name``: the driver's arguments (``driver_args``) as given, the rest
        checked against the policy's ``Config``."""
        driver = {k: kwargs.pop(k) for k in self.driver_args if k in kwargs}
        cfg = self.config(name, **kwargs)
        return self.get(name)(**driver, cfg=cfg)  # type: ignore[call-arg]


def _type_name(tp: Any) -> str:
    """A Config field's type as its error messages name it: a class by its name (a parametrized
    generic such as ``list[int]`` is no class from Python 3.11 on), anything else as Python
    prints it, less the ``typing.`` prefix."""
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(whether ``value`` fits type ``tp``, the value to use: ints widened for float fields)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            ok, v = _coerce(value, arm)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if tp is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    if isinstance(origin, type):  # a parametrized generic: its class, the items unchecked
        if issubclass(origin, Mapping):
            return isinstance(value, Mapping), value
        if issubclass(origin, Sequence):
            return isinstance(value, Sequence) and not isinstance(value, str), value
        return isinstance(value, origin), value  # (isinstance refuses ``set[int]`` itself)
    return isinstance(value, tp), value


_loaded = False  # every policy module imported (the folders walked once a process)


def _load_all() -> None:
    """Import every policy module (in the kind folders too) so that its @register runs; modules
    whose name starts with ``_`` are helpers and ``base`` is the interfaces (idempotent: the
    folders are walked once, not at every look-up)."""
    global _loaded
    if _loaded:
        return
    # the folder this module lies in is the sim.policies package (its own path, not an import of
    # the package: that would be an import loop, package -> base -> _registry -> package)
    for info in pkgutil.walk_packages([str(Path(__file__).resolve().parent)], "sim.policies."):
        leaf = info.name.rsplit(".", 1)[-1]
        if not info.ispkg and leaf != "base" and not leaf.startswith("_"):
            importlib.import_module(info.name)
    _loaded = True
