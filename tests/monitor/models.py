"""A model the monitor's server tests load with `source = ".../models.py:summed"`."""

from __future__ import annotations

import numpy as np


def summed(x: np.ndarray) -> np.ndarray:
    """float32 [4] → its row sum [1]; called once per batch."""
    with np.errstate(invalid="ignore"):
        return x.sum(axis=1, keepdims=True)


summed.inputs = [{"name": "x", "dtype": "float32", "shape": (4,)}]  # type: ignore[attr-defined]
summed.outputs = [{"name": "y", "dtype": "float32", "shape": (1,)}]  # type: ignore[attr-defined]
