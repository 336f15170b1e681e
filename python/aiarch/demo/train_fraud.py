"""The demo's training script, run by `aiarch train` on every rank.

Usage: aiarch train train_fraud.py --nproc 2 -- DATA.npz MODEL_NAME [EPOCHS]
DATA.npz holds x (float32 rows in MODEL_FEATURES order) and y (0/1 labels).

Started by a retraining run (`aiarch retrain`), DATA is instead `--inputs REQUESTS.parquet`:
the inputs the service sent, by request id (`id` plus one column per MODEL_FEATURES); the run's
labelled rows (`aiarch.retrain.script_context()`: train and holdout Parquet, newest rows held
out) are joined with them by request id, and the version is registered with the run's lineage.
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


def labelled_requests(inputs_path: str) -> tuple[np.ndarray, np.ndarray, int, dict[str, str]]:
    """x, y, the split point (holdout after it) and the run's lineage tags, from a retraining
    run's labelled rows joined by request id with the logged inputs."""
    import pyarrow.parquet as pq

    from aiarch.retrain import script_context

    run = script_context()
    if run is None:
        sys.exit("--inputs is for a retraining run (aiarch retrain); none started this script")
    logged = pq.read_table(inputs_path).to_pydict()
    row_of = {rid: i for i, rid in enumerate(logged["id"])}
    features = np.column_stack([np.asarray(logged[f], np.float32) for f in MODEL_FEATURES])
    parts = []
    for path in (run.train_path, run.holdout_path):
        rows = pq.read_table(path, columns=["id", "label"]).to_pydict()
        keep = [(row_of[r], lab) for r, lab in zip(rows["id"], rows["label"]) if r in row_of]
        parts.append(([i for i, _ in keep], [lab for _, lab in keep]))
    (train_rows, train_y), (hold_rows, hold_y) = parts
    x = features[train_rows + hold_rows]
    y = np.asarray(train_y + hold_y, np.int64)
    return x, y, len(train_rows), run.tags


def main() -> None:
    if sys.argv[1] == "--inputs":
        x, y, cut, lineage = labelled_requests(sys.argv[2])
        name, rest = sys.argv[3], sys.argv[4:]
        batch_size = 64  # a window of a few hundred labelled rows: more steps per epoch
    else:
        with np.load(sys.argv[1]) as d:
            x, y = d["x"], d["y"]
        cut, lineage = int(len(x) * 0.8), {}
        name, rest = sys.argv[2], sys.argv[3:]
        batch_size = 256
    epochs = int(rest[0]) if rest else 8
    # A 32-wide MLP on small batches: more threads per process only contend for the cores
    # (torchrun sets this for several processes; a retraining run starts one).
    torch.set_num_threads(1)
    ctx = aiarch.train.context()
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
    loader = ctx.loader(train, batch_size=batch_size)
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
        params={"epochs": epochs, "batch_size": batch_size, "hidden": 32, "lr": 3e-3},
        tags={"task": "fraud", **lineage},
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
