"""`aiarch retrain`: evaluate a retraining policy's triggers and run it (light to import)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  aiarch retrain --policy fraud-policy.toml --check   # show each trigger's state, run nothing
  aiarch retrain --policy fraud-policy.toml --once    # run once if a trigger fires
  aiarch retrain --policy fraud-policy.toml --now     # run now (trigger "manual")
  aiarch retrain --policy fraud-policy.toml --watch   # check every poll_s seconds
  aiarch retrain --policy fraud-policy.toml --runs    # the recorded runs

exit codes: 0 done (or nothing fired); 1 the run failed, its gates failed, its rollout did
not reach 100 % (rolled back, aborted, refused), or another --watch holds the model; 2 bad
policy.

One --watch per model: it holds the registry lease `retrain.watcher`; a second one says who
holds it and exits 1. With a [rollout] table a promoted candidate is rolled out
progressively (and driven to completion or rollback unless `drive = false`).
"""


def add_parser(sub: Any) -> None:
    """Registers `aiarch retrain` on the `aiarch` subparsers."""
    p = sub.add_parser(
        "retrain",
        help="retrain a model when its policy's triggers fire (gated, sets a candidate alias)",
        description=(
            "Evaluate a retraining policy (TOML or JSON): triggers, the `aiarch train` "
            "command, the data window and the gates. A version that passes its gates gets the "
            "policy's promote_alias (default 'candidate'); production moves only through the "
            "progressive rollout of a [rollout] table, never directly."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", required=True, metavar="FILE", help="policy file (.toml or .json)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run once if a trigger fires (default)")
    mode.add_argument("--watch", action="store_true", help="check every poll_s seconds")
    mode.add_argument("--check", action="store_true", help="print the triggers' state only")
    mode.add_argument("--now", action="store_true", help="run now whatever the triggers say")
    mode.add_argument("--runs", action="store_true", help="print the recorded runs")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.set_defaults(handler=_retrain)


def _retrain(args: argparse.Namespace) -> int:
    from aiarch.errors import AiarchError, InvalidArgumentError

    from .policy import load_policy
    from .runner import Retrainer

    try:
        policy = load_policy(args.policy)
    except InvalidArgumentError as e:
        print(f"aiarch retrain: {e}", file=sys.stderr)
        return 2
    retrainer = Retrainer(policy)
    try:
        if args.check:
            checks = [c.to_dict() for c in retrainer.check()]
            _print(args, checks, "\n".join(_check_line(c) for c in checks))
            return 0
        if args.runs:
            runs = retrainer.runs()
            _print(args, runs, "\n".join(_run_line(r) for r in runs) or "no runs")
            return 0
        if args.watch:
            try:
                retrainer.watch()
            except KeyboardInterrupt:
                pass  # Ctrl-C ends the watch; the lease was released on the way out
            return 0
        rec = retrainer.run("manual", "aiarch retrain --now") if args.now else retrainer.once()
    except AiarchError as e:
        print(f"aiarch retrain: {e}", file=sys.stderr)
        return 1
    if rec is None:
        _print(args, None, "no trigger fired")
        return 0
    _print(args, rec.to_dict(), _run_line(rec.to_dict()))
    rolled_out = rec.rollout_state in (None, "running", "paused", "completed")
    return 0 if rec.status == "promoted" and rolled_out else 1


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _check_line(c: dict[str, Any]) -> str:
    return f"{'FIRED' if c['fired'] else 'quiet':<6} {c['trigger']:<40} {c['detail']}"


def _run_line(r: dict[str, Any]) -> str:
    version = f"v{r['version']}" if r.get("version") is not None else "-"
    return (
        f"{r['run_id']}  {r['status']:<11} {version:<5} trigger={r['trigger']}"
        + (f"  alias={r['alias']}" if r.get("alias") else "")
        + (f"  reason: {r['reason']}" if r.get("reason") else "")
        + (
            f"  rollout #{r['rollout_id'] if r.get('rollout_id') is not None else '-'}: "
            f"{r['rollout_state']} ({r.get('rollout_reason', '')})"
            if r.get("rollout_state")
            else ""
        )
    )
