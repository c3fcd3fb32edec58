"""The allowed range of every numeric config key, declared once beside its dataclass and checked in
one place before any work.

A schema class is decorated with :func:`ranges` (``@ranges(num_layers=AT_LEAST_1, ...)`` on top of
``@dataclass``); a subclass inherits its parents' ranges and may add or override. Every ``int`` or
``float`` field (also ``Optional[...]`` ones and lists of numbers, checked element by element) must
have one: ``tests/sim/app/test_ranges.py`` walks every app's schema. :func:`check_ranges` walks a
composed config (an OmegaConf node or a dataclass instance) and raises a one-line
:class:`~sim.common.errors.ConfigError` naming the user's key (``cluster.faults[0].time_s``) and
the allowed range. NaN is never allowed; infinity only where a range says so (``inf_ok``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim.common.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """``lo <= v <= hi`` (``<`` where open); ``also``: sentinel values allowed besides
    (``-1``: unset); ``inf_ok``: +inf allowed (``recovery_s``: never)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    inf_ok: bool = False
    also: tuple[float, ...] = ()
    #: what the sentinels or the bound mean, for the message
    note: str = ""

    def ok(self, v: float) -> bool:
        if v in self.also:
            return True
        if math.isnan(v) or (math.isinf(v) and not (self.inf_ok and v > 0)):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and (below or (self.inf_ok and math.isinf(v)))

    def describe(self, integer: bool = False) -> str:
        parts = []
        if self.lo > -math.inf and self.hi < math.inf:
            parts.append(f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                         f"{')' if self.hi_open else ']'}")
        elif self.lo > -math.inf:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        elif self.hi < math.inf:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        kind = "a fraction" if (self.lo, self.hi) == (0, 1) else "an integer" if integer else "a number"
        text = (f"{kind} in " if parts and parts[0][0] in "([" else f"{kind} ") + parts[0] \
            if parts else "a finite number"
        if self.also:
            text += " or " + " or ".join(_num(a) for a in self.also)
        if self.inf_ok:
            text += " (inf allowed)"
        return text + (f" ({self.note})" if self.note else "")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


#: the ranges most keys take
ANY_FINITE = Range()
NONNEG = Range(lo=0)
POSITIVE = Range(lo=0, lo_open=True)
#: a rate whose infinite limit is a meaningful ideal (a free link, an instant kernel)
RATE = Range(lo=0, lo_open=True, inf_ok=True, note="inf: no cost")
AT_LEAST_1 = Range(lo=1)
FRACTION = Range(lo=0, hi=1)  # [0, 1]
OPEN_UNIT = Range(lo=0, hi=1, lo_open=True, hi_open=True)  # (0, 1)
OPEN_FRACTION = Range(lo=0, hi=1, lo_open=True)  # (0, 1]
UNIT_HALF_OPEN = Range(lo=0, hi=1, hi_open=True)  # [0, 1): a dropout, a share that may not be all
#: a seed numpy accepts (numpy.random.default_rng takes non-negative integers)
SEED = Range(lo=0, hi=2**32 - 1)
#: 0 means "all" / "none" / "default"
COUNT_OR_ALL = Range(lo=0, note="0: all")

_ATTR = "__moesim_ranges__"


def ranges(**spec: Range) -> Callable[[type], type]:
    """Class decorator: the ranges of this class's numeric fields (merged over its parents')."""

    def deco(cls: type) -> type:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise TypeError(f"{cls.__name__}: ranges for no such field: {unknown}")
        setattr(cls, _ATTR, {**spec})
        return cls

    return deco


def range_of(cls: type, name: str) -> Range | None:
    """The range of ``cls.name`` (its own, else the nearest parent's)."""
    for klass in cls.__mro__:
        own = klass.__dict__.get(_ATTR)
        if own and name in own:
            return own[name]
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_value(key: str, v: Any, rng: Range) -> None:
    """One value (or a list of them) against its range; a one-line error naming ``key``."""
    if isinstance(v, list | tuple):
        for i, x in enumerate(v):
            check_value(f"{key}[{i}]", x, rng)
        return
    if v is None or not _is_number(v):
        return
    if not rng.ok(float(v)):
        what = " (not a number)" if math.isnan(v) else " (infinite)" if math.isinf(v) else ""
        raise ConfigError(f"{key}={v}{what}; expected {rng.describe(isinstance(v, int))}")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Every numeric key of a composed config (an OmegaConf node or a dataclass instance) that
    has a range, checked; the first out of range is a :class:`ConfigError` naming the key."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        if cfg._is_missing() or cfg._is_none():
            return
        kind = OmegaConf.get_type(cfg)
        items = [(k, cfg._get_node(k)) for k in cfg.keys()]
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        kind = type(cfg)
        items = [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]
    else:
        return
    is_schema = isinstance(kind, type) and dataclasses.is_dataclass(kind)
    for name, node in items:
        key = f"{prefix}{name}"
        if isinstance(node, DictConfig) or (dataclasses.is_dataclass(node) and not isinstance(node, type)):
            check_ranges(node, key + ".")
            continue
        if isinstance(node, ListConfig | list):
            elems = list(node._iter_ex(resolve=False)) if isinstance(node, ListConfig) else node
            if isinstance(node, ListConfig) and (node._is_missing() or node._is_none()):
                continue
            for i, e in enumerate(elems):
                if isinstance(e, DictConfig) or (dataclasses.is_dataclass(e) and not isinstance(e, type)):
                    check_ranges(e, f"{key}[{i}].")
        rng = range_of(kind, str(name)) if is_schema else None
        if rng is None:
            continue
        value = OmegaConf.to_container(node) if isinstance(node, ListConfig) else (
            node._value() if hasattr(node, "_value") else node)
        if isinstance(value, str) and value.startswith("${"):
            value = getattr(cfg, str(name))  # an interpolation: its resolved value
        check_value(key, value, rng)


def numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type, str]]:
    """Every numeric field (int, float, Optional of them, list of them) of a schema and of the
    schemas it nests: ``(dotted key, owning class, field name)``."""
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = typing.get_args(t)
        origin = typing.get_origin(t)
        inner = [a for a in args if a is not type(None)]
        base = inner[0] if origin is typing.Union and len(inner) == 1 else t
        listed = typing.get_origin(base) is list
        if listed:
            base = typing.get_args(base)[0]
        if base in (int, float):
            out.append((prefix + f.name, cls, f.name))
        elif isinstance(base, type) and dataclasses.is_dataclass(base):
            out.extend(numeric_fields(base, f"{prefix}{f.name}{'[0]' if listed else ''}."))
    return out
