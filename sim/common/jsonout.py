"""Strict JSON for every ``metrics.json``: a value that is not a finite number (NaN, inf: an
undefined mean, a rate over zero time) is written as ``null``, never as the bare ``NaN`` /
``Infinity`` that Python's json writes and strict parsers refuse; ``allow_nan=False`` then
guarantees nothing else slipped through."""

from __future__ import annotations

import math
from typing import Any


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy floats) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    if hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0 and obj.dtype.kind == "f":
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def strict_json(obj: Any, **kw: Any) -> str:
    """``json.dumps`` of ``obj`` with non-finite numbers as null (strict JSON)."""
    import json

    return json.dumps(finite_or_null(obj), allow_nan=False, **kw)
