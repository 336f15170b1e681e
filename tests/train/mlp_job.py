"""A small DDP job for the launcher tests, built on aiarch.train.Pipeline.

Fault switches act only on the first attempt (restart_count == 0) so a restarted job
runs clean: --kill-epoch/--kill-step/--kill-rank SIGKILLs one rank mid-epoch,
--hang-* makes one rank stop answering collectives, --kill-after-register kills a rank
once the model is registered. --meet DIR --meet-count N holds the main rank until N
jobs have started (so the tests know jobs overlap). The main rank writes --out JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import aiarch.train

FEATURES = 16


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    w = torch.randn(FEATURES, generator=g)
    y = ((x @ w + 0.3 * torch.randn(n, generator=g)) > 0).float()
    return x, y


class MlpJob(aiarch.train.Pipeline):
    batch_size = 64
    lr = 0.01

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.epochs = args.epochs
        self.steps_in_epoch = 0
        self.current_epoch = -1
        self.x, self.y = make_data(2048, seed=1)

    def prepare_data(self):
        return TensorDataset(self.x[:1536], self.y[:1536]), TensorDataset(
            self.x[1536:], self.y[1536:]
        )

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def loss(self, model, batch):
        x, y = batch
        if model.training:
            self._faults()
        return F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)

    def _faults(self) -> None:
        ctx, a = self.ctx, self.args
        epoch = ctx.epoch
        if epoch != self.current_epoch:
            self.current_epoch, self.steps_in_epoch = epoch, 0
        self.steps_in_epoch += 1
        if ctx.restart_count != 0:
            return
        here = (epoch, self.steps_in_epoch)
        if ctx.rank == a.kill_rank and here == (a.kill_epoch, a.kill_step):
            os.kill(os.getpid(), signal.SIGKILL)
        if ctx.rank == a.hang_rank and here == (a.hang_epoch, a.hang_step):
            time.sleep(300)


def meet(directory: str, count: int, run_id: str) -> None:
    """Holds until `count` jobs have written their marker into `directory` (at most 60 s)."""
    d = Path(directory)
    (d / run_id).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while len(list(d.iterdir())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(d.iterdir()))} of {count} jobs started")
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--kill-rank", type=int, default=-1)
    p.add_argument("--kill-epoch", type=int, default=-1)
    p.add_argument("--kill-step", type=int, default=3)
    p.add_argument("--hang-rank", type=int, default=-1)
    p.add_argument("--hang-epoch", type=int, default=-1)
    p.add_argument("--hang-step", type=int, default=2)
    p.add_argument("--register", default="")
    p.add_argument("--kill-after-register", type=int, default=-1, metavar="RANK")
    p.add_argument("--meet", default="")
    p.add_argument("--meet-count", type=int, default=2)
    p.add_argument("--out", default="")
    args = p.parse_args()

    job = MlpJob(args)
    ctx = job.ctx
    if args.meet and ctx.is_main:
        meet(args.meet, args.meet_count, ctx.run_id)
    ctx.barrier(slow=True)
    result = job.run()
    model = result.model
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    version = None
    if args.register:
        version = ctx.register(
            args.register,
            model,
            example_input=job.x[:8],
            metrics=result.metrics,
            reference_data=job.x[:512].numpy(),
            feature_names=[f"f{i}" for i in range(FEATURES)],
            params={"lr": job.lr, "epochs": job.epochs, "batch_size": job.batch_size},
            data_hash=job.x,
        )
        if ctx.rank == args.kill_after_register and ctx.restart_count == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        ctx.barrier(slow=True)
    if ctx.is_main and args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "run_id": ctx.run_id,
                    "world_size": ctx.world_size,
                    "restart_count": ctx.restart_count,
                    "start_epoch": result.start_epoch,
                    "metrics": result.metrics,
                    "weights": weights.tolist(),
                    "weights_sha256": hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
                    "version": None if version is None else int(version.version),
                }
            )
        )


if __name__ == "__main__":
    main()
