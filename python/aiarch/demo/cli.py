"""`aiarch demo`: argument parsing (the work happens in story.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole product in one command: features → training → registry → INT8 → "
        "serving with a canary → capacity → drift → feedback, retraining and progressive rollout "
        "→ automatic rollback",
        description=(
            "Runs aiarch end to end on embedded defaults (no server to install): generates a "
            "synthetic card-fraud data set, materializes its features to the native online store, "
            "builds a point-in-time training set, trains an MLP with `aiarch train --nproc 2` "
            "(DDP on gloo), registers and promotes it to production, quantizes an INT8 variant "
            "to staging, serves both with a 90/10 canary, measures capacity under a p99 SLO and "
            "reports drift on a shifted batch; then closes the loop: the served traffic shifts, "
            "labels come back as feedback, a retraining policy fires on the online AUC, "
            "retrains with `aiarch train`, gates the new version and rolls it out step by step "
            "until production moves to it; finally a candidate made bad on purpose is rolled "
            "back by the rollout controller on its own (history tables, and rollout.png with "
            "both rollouts). Everything lands in --home."
        ),
        epilog=(
            "examples:\n"
            "  aiarch demo                    # keeps serving at the end until Ctrl-C\n"
            "  aiarch demo --duration 10      # serve 10 s after the report, then exit\n"
            "  aiarch demo --no-serve         # skip the server and the benchmark\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--home",
        default=".aiarch-demo",
        help="folder for the demo's registry, stores, runs and plots; replaced on each run "
        "(default ./.aiarch-demo)",
    )
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    p.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="after the report, serve this many seconds and exit (default: until Ctrl-C)",
    )
    p.add_argument("--no-serve", action="store_true", help="skip serving and the benchmark")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument(
        "--slo-p99-ms", type=float, default=50.0, help="p99 objective of the capacity search"
    )
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from .story import DemoOptions, run

    if args.nproc < 1 or args.epochs < 1:
        print("aiarch demo: --nproc and --epochs must be >= 1")
        return 2
    return run(
        DemoOptions(
            home=Path(args.home),
            nproc=args.nproc,
            epochs=args.epochs,
            duration_s=args.duration,
            serve=not args.no_serve,
            slo_p99_ms=args.slo_p99_ms,
            port=args.port,
        )
    )
