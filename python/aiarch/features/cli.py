"""`aiarch features apply|list|materialize|get`: feature definitions and the online store from
the command line. Light at import: the handlers import what they need."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiarch.redact import redact_url

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  aiarch features apply features.py            # Entity/FeatureView objects defined in a file
  aiarch features list
  aiarch features materialize txn --end 2024-06-01T00:00:00
  aiarch features get txn:amount_7d txn:count_1h --ids 42,43
  aiarch features get 'txn:*' --ids 42 --online redis://127.0.0.1:6379/0 --json

The online store defaults to native://$AIARCH_HOME/online (snapshots a server can load with
  features = { store = "native://.aiarch/online", ... }); --online or AIARCH_FEATURE_STORE
  selects another (memory://, native://PATH, redis://HOST:PORT/DB).
"""


def add_parser(sub: Any) -> None:
    """Register `aiarch features` on the top-level subparsers."""
    p = sub.add_parser(
        "features",
        help="feature definitions, materialization and online lookups",
        description="Define entities and feature views, load them into the online store, and "
        "read features back.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="metadata directory (default $AIARCH_HOME or ./.aiarch)")
    common.add_argument(
        "--online", metavar="URL", help="online store URL (default native://HOME/online)"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fs = p.add_subparsers(dest="features_command", metavar="SUBCOMMAND")
    fs.required = True

    a = fs.add_parser(
        "apply",
        parents=[common],
        help="store definitions from .py or .json files",
        description="Store every Entity and FeatureView defined in the given files: a Python "
        "file's module-level objects (or lists of them), or JSON with 'entities' and "
        "'feature_views' lists.",
    )
    a.add_argument("files", nargs="+", metavar="FILE")
    a.set_defaults(handler=_apply)

    ls = fs.add_parser("list", parents=[common], help="list entities and feature views")
    ls.set_defaults(handler=_list)

    m = fs.add_parser(
        "materialize",
        parents=[common],
        help="load the latest offline rows into the online store",
        description="Load the latest row per entity with event time in [start, end) from each "
        "view's Parquet source into the online store; resumes an interrupted run.",
    )
    m.add_argument("views", nargs="+", metavar="VIEW")
    m.add_argument("--start", help="ISO time (default: the end of the last run)")
    m.add_argument("--end", help="ISO time (default: now)")
    m.add_argument("--chunk-rows", type=int, default=100_000, metavar="N")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(handler=_materialize)

    g = fs.add_parser("get", parents=[common], help="look features up for entity ids")
    g.add_argument("refs", nargs="+", metavar="VIEW:FEATURE")
    g.add_argument("--ids", required=True, help="comma-separated entity ids")
    g.set_defaults(handler=_get)


def _store(args: argparse.Namespace) -> Any:
    from .metadata import default_home
    from .store import FeatureStore

    home = Path(args.home) if args.home else default_home()
    url = args.online or os.environ.get("AIARCH_FEATURE_STORE") or f"native://{home / 'online'}"
    return FeatureStore(url, home=home)


def _fail(message: str, code: int = 1) -> int:
    print(f"aiarch features: {message}", file=sys.stderr)
    return code


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _run(args: argparse.Namespace, fn: Any) -> int:
    from aiarch.errors import AiarchError

    try:
        return int(fn(args) or 0)
    except AiarchError as e:
        return _fail(str(e))
    except (OSError, ValueError) as e:
        return _fail(str(e))


def _load_definitions(path: Path) -> list[Any]:
    from .definitions import Entity, FeatureView

    if path.suffix == ".py":
        import importlib.util

        spec = importlib.util.spec_from_file_location(f"_aiarch_features_{abs(hash(path))}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found: list[Any] = []
        for value in vars(module).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            found.extend(x for x in items if isinstance(x, (Entity, FeatureView)))
        return found
    if path.suffix == ".json":
        tree = json.loads(path.read_text())
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: expected an object with 'entities' and 'feature_views'")
        return [Entity.from_json(e) for e in tree.get("entities", [])] + [
            FeatureView.from_json(v) for v in tree.get("feature_views", [])
        ]
    raise ValueError(f"{path}: expected a .py or .json file")


def _apply(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        from .definitions import Entity

        objs: list[Any] = []
        for f in args.files:
            p = Path(f)
            if not p.is_file():
                raise ValueError(f"no such file: {f}")
            objs.extend(_load_definitions(p))
        if not objs:
            return _fail("no Entity or FeatureView found in " + ", ".join(args.files))
        store = _store(args)
        store.apply(objs)
        names = [
            {"kind": "entity" if isinstance(o, Entity) else "feature_view", "name": o.name}
            for o in objs
        ]
        if args.json:
            print(json.dumps({"applied": names}))
        else:
            for n in names:
                print(f"applied {n['kind']} {n['name']}")
        return 0

    return _run(args, go)


def _list(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        store = _store(args)
        ents = store.entities()
        views = store.views()
        marks = {v: store.metadata.watermark(v, store.url) for v in views}
        if args.json:
            print(
                json.dumps(
                    {
                        "online": redact_url(store.url),
                        "entities": [e.to_json() for e in ents.values()],
                        "feature_views": [
                            {**v.to_json(), "materialized_until_ns": marks[v.name]}
                            for v in views.values()
                        ],
                    }
                )
            )
            return 0
        from .offline import _ns_iso

        print(f"online store: {redact_url(store.url)}\n")
        _table(
            ["entity", "key type", "join key"],
            [[e.name, e.dtype, e.join_key] for e in ents.values()],
        )
        print()
        _table(
            ["feature view", "entity", "features", "ttl s", "source", "materialized until"],
            [
                [
                    v.name,
                    v.entity,
                    ",".join(v.feature_names()),
                    f"{v.ttl:g}",
                    v.source or "-",
                    _ns_iso(marks[v.name]) if marks[v.name] is not None else "-",
                ]
                for v in views.values()
            ],
        )
        return 0

    return _run(args, go)


def _materialize(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        store = _store(args)
        results = []
        for v in args.views:
            results.append(
                store.materialize(
                    v, args.start, args.end, chunk_rows=args.chunk_rows, progress=not args.quiet
                )
            )
        if args.json:
            print(json.dumps(results))
        else:
            from .offline import _ns_iso

            _table(
                ["view", "entities", "applied", "resumed", "until"],
                [
                    [r["view"], r["rows"], r["applied"], r["resumed"], _ns_iso(r["end_ns"])]
                    for r in results
                ],
            )
        return 0

    return _run(args, go)


def _plain(value: Any) -> Any:
    """A typed value as JSON takes it: float, int, str, or a list of floats (a vector)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [float(x) for x in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{x:g}" for x in value) + "]"
    return str(value)


def _get(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        store = _store(args)
        plan = store.plan(args.refs)
        raw = [x.strip() for x in args.ids.split(",") if x.strip()]
        if plan.entity.dtype == "int64":
            try:
                ids: Any = [int(x) for x in raw]
            except ValueError:
                raise ValueError(
                    f"entity {plan.entity.name!r} has int64 keys; got --ids {args.ids!r}"
                ) from None
        else:
            ids = raw
        typed, status = plan.get_typed(ids)
        names = ("present", "expired", "missing", "unavailable")
        rows = [[_plain(typed[ref][i]) for ref in plan.refs] for i in range(len(status))]
        if args.json:
            print(
                json.dumps(
                    {
                        "columns": plan.refs,
                        "rows": [
                            {"id": i, "status": names[int(s)], "values": row}
                            for i, s, row in zip(ids, status, rows)
                        ],
                    }
                )
            )
        else:
            _table(
                [plan.entity.name, "status", *plan.refs],
                [
                    [i, names[int(s)], *(_text(x) for x in row)]
                    for i, s, row in zip(ids, status, rows)
                ],
            )
        return 0

    return _run(args, go)
