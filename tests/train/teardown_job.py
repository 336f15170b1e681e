"""A 2-process job that ends right after a collective, and reports what is left at exit.

Its exit handler is registered before the training context exists, so it runs after the
context's own one (atexit runs last-registered first) and sees what interpreter shutdown
would inherit: the gloo threads still alive and whether our collective tensors are free.
With --ddp the model is DistributedDataParallel, dropped before the script ends.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
from pathlib import Path

import torch

import aiarch.train


def thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:  # the thread ended while we looked
            pass
    return sorted(names)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ddp", action="store_true")
    args = p.parse_args()
    state: dict = {}

    def report() -> None:
        ctx = state["ctx"]
        Path(f"{args.out}.{ctx.rank}").write_text(
            json.dumps(
                {
                    "threads": thread_names(),
                    "distributed": ctx.distributed,
                    "buffer_use_counts": [
                        b._use_count() for b in getattr(ctx, "_collective_buffers", {}).values()
                    ],
                }
            )
        )

    atexit.register(report)
    ctx = state["ctx"] = aiarch.train.context()
    if args.ddp:
        model = ctx.wrap(torch.nn.Linear(4, 1))
        model(torch.randn(8, 4)).sum().backward()
        del model
    ctx.all_reduce([1.0, float(ctx.rank)])


if __name__ == "__main__":
    main()
