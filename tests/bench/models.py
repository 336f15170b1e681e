"""Models for the bench tests, served with `aiarch serve --model NAME=tests/bench/models.py:ATTR`."""

from __future__ import annotations

import time

import numpy as np

SERVICE_S = 0.02
"""Service time of `fixed_service` per batch: with max_batch_size=1 and one instance the
server completes at most 1 / SERVICE_S = 50 requests/s, whatever the load."""


def fixed_service(x: np.ndarray) -> np.ndarray:
    """Sleeps SERVICE_S per batch (releasing the GIL), then returns x + 1."""
    time.sleep(SERVICE_S)
    return x + 1


def fast(x: np.ndarray) -> np.ndarray:
    """Returns x * 2 at once."""
    return x * 2


def _spec(name: str, dtype: str, shape: tuple[int, ...]) -> dict[str, object]:
    return {"name": name, "dtype": dtype, "shape": shape}


fixed_service.inputs = [_spec("x", "float32", (4,))]  # type: ignore[attr-defined]
fast.inputs = [_spec("x", "float32", (4,))]  # type: ignore[attr-defined]
