"""The demo's training script, run by `aiarch train` on every rank.

Usage: aiarch train train_fraud.py --nproc 2 -- DATA.npz MODEL_NAME [EPOCHS]
DATA.npz holds x (float32 rows in MODEL_FEATURES order) and y (0/1 labels).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import aiarch.train
from aiarch.demo.data import MODEL_FEATURES


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (ties share their mean rank)."""
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    data_path, name = sys.argv[1], sys.argv[2]
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    ctx = aiarch.train.context()
    with np.load(data_path) as d:
        x, y = d["x"], d["y"]
    cut = int(len(x) * 0.8)
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        _Standardize(mean, std),
        torch.nn.Linear(len(MODEL_FEATURES), 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 2),
    )
    ddp = ctx.wrap(model)
    train = torch.utils.data.TensorDataset(torch.from_numpy(x[:cut]), torch.from_numpy(y[:cut]))
    loader = ctx.loader(train, batch_size=256)
    opt = torch.optim.Adam(ddp.parameters(), lr=3e-3)
    state = ctx.checkpoint.load_latest()
    start = 0
    if state is not None:
        model.load_state_dict(state.state["model"])
        opt.load_state_dict(state.state["opt"])
        start = state.step
    weight = torch.tensor([1.0, 4.0])  # fraud is rare: weigh it up
    for epoch in ctx.epochs(epochs, start=start):
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(ddp(xb), yb, weight=weight)
            loss.backward()
            opt.step()
            epoch.record(loss.item(), len(xb))
        ctx.checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict()}, epoch.index + 1)
    model.eval()
    with torch.no_grad():
        scores = torch.softmax(model(torch.from_numpy(x[cut:])), 1)[:, 1].numpy()
    metrics = {
        "auc": auc(scores, y[cut:]),
        "accuracy": float(((scores > 0.5) == y[cut:]).mean()),
    }
    ctx.register(
        name,
        model,
        example_input=torch.from_numpy(x[:2]),
        metrics=metrics,
        reference_data=x[:cut],
        feature_names=list(MODEL_FEATURES),
        params={"epochs": epochs, "hidden": 32, "lr": 3e-3},
        tags={"task": "fraud"},
        data_hash=x,
    )


class _Standardize(torch.nn.Module):
    """Feature scaling baked into the model, so served inputs are raw feature values."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


if __name__ == "__main__":
    main()
