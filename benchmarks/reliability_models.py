"""Models of bench_reliability.py, loaded by `aiarch serve --model NAME=benchmarks/reliability_models.py:ATTR`.

- `linear`: 8 → 4 float32 matmul with fixed weights, so every answer can be checked exactly.
- `busy`: sleeps BUSY_MS per batch (the GIL released, like a real model on an accelerator): a
  service rate the load generator can exceed without saturating the machine.
- `slow`: sleeps SLOW_MS per batch: keeps the model busy while a deadline runs out.
"""

from __future__ import annotations

import os
import time

import numpy as np

W = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
BUSY_MS = float(os.environ.get("AIARCH_BENCH_BUSY_MS", "4"))
SLOW_MS = float(os.environ.get("AIARCH_BENCH_SLOW_MS", "200"))


def _spec(name: str, shape: tuple[int, ...]) -> dict[str, object]:
    return {"name": name, "dtype": "float32", "shape": shape}


def linear(x: np.ndarray) -> np.ndarray:
    """x @ W, called once per batch."""
    return x @ W


linear.inputs = [_spec("x", (8,))]  # type: ignore[attr-defined]
linear.outputs = [_spec("y", (4,))]  # type: ignore[attr-defined]


def busy(x: np.ndarray) -> np.ndarray:
    """x + 1 after BUSY_MS of (GIL-free) work per batch."""
    time.sleep(BUSY_MS / 1e3)
    return x + 1


busy.inputs = [_spec("x", (2,))]  # type: ignore[attr-defined]
busy.outputs = [_spec("y", (2,))]  # type: ignore[attr-defined]


def slow(x: np.ndarray) -> np.ndarray:
    """x + 1 after SLOW_MS per batch."""
    time.sleep(SLOW_MS / 1e3)
    return x + 1


slow.inputs = [_spec("x", (2,))]  # type: ignore[attr-defined]
slow.outputs = [_spec("y", (2,))]  # type: ignore[attr-defined]
