"""A small training script for retraining runs: reads the run's train/holdout Parquet
(`aiarch.retrain.script_context()`), fits a logistic model on the feature columns, registers
it with its holdout AUC and the run's lineage tags. --auc forces the recorded metric (to make a
candidate good or bad on purpose), --rescore also scores production on the holdout, --fail exits
1, --hang sleeps past any timeout."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq
import torch

import aiarch.train
from aiarch.monitor.feedback import quality
from aiarch.retrain import script_context


def features(table: object) -> np.ndarray:
    cols = [c for c in table.column_names if ":" in c] or ["prediction"]  # type: ignore[attr-defined]
    return np.column_stack([table[c].to_numpy(zero_copy_only=False) for c in cols]).astype(  # type: ignore[index]
        np.float32
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--auc", type=float, default=None)
    p.add_argument("--fail", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--rescore", action="store_true", help="score production on the holdout too")
    args = p.parse_args()
    if args.fail:
        print("training data rejected on purpose", file=sys.stderr)
        sys.exit(1)
    if args.hang:
        time.sleep(600)
    rc = script_context()
    assert rc is not None, "started outside a retraining run"
    ctx = aiarch.train.context()
    train, holdout = pq.read_table(rc.train_path), pq.read_table(rc.holdout_path)
    x, y = features(train), train["label"].to_numpy().astype(np.float32)
    model = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt).squeeze(1), yt)
        loss.backward()
        opt.step()
    x_holdout, y_holdout = features(holdout), holdout["label"].to_numpy()

    def evaluate(predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
        scores = np.asarray(predict(x_holdout), np.float64).reshape(len(x_holdout), -1)[:, 0]
        return {"auc": float(quality("auc", scores, y_holdout) or 0.0)}

    def candidate(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    metrics = evaluate(candidate)
    if args.auc is not None:
        metrics["auc"] = args.auc
    if args.rescore:
        metrics.update(rc.score_production(evaluate))
    ctx.register(
        rc.model,
        model,
        example_input=xt[:4],
        metrics=metrics,
        tags=rc.tags,
        params={"rows": train.num_rows, "holdout_rows": holdout.num_rows},
        onnx=False,
    )


if __name__ == "__main__":
    main()
