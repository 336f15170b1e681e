"""`aiarch bench`: open-loop load generation, capacity at a p99 SLO, replicas and sweeps.

The send/receive loop is native (``aiarch._core.LoadGenerator``); this package resolves
targets, synthesizes payloads, searches for capacity and writes the reports. Submodules are
imported on first use so that ``aiarch --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CapacityResult": "capacity",
    "CapacitySettings": "capacity",
    "GeneratorBehindError": "capacity",
    "find_capacity": "capacity",
    "knee_rate": "capacity",
    "replicas_needed": "capacity",
    "LoadSettings": "load",
    "Point": "load",
    "run_http": "load",
    "run_in_process": "load",
    "HttpTarget": "target",
    "open_http_target": "target",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aiarch.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aiarch.bench.{module}"), name)
