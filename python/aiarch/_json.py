"""Strict JSON for what users parse: RFC 8259 has no Infinity or NaN."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite"]


def finite(o: Any) -> Any:
    """`o` with every non-finite float (inf, -inf, nan) in nested dicts, lists and tuples
    replaced by None; objects with `to_dict()` are converted first; anything else as is."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    if hasattr(o, "to_dict"):
        return finite(o.to_dict())
    return o
