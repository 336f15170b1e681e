"""Models served with feature inputs in the end-to-end tests."""

from __future__ import annotations

import numpy as np

from aiarch import TensorSpec


def score(features: np.ndarray) -> np.ndarray:
    """Sum of the looked-up features per row."""
    return features.sum(axis=1, keepdims=True)


score.inputs = [TensorSpec("features", "float32", (2,))]  # type: ignore[attr-defined]
score.outputs = [TensorSpec("score", "float32", (1,))]  # type: ignore[attr-defined]


def scaled(features: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Looked-up features times a request-time input."""
    return features * factor


scaled.inputs = [  # type: ignore[attr-defined]
    TensorSpec("features", "float32", (2,)),
    TensorSpec("factor", "float32", (1,)),
]
