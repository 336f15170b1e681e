"""Models the serving tests load with `--model NAME=tests/serving/models.py:ATTR`."""

from __future__ import annotations

import time

import numpy as np

_rng = np.random.default_rng(0)
_W = _rng.standard_normal((8, 4)).astype(np.float32)


def linear(x: np.ndarray) -> np.ndarray:
    """8 → 4 float32 matmul; called once per batch."""
    return x @ _W


def _spec(name: str, dtype: str, shape: tuple[int, ...]) -> dict[str, object]:
    # The runtime accepts mappings as TensorSpecs; this file then imports without the core.
    return {"name": name, "dtype": dtype, "shape": shape}


linear.inputs = [_spec("x", "float32", (8,))]  # type: ignore[attr-defined]
linear.outputs = [_spec("y", "float32", (4,))]  # type: ignore[attr-defined]


def half_identity(x: np.ndarray) -> np.ndarray:
    """float16 [8] in, the same values out: what a request's numbers became."""
    return x.copy()


half_identity.inputs = [_spec("x", "float16", (8,))]  # type: ignore[attr-defined]
half_identity.outputs = [_spec("y", "float16", (8,))]  # type: ignore[attr-defined]


def two_io(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two inputs (int32 [3], float64 [2]) → sum of a (int64 [1]) and b * 2 (float64 [2])."""
    return a.sum(axis=1, keepdims=True).astype(np.int64), b * 2


two_io.inputs = [_spec("a", "int32", (3,)), _spec("b", "float64", (2,))]  # type: ignore[attr-defined]
two_io.outputs = [_spec("sum", "int64", (1,)), _spec("double", "float64", (2,))]  # type: ignore[attr-defined]


def slow(x: np.ndarray) -> np.ndarray:
    """Sleeps 200 ms per batch: lets tests fill queues, expire deadlines and cancel."""
    time.sleep(0.2)
    return x + 1


slow.inputs = [_spec("x", "float32", (2,))]  # type: ignore[attr-defined]


def failing(x: np.ndarray) -> np.ndarray:
    """Raises on any batch with a negative value (warm-up uses zeros, so it loads)."""
    if (x < 0).any():
        raise ValueError("negative input")
    return x


failing.inputs = [_spec("x", "float32", (2,))]  # type: ignore[attr-defined]


def scorer(x: np.ndarray) -> np.ndarray:
    """A binary classifier's score: the first feature, as given (float32 [2] → float32 [1])."""
    return x[:, :1].copy()


scorer.inputs = [_spec("x", "float32", (2,))]  # type: ignore[attr-defined]
scorer.outputs = [_spec("score", "float32", (1,))]  # type: ignore[attr-defined]
