"""Small models built in the test session and exported to every format the backends read."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend tests need torch")
pytest.importorskip("onnxruntime", reason="the ONNX backend tests need onnxruntime")

from aiarch.backends.export import export_model  # noqa: E402


def mlp(dims: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    """Linear/ReLU stack, e.g. (64, 256, 256, 16)."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval()


@dataclass
class Exported:
    model: torch.nn.Module
    folder: Path
    pt2: Path
    onnx: Path
    torchscript: Path

    def eager(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="session")
def mlp_files(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    model = mlp((64, 256, 256, 16))
    folder = tmp_path_factory.mktemp("mlp")
    files = export_model(model, torch.randn(4, 64), folder, torchscript=True)
    assert files.onnx is not None and files.torchscript is not None
    return Exported(model, folder, files.pt2, files.onnx, files.torchscript)


@dataclass
class Classifier:
    model: torch.nn.Module
    onnx: Path
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """A 4-class MLP trained on Gaussian blobs in 32 dims (the INT8 accuracy task)."""
    rng = np.random.default_rng(7)
    centers = rng.normal(0, 1.5, size=(4, 32)).astype(np.float32)
    y = rng.integers(0, 4, size=3000)
    x = (centers[y] + rng.normal(0, 1.0, size=(3000, 32))).astype(np.float32)
    model = mlp((32, 128, 128, 4), seed=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:2000]), torch.from_numpy(y[:2000])
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("clf")
    files = export_model(model, torch.from_numpy(x[:2]), folder)
    assert files.onnx is not None
    return Classifier(model, files.onnx, x[:2000], x[2000:], y[2000:])
