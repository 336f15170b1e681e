"""The training script that bench_train.py launches (under aiarch train and under torchrun).

The demo-sized MLP (32 features → 128 → 64 → 1, binary cross-entropy) on a synthetic
fraud-like data set. The main rank writes --out JSON: when every rank had joined the
process group (time.time(), for start-up), and one row per epoch (samples/s).
--startup-only exits right after joining.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import aiarch.train

FEATURES = 32


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--startup-only", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    ctx = aiarch.train.context()
    ctx.barrier()
    ready = time.time()
    result: dict = {"ready": ready, "world_size": ctx.world_size, "device": str(ctx.device)}
    if not args.startup_only:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.rows, FEATURES, generator=g)
        y = (x[:, :4].sum(1) + 0.5 * torch.randn(args.rows, generator=g) > 1.5).float()
        torch.manual_seed(0)
        model = ctx.wrap(
            torch.nn.Sequential(
                torch.nn.Linear(FEATURES, 128),
                torch.nn.ReLU(),
                torch.nn.Linear(128, 64),
                torch.nn.ReLU(),
                torch.nn.Linear(64, 1),
            )
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = ctx.loader(TensorDataset(x, y), args.batch_size)
        for epoch in ctx.epochs(args.epochs):
            for xb, yb in loader:
                xb, yb = xb.to(ctx.device), yb.to(ctx.device)
                opt.zero_grad(set_to_none=True)
                loss = F.binary_cross_entropy_with_logits(model(xb).squeeze(1), yb)
                loss.backward()
                opt.step()
                epoch.record(loss, len(xb))
        rows = [r for r in ctx.run_dir.progress() if r.get("time", 0) >= ready]
        result["epochs"] = rows
    if ctx.is_main:
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
