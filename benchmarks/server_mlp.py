"""The reference model of bench_server.py: MLP 64 → 256 → ReLU → 256 → ReLU → 16, float32.

Loaded by `aiarch serve --model mlp=benchmarks/server_mlp.py:mlp` and by the FastAPI baseline.
torch runs single-threaded in the server (`torch.set_num_threads(1)`), weights from seed 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# The runtime hands the model read-only views of its batch buffer; the model never writes them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

torch.manual_seed(0)
torch.set_num_threads(1)

net = torch.nn.Sequential(
    torch.nn.Linear(64, 256),
    torch.nn.ReLU(),
    torch.nn.Linear(256, 256),
    torch.nn.ReLU(),
    torch.nn.Linear(256, 16),
).eval()


def mlp(x: np.ndarray) -> np.ndarray:
    """One call per batch: x float32 (rows, 64) → (rows, 16)."""
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


mlp.inputs = [{"name": "input0", "dtype": "float32", "shape": (64,)}]  # type: ignore[attr-defined]
mlp.outputs = [{"name": "output0", "dtype": "float32", "shape": (16,)}]  # type: ignore[attr-defined]
