"""Human units for the reports' tables and text: bytes as kB/MB/GB/TB, seconds as us/ms/s,
shares as percentages, counts with thousands separators. The unit of a column comes from its
name (the metric names of ``metrics.json``): ``*bytes*`` is bytes, ``*_s`` / ``*_s.p50`` /
``*_ms`` are times, hit rates, fidelities, SLO attainment and other shares are percentages."""

from __future__ import annotations

import math
from typing import Any

_BYTES = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
_SHARES = ("hit_rate", "slo_attainment", "routing_fidelity", "fidelity", "_share", "share_",
           "precision", "recall", "accuracy")


def human_bytes(v: float) -> str:
    """``4.071e12`` -> ``4.07 TB``; decimal units (1 GB = 1e9 bytes, as the simulator counts)."""
    if v != v:
        return ""
    for unit, scale in _BYTES:
        if abs(v) >= scale:
            return f"{sig(v / scale)} {unit}"
    return f"{v:.0f} B"


def human_seconds(v: float, trim: bool = False) -> str:
    """``0.0312`` -> ``31.2 ms``, ``1.786`` -> ``1.79 s``, ``168.0`` -> ``168 s``; ``trim``
    drops trailing zeros (``2 s``, not ``2.00 s``: for a setting rather than a measurement)."""
    if v != v:
        return ""
    if v == 0:
        return "0 s"
    unit, scale = axis_unit("s", abs(v))
    num = sig(v * scale)
    if trim and "." in num:
        num = num.rstrip("0").rstrip(".")
    return f"{num} {unit}"


def axis_unit(kind: str, top: float) -> tuple[str, float]:
    """(unit, factor) for values of ``kind`` (``bytes`` or ``s``) up to ``top``: the largest
    unit that keeps ``top`` at 1 or above (``("TB", 1e-12)`` for 2.8e13 bytes)."""
    if kind == "bytes":
        for unit, scale in _BYTES:
            if top >= scale:
                return unit, 1 / scale
        return "B", 1.0
    if top and top < 1e-3:
        return "us", 1e6
    if top and top < 1:
        return "ms", 1e3
    return "s", 1.0


def percent(v: float) -> str:
    """A share in [0, 1] as a percentage: ``0.3218`` -> ``32.2 %``."""
    return "" if v != v else f"{v * 100:.1f} %"


def sig(v: float) -> str:
    """Three significant figures, no exponent for the magnitudes reports show."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{digits}f}"


def unit_of(column: Any) -> str | None:
    """``bytes``, ``s``, ``ms``, ``share`` or None (a plain number), from a column's name."""
    name = str(column).lower()
    if "bytes" in name:
        return "bytes"
    head = name.split(".")[0]
    if "per_s" in name or head.endswith("_rps") or name.endswith("rate_rps"):
        return None
    if head.endswith("_ms"):
        return "ms"
    if head.endswith("_s") or name.endswith("_s"):
        return "s"
    if any(t in name for t in _SHARES):
        return "share"
    return None


def format_cell(column: Any, v: Any) -> str:
    """One table cell of ``column`` in human units (an empty cell for a missing value)."""
    if v is None or isinstance(v, float) and v != v:
        return ""
    if isinstance(v, bool) or not isinstance(v, int | float):
        try:
            import numpy as np

            if isinstance(v, np.integer | np.floating):
                return format_cell(column, v.item())
        except ImportError:  # pragma: no cover
            pass
        return str(v)
    unit = unit_of(column)
    if unit == "bytes":
        return human_bytes(float(v))
    if unit == "s":
        return human_seconds(float(v))
    if unit == "ms":
        return human_seconds(float(v) / 1e3)
    if unit == "share":
        return percent(float(v))
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:.4g}"
