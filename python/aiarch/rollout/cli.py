"""`aiarch rollout ...`: start, run, status, pause, resume and abort a progressive rollout.
Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from aiarch.registry.cli import version_number

__all__ = ["add_parser", "history_table"]

_EPILOG = """\
examples:
  aiarch rollout start fraud 4 --server http://127.0.0.1:8000          # steps 5,25,50,100
  aiarch rollout start fraud 4 --gate "metrics.auc >= 0.9" --server http://127.0.0.1:8000
  aiarch rollout start fraud 4 --steps 10,50,100 --dwell 600 --server http://10.0.0.5:8000 \\
      --server http://10.0.0.6:8000 --max-p99-ratio 1.3 --min-requests 500
  aiarch rollout start fraud 4 --detach        # record it; drive it later with `rollout run`
  aiarch rollout run fraud --server http://127.0.0.1:8000
  aiarch rollout status fraud
  aiarch rollout pause fraud --reason "holiday traffic"
  aiarch rollout resume fraud
  aiarch rollout abort fraud --reason "wrong features"

Servers follow the rollout when they serve the model as NAME@production (no --route): each
splits production:100-w / candidate:w at the step recorded in the registry.
exit codes: 0 done (completed, or the command succeeded); 1 refused (a rollout is already
active, another controller holds it, wrong state); 2 bad input or not found; 3 the rollout was
rolled back or aborted.
"""


def _steps(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated percentages (e.g. 5,25,50,100), got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> None:
    """Register `aiarch rollout` and its subcommands."""
    p = subparsers.add_parser(
        "rollout",
        help="progressive rollout of a model version with automatic rollback",
        description="Move a candidate version through canary steps (default 5,25,50,100 %%), "
        "comparing it with production on error rate, p99 latency, drift and online quality "
        "from the servers' /metrics; a breach rolls it back at once.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="URL", help="registry database URL")
    common.add_argument(
        "--artifacts",
        metavar="URL",
        help="artifact bucket, e.g. s3://bucket/prefix (start re-hashes the candidate there)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    control = argparse.ArgumentParser(add_help=False)
    control.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="base URL of a server serving the model (repeatable), e.g. http://127.0.0.1:8000",
    )
    control.add_argument(
        "--served-name", metavar="NAME", help="the model's name on the servers (default: MODEL)"
    )
    control.add_argument(
        "--poll", type=float, metavar="S", help="seconds between judgements (default dwell/5, ≤1)"
    )
    control.add_argument(
        "--lease", type=float, default=30.0, metavar="S", help="controller lease (default 30 s)"
    )
    sub = p.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND")
    sub.required = True

    def add(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common, *parents],
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(handler=_run)
        sp.add_argument("model", help="registry model name")
        return sp

    st = add("start", "start rolling a version out and drive it (unless --detach)", control)
    st.add_argument("version", type=version_number, help="candidate version")
    st.add_argument("--steps", type=_steps, default=None, help="percentages (default 5,25,50,100)")
    st.add_argument("--dwell", type=float, default=300.0, metavar="S", help="per step (300)")
    st.add_argument("--step-timeout", type=float, metavar="S", help="default 10 x dwell")
    st.add_argument(
        "--gate", action="append", default=[], metavar="COND", help="e.g. 'metrics.auc >= 0.9'"
    )
    st.add_argument("--reason", default="", help="recorded with the rollout")
    st.add_argument("--detach", action="store_true", help="record the rollout only")
    st.add_argument("--max-error-rate-increase", type=float, metavar="X", help="default 0.01")
    st.add_argument("--max-p99-ratio", type=float, metavar="X", help="default 1.5")
    st.add_argument("--p99-floor", type=float, metavar="S", help="default 0.005")
    st.add_argument("--max-quality-drop", type=float, metavar="X", help="default 0.02")
    st.add_argument("--max-drift-increase", type=float, metavar="X", help="default 0.25")
    st.add_argument("--min-requests", type=int, metavar="N", help="per arm (default 100)")

    add("run", "drive the active rollout (one controller per rollout)", control)
    add("status", "show the rollout and its history table")
    for name, help in (
        ("pause", "hold the active rollout at its step"),
        ("resume", "let a paused rollout go on (its dwell restarts)"),
        ("abort", "end the active rollout now; production stays"),
    ):
        sp = add(name, help)
        sp.add_argument("--reason", default="", help="recorded in the history")


def _when(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _arm_cells(arm: dict[str, Any] | None) -> list[str]:
    if not arm:
        return ["", "", "", ""]
    p99 = arm.get("p99_s")
    quality = ",".join(f"{k}={v:.3f}" for k, v in sorted((arm.get("quality") or {}).items()))
    return [
        str(arm.get("requests", "")),
        f"{100 * arm.get('error_rate', 0.0):.2f}%",
        "" if p99 is None else f"{p99 * 1e3:.1f}ms",
        quality,
    ]


def history_table(events: list[Any]) -> str:
    """The decisions of a rollout as a fixed-width table: time, step, weight, per-arm
    requests / error rate / p99 / online quality, decision and reason."""
    header = [
        "TIME",
        "STEP",
        "WEIGHT",
        "PROD_REQ",
        "PROD_ERR",
        "PROD_P99",
        "PROD_QUALITY",
        "CAND_REQ",
        "CAND_ERR",
        "CAND_P99",
        "CAND_QUALITY",
        "DECISION",
        "REASON",
    ]
    rows = [
        [
            _when(ev.at),
            str(ev.step + 1),
            f"{ev.weight}%",
            *_arm_cells(ev.arms.get("production")),
            *_arm_cells(ev.arms.get("candidate")),
            ev.decision,
            ev.reason,
        ]
        for ev in events
    ]
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _summary(ro: Any) -> str:
    return (
        f"rollout #{ro.id} of {ro.model}: version {ro.candidate} vs production {ro.baseline}, "
        f"{ro.state}, step {ro.step + 1}/{len(ro.steps)} ({','.join(map(str, ro.steps))} %), "
        f"candidate weight {ro.weight} %, dwell {ro.dwell_s:g} s"
        + (f", controller {ro.lease_owner}" if ro.lease_owner and ro.active else "")
        + (f"\nreason: {ro.reason}" if ro.reason else "")
    )


def _thresholds(args: argparse.Namespace) -> Any:
    from .state import Thresholds

    given = {
        "max_error_rate_increase": args.max_error_rate_increase,
        "max_p99_ratio": args.max_p99_ratio,
        "p99_floor_s": args.p99_floor,
        "max_quality_drop": args.max_quality_drop,
        "max_drift_share_increase": args.max_drift_increase,
        "min_requests": args.min_requests,
    }
    return Thresholds(**{k: v for k, v in given.items() if v is not None})


def _run(args: argparse.Namespace) -> int:
    from aiarch.errors import AiarchError, InvalidArgumentError, NotFoundError
    from aiarch.registry import Registry

    cmd = args.rollout_command
    try:
        reg = Registry(args.registry, artifacts=args.artifacts)
        try:
            return _dispatch(reg, args)
        finally:
            reg.close()
    except (InvalidArgumentError, NotFoundError) as e:
        print(f"aiarch rollout {cmd}: {e}", file=sys.stderr)
        return 2
    except AiarchError as e:
        print(f"aiarch rollout {cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"aiarch rollout {cmd}: interrupted; the rollout stays where it is (another "
            f"`aiarch rollout run {args.model}` takes it over once the lease expires)",
            file=sys.stderr,
        )
        return 130


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def _drive(reg: Any, args: argparse.Namespace) -> int:
    import logging

    from . import state
    from .controller import Controller

    if not args.server:
        from aiarch.errors import InvalidArgumentError

        raise InvalidArgumentError(
            "give --server URL (repeatable): the servers whose /metrics the controller compares"
        )
    if not args.json and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    ro = Controller(
        reg,
        args.model,
        args.server,
        served_name=args.served_name,
        poll_s=args.poll,
        lease_s=args.lease,
    ).run()
    evs = state.events(reg, ro.id)
    _emit(
        args,
        {"rollout": ro.to_dict(), "events": [e.to_dict() for e in evs]},
        _summary(ro) + "\n\n" + history_table(evs),
    )
    return 0 if ro.state == "completed" else 3


def _dispatch(reg: Any, args: argparse.Namespace) -> int:
    from aiarch.errors import InvalidArgumentError

    from . import state
    from .state import DEFAULT_STEPS, Rollout

    cmd = args.rollout_command
    if cmd == "start":
        if not args.detach and not args.server:
            raise InvalidArgumentError(
                "give --server URL (repeatable) for the controller to compare the arms, or "
                "--detach to only record the rollout"
            )
        ro = Rollout.start(
            reg,
            args.model,
            args.version,
            steps=args.steps or DEFAULT_STEPS,
            dwell_s=args.dwell,
            step_timeout_s=args.step_timeout,
            thresholds=_thresholds(args),
            gates=args.gate or None,
            reason=args.reason,
        )
        if args.detach:
            _emit(args, ro.to_dict(), _summary(ro))
            return 0
        print(_summary(ro), file=sys.stderr)
        return _drive(reg, args)
    if cmd == "run":
        return _drive(reg, args)
    if cmd == "status":
        last = state.latest(reg, args.model)
        if last is None:
            _emit(args, None, f"no rollout of {args.model} yet")
            return 0
        evs = state.events(reg, last.id)
        _emit(
            args,
            {"rollout": last.to_dict(), "events": [e.to_dict() for e in evs]},
            _summary(last) + "\n\n" + history_table(evs),
        )
        return 0
    steer = {"pause": state.pause, "resume": state.resume, "abort": state.abort}[cmd]
    ro = steer(reg, args.model, args.reason)
    _emit(args, ro.to_dict(), _summary(ro))
    return 0
