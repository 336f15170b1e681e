"""`aiarch monitor`: reports from a running server or saved snapshots, and reference profiles.

Light module: heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aiarch.redact import redact_url

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Registers `aiarch monitor` and its subcommands."""
    p = sub.add_parser(
        "monitor",
        help="latency and drift reports; reference profiles",
        description="Latency percentiles per window and per-feature drift against a model "
        "version's reference profile, from a running `aiarch serve` or saved snapshots.",
    )
    msub = p.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND")
    msub.required = True

    r = msub.add_parser(
        "report",
        help="print a latency/drift table and write a PNG",
        description="Fetch GET /v2/models/MODEL/monitor from a server (or merge snapshot files "
        "saved from several workers), print a table and write a PNG with latency percentiles "
        "over time and per-feature drift bars.",
        epilog=(
            "examples:\n"
            "  aiarch monitor report mlp --url http://127.0.0.1:8000\n"
            "  aiarch monitor report mlp --url http://127.0.0.1:8000 --save-snapshot w1.json\n"
            "  aiarch monitor report mlp --snapshot w1.json --snapshot w2.json --png mlp.png\n"
            "  aiarch monitor report mlp --url http://127.0.0.1:8000 --json\n"
            "\n"
            "exit codes: 0 ok, 1 the dataset drifted or an alert fires, 2 bad input or "
            "server unreachable"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("model", metavar="MODEL", help="model name")
    src = r.add_mutually_exclusive_group()
    src.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="server base URL (default http://127.0.0.1:8000)",
    )
    src.add_argument(
        "--snapshot",
        action="append",
        metavar="FILE",
        help="snapshot JSON saved with --save-snapshot; repeat to merge processes",
    )
    r.add_argument("--version", help="model version (default: the loaded one)")
    r.add_argument("--png", metavar="PATH", help="PNG path (default MODEL-monitor.png; '' = none)")
    r.add_argument("--save-snapshot", metavar="FILE", help="also save the snapshot for merging")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--timeout-s", type=float, default=10.0, help="HTTP timeout (default 10)")
    r.set_defaults(handler=_report)

    b = msub.add_parser(
        "profile",
        help="build a reference profile from training data",
        description="Build a reference profile (quantile bins per numeric feature, category "
        "frequencies per categorical one) and write its bytes, to store with a model version "
        "or name as monitor.reference in a serve config.",
        epilog=(
            "examples:\n"
            "  aiarch monitor profile train.npy --out mlp.profile\n"
            "  aiarch monitor profile train.parquet --categorical plan,country --out m.profile\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("data", metavar="DATA", help=".npy (rows x features) or .parquet file")
    b.add_argument("--out", "-o", required=True, metavar="FILE", help="profile file to write")
    b.add_argument("--categorical", default="", help="comma-separated categorical columns")
    b.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature")
    b.set_defaults(handler=_profile)


def _fail(message: str) -> int:
    print(f"aiarch monitor: {message}", file=sys.stderr)
    return 2


def _report(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    import msgspec

    from aiarch.errors import AiarchError

    from .monitor import MonitorSnapshot, merge_snapshots, report_from_snapshot
    from .report import render_table, write_png

    try:
        if args.snapshot:
            snaps = []
            for path in args.snapshot:
                print(f"reading {path}", file=sys.stderr)
                with open(path, "rb") as fh:
                    snaps.append(msgspec.json.decode(fh.read(), type=MonitorSnapshot))
            snap = merge_snapshots(snaps)
            if snap.model != args.model:
                return _fail(f"snapshots are of model {snap.model!r}, not {args.model!r}")
            report = report_from_snapshot(snap)
        else:
            model = urllib.parse.quote(args.model, safe="")
            path = f"/v2/models/{model}"
            if args.version:
                path += f"/versions/{urllib.parse.quote(args.version, safe='')}"
            url = args.url.rstrip("/") + path + "/monitor"
            print(f"fetching {redact_url(url)}", file=sys.stderr)
            try:
                with urllib.request.urlopen(url, timeout=args.timeout_s) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                return _fail(f"{redact_url(url)} answered {e.code}: {detail}")
            except (urllib.error.URLError, OSError) as e:
                return _fail(f"cannot reach {redact_url(url)}: {e}")
            report = json.loads(body)
            snap = msgspec.json.decode(
                msgspec.json.encode(report.pop("snapshot")), type=MonitorSnapshot
            )
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, AiarchError) as e:
        return _fail(str(e))
    report.pop("snapshot", None)
    if args.save_snapshot:
        with open(args.save_snapshot, "wb") as fh:
            fh.write(msgspec.json.encode(snap))
        print(f"saved snapshot to {args.save_snapshot}", file=sys.stderr)
    png = f"{args.model}-monitor.png" if args.png is None else args.png
    if png:
        write_png(report, png)
        print(f"wrote {png}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render_table(report))
    drifted = bool(report["drift"]["window"]["drifted"])
    firing = any(a.get("active") for a in report.get("alerts", []))
    return 1 if drifted or firing else 0


def _profile(args: argparse.Namespace) -> int:
    import numpy as np

    from aiarch.errors import AiarchError

    from .profile import Profile

    cats = [c for c in args.categorical.split(",") if c]
    try:
        if args.data.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(args.data)
            data: Any = {
                name: table.column(name).to_numpy(zero_copy_only=False)
                for name in table.column_names
            }
            names = None
        elif args.data.endswith(".npy"):
            data = np.load(args.data, allow_pickle=False)
            names = None
        else:
            return _fail(f"{args.data}: expected a .npy or .parquet file")
        print(f"profiling {args.data}", file=sys.stderr)
        profile = Profile.build(data, names, categorical=cats, bins=args.bins)
        with open(args.out, "wb") as fh:
            fh.write(profile.to_bytes())
    except (OSError, ValueError, AiarchError) as e:
        return _fail(str(e))
    print(f"{profile!r} -> {args.out}")
    return 0
