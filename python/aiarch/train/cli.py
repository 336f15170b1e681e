"""`aiarch train`: the command-line face of `aiarch.train.launch` (light to import)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  aiarch train train.py --nproc 2                        # 2 processes, gloo on CPU
  aiarch train train.py --nproc 2 -- --epochs 5 --lr 0.01  # arguments after -- go to the script
  aiarch train train.py --nproc 4 --device cuda          # NCCL, one GPU per process
  aiarch train train.py --nproc 8 --nnodes 2 --rdzv-endpoint node0:29400   # on each host
  aiarch train train.py --nproc 2 --run-id fraud-1       # reuse a run id: resume its checkpoints

inside the script:
  ctx = aiarch.train.context()          # rank, world_size, device, restart_count, run_id
  model = ctx.wrap(model)               # DistributedDataParallel
  loader = ctx.loader(dataset, 256)     # DistributedSampler; set_epoch handled
  ckpt = ctx.checkpoint.load_latest(into={"model": model, "optimizer": opt})
  for epoch in ctx.epochs(10, start=0 if ckpt is None else ckpt.step + 1):
      ...; epoch.record(loss, len(x))
      ctx.checkpoint.save({"model": model, "optimizer": opt}, step=epoch.index)
  ctx.register("fraud", model, example_input=x[:8], metrics={"auc": auc})

exit codes: 0 done, 1 the job failed (after its restarts), 2 bad arguments,
128+N stopped by signal N. Runs live in $AIARCH_HOME/runs/<run_id> (default ./.aiarch).
"""


def _options() -> argparse.ArgumentParser:
    """The launcher's options; parsed before the script and again between it and `--`."""
    p = argparse.ArgumentParser(prog="aiarch train", add_help=False)
    p.add_argument(
        "--nproc",
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="processes per host (default 1)",
    )
    p.add_argument(
        "--nnodes",
        default="1",
        metavar="N|MIN:MAX",
        help="hosts in the job, or an elastic range (default 1); >1 needs --rdzv-endpoint",
    )
    p.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="rendezvous store, the same on every host (its host serves it)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        metavar="N",
        help="restarts of the worker group after a failure (default 3)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cpu (gloo) or cuda (NCCL); auto picks cuda when there is a GPU per process",
    )
    p.add_argument("--run-id", help="run id (default: a new one; reuse one to resume it)")
    p.add_argument("--home", metavar="DIR", help="AIARCH_HOME for this run (default ./.aiarch)")
    p.add_argument(
        "--collective-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a training collective waits this long for a silent peer (default 30)",
    )
    p.add_argument(
        "--io-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="start-up, checkpoint and export waits (default 600)",
    )
    p.add_argument(
        "--registry",
        metavar="URL",
        help="registry URL for ctx.register() (default: the registry under AIARCH_HOME)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def add_parser(sub: Any) -> None:
    """Registers `aiarch train` on the `aiarch` subparsers."""
    p = sub.add_parser(
        "train",
        parents=[_options()],
        usage="aiarch train SCRIPT [options] [-- SCRIPT_ARGS ...]",
        help="run a training script on N processes (torch.distributed elastic, DDP)",
        description=(
            "Run a training script under torch.distributed's elastic launcher: gloo on CPU, "
            "NCCL on GPU, a free rendezvous port picked at bind time on one host, short "
            "collective timeouts so a dead peer fails the job in seconds, restarts that "
            "resume from the last complete checkpoint. The script uses aiarch.train.context()."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # One catch-all positional: argparse cannot mix options after a positional with a
    # `--`-separated tail, so `_split_command` parses what follows the script itself.
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT [options] [-- SCRIPT_ARGS]",
        help="the Python training script; its own arguments go after --",
    )
    p.set_defaults(handler=_train)


def _split_command(args: argparse.Namespace) -> tuple[str, list[str]] | str:
    """(script, script args), with launcher options between them parsed into `args`;
    or an error message."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return "no training script given (usage: aiarch train SCRIPT [options] [-- ARGS])"
    script, rest = command[0], command[1:]
    if script.startswith("-"):
        return f"unknown option {script!r} (see aiarch train --help)"
    head, tail = (
        (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
    )
    _, unknown = _options().parse_known_args(head, namespace=args)
    if unknown:
        return (
            f"unrecognized arguments: {' '.join(unknown)} (arguments for the script go "
            f"after --, e.g. aiarch train {script} --nproc 2 -- {' '.join(unknown)})"
        )
    return script, tail


def _summary_rows(result: Any) -> list[tuple[str, str]]:
    rows = [
        ("run id", result.run_id),
        ("run dir", str(result.run_dir)),
        ("processes", f"{result.world_size} ({result.nproc} per host, nnodes {result.nnodes})"),
        ("device", result.device),
        ("restarts", str(result.restarts)),
        ("wall time", f"{result.wall_s:.1f} s"),
    ]
    if result.epochs:
        last = result.epochs[-1]
        rows.append(("epochs logged", str(len(result.epochs))))
        rows.append(("final loss", f"{last['loss']:.6f}"))
        rows.append(("samples/s (last)", f"{last['samples_per_s']:,.0f}"))
    for name, info in result.registered.items():
        rows.append(
            (f"registered {name}", f"version {info.get('version')}  {info.get('uri') or ''}")
        )
    return rows


def _train(args: argparse.Namespace) -> int:
    from aiarch.errors import InvalidArgumentError

    from .launcher import TrainingError, launch

    split = _split_command(args)
    if isinstance(split, str):
        print(f"aiarch train: {split}", file=sys.stderr)
        return 2
    script, script_args = split
    env = {"AIARCH_REGISTRY_URL": args.registry} if args.registry else None
    stdout_fd = None
    if args.json:
        # The workers inherit fd 1; send their output to stderr so stdout carries only JSON.
        sys.stdout.flush()
        stdout_fd = os.dup(1)
        os.dup2(2, 1)
    else:
        print(
            f"aiarch train: {script} on {args.nproc} process(es) per host, "
            f"nnodes {args.nnodes}, device {args.device}, max restarts {args.max_restarts}",
            flush=True,
        )
    try:
        result = launch(
            script,
            nproc=args.nproc,
            args=script_args,
            nnodes=args.nnodes,
            rdzv_endpoint=args.rdzv_endpoint,
            max_restarts=args.max_restarts,
            run_id=args.run_id,
            home=args.home,
            device=args.device,
            collective_timeout_s=args.collective_timeout,
            io_timeout_s=args.io_timeout,
            env=env,
        )
    except InvalidArgumentError as e:
        print(f"aiarch train: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"aiarch train: {e}", file=sys.stderr)
        return 128 + e.exit_signal if e.exit_signal else 1
    finally:
        if stdout_fd is not None:
            sys.stdout.flush()
            os.dup2(stdout_fd, 1)
            os.close(stdout_fd)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    rows = _summary_rows(result)
    width = max(len(k) for k, _ in rows)
    print("\naiarch train: done")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0
