"""`aiarch models ...`: register, list, show, search, promote, rollback, history, archive,
delete and verify model versions; tag, untag and describe models. Heavy imports happen inside
the handlers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  aiarch models register fraud ./model.onnx --metric auc=0.93 --tag task=fraud
  aiarch models register fraud ./model.py:predict --param lr=0.01
  aiarch models list --filter "model.tags.team = 'risk'"
  aiarch models show fraud@production
  aiarch models search "metrics.auc >= 0.9 and tags.task = 'fraud'" --order-by "metrics.auc desc"
  aiarch models search "model.tags.team = 'risk'" --limit 50 --page-token TOKEN
  aiarch models tag fraud team=risk tier=1
  aiarch models describe fraud --set "card fraud score, retrained weekly"
  aiarch models promote fraud 3 --to production --gate "metrics.auc >= 0.9"
  aiarch models rollback fraud --alias production
  aiarch models history fraud
  aiarch models verify fraud/3 --json

references: models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest, NAME@ALIAS, NAME/VERSION
registry:   --registry URL, else $AIARCH_REGISTRY, else SQLite under $AIARCH_HOME (./.aiarch);
            postgresql://user@host/db selects PostgreSQL.
artifacts:  --artifacts s3://BUCKET/PREFIX, else $AIARCH_ARTIFACTS, else files under $AIARCH_HOME;
            boto3 reads credentials and AWS_ENDPOINT_URL as usual (?endpoint_url=URL also works).
exit codes: 0 ok; 1 refused (conflict, failed gate, tampered artifact); 2 bad input or not found.
"""


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def version_number(text: str) -> int:
    """argparse type: a version number (>= 1)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a version number >= 1, got {text!r}")
    return int(text)


def add_parser(subparsers: Any) -> None:
    """Register `aiarch models` and its subcommands."""
    p = subparsers.add_parser(
        "models",
        help="model registry: register, search, promote, roll back, verify versions",
        description="Versions of models with content-addressed artifacts, aliases "
        "(production, staging, ...) with an append-only history, search and rollback.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="URL", help="registry database URL")
    common.add_argument(
        "--artifacts", metavar="URL", help="artifact bucket, e.g. s3://bucket/prefix"
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    sub.required = True

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(handler=_run)
        return sp

    r = add("register", "copy an artifact into the store and record a new version")
    r.add_argument("name", help="model name")
    r.add_argument("path", help="artifact file or folder, or FILE.py:CALLABLE")
    r.add_argument(
        "--format", help="onnx, torch_export, torchscript, python, ... (default: suffix)"
    )
    r.add_argument("--metric", type=_kv, action="append", default=[], metavar="K=V")
    r.add_argument("--param", type=_kv, action="append", default=[], metavar="K=V")
    r.add_argument("--tag", type=_kv, action="append", default=[], metavar="K=V")
    r.add_argument("--lineage", type=_kv, action="append", default=[], metavar="K=V")
    r.add_argument("--signature", metavar="JSON", help="signature JSON (default: read from model)")
    r.add_argument("--reference", metavar="FILE", help="drift reference profile file")

    ls = add("list", "list models, or the versions of one model")
    ls.add_argument("name", nargs="?", help="model name (omit for all models)")
    ls.add_argument(
        "--filter",
        metavar="COND",
        help="models only: e.g. \"model.tags.team = 'risk'\" (name, model.description, "
        "model.tags.KEY)",
    )

    sh = add("show", "show one version")
    sh.add_argument("ref", help="NAME@ALIAS, NAME/VERSION, models:/... or NAME (latest)")

    se = add("search", "search versions by metrics, params, tags and attributes")
    se.add_argument(
        "filter", nargs="?", default="", help="e.g. \"metrics.auc >= 0.9 and tags.task = 'fraud'\""
    )
    se.add_argument("--order-by", help="e.g. 'metrics.auc desc' (default: newest first)")
    se.add_argument(
        "--limit", type=version_number, default=100, help="most results per page (default 100)"
    )
    paging = se.add_mutually_exclusive_group()
    paging.add_argument(
        "--page-token", metavar="TOKEN", help="continue a search: the next_page_token it printed"
    )
    paging.add_argument(
        "--all", action="store_true", help="every match, read --limit at a time (no token)"
    )

    tg = add("tag", "set tags of a model (not of one version)")
    tg.add_argument("name", help="model name")
    tg.add_argument("tags", type=_kv, nargs="+", metavar="K=V")

    ut = add("untag", "remove tags of a model")
    ut.add_argument("name", help="model name")
    ut.add_argument("keys", nargs="+", metavar="KEY")

    ds = add("describe", "show a model (description, tags, aliases), or set its description")
    ds.add_argument("name", help="model name")
    ds.add_argument("--set", metavar="TEXT", help="replace the description ('' clears it)")

    pr = add("promote", "point an alias at a version (compare-and-swap, optional gates)")
    pr.add_argument("name", help="model name")
    pr.add_argument("version", type=version_number, help="version number")
    pr.add_argument("--to", default="production", metavar="ALIAS", help="default production")
    pr.add_argument(
        "--gate", action="append", default=[], metavar="COND", help="e.g. 'metrics.auc >= 0.9'"
    )
    pr.add_argument("--reason", default="", help="recorded in the alias history")
    pr.add_argument(
        "--expect",
        type=version_number,
        metavar="VERSION",
        help="fail unless the alias points here now",
    )

    rb = add("rollback", "point an alias back at its previous version")
    rb.add_argument("name", help="model name")
    rb.add_argument("--alias", default="production", help="default production")
    rb.add_argument("--reason", default="", help="recorded in the alias history")

    hi = add("history", "the append-only alias history of a model")
    hi.add_argument("name", help="model name")
    hi.add_argument("--alias", help="only this alias")

    ar = add("archive", "archive a version (refused while an alias points at it)")
    ar.add_argument("name", help="model name")
    ar.add_argument("version", type=version_number, help="version number")

    de = add("delete", "delete a version (refused while an alias points at it)")
    de.add_argument("name", help="model name")
    de.add_argument("version", type=version_number, help="version number")

    ve = add("verify", "re-hash a version's artifact against its digest")
    ve.add_argument("ref", help="NAME@ALIAS, NAME/VERSION, models:/... or NAME (latest)")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _short(d: dict[str, Any], n: int = 3) -> str:
    items = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(d.items())]
    return ",".join(items[:n]) + (",..." if len(items) > n else "")


def _version_rows(versions: list[Any]) -> str:
    return _table(
        [
            [
                mv.name,
                mv.version,
                ",".join(mv.aliases),
                mv.format,
                mv.status,
                _short(mv.metrics),
                _short(mv.tags),
                _when(mv.created_at),
                mv.digest[:12],
            ]
            for mv in versions
        ],
        ["NAME", "VERSION", "ALIASES", "FORMAT", "STATUS", "METRICS", "TAGS", "CREATED", "DIGEST"],
    )


def _model_rows(models: list[Any]) -> str:
    return _table(
        [
            [
                m.name,
                m.versions,
                m.latest,
                ",".join(f"{a}={v}" for a, v in sorted(m.aliases.items())),
                _short(m.tags),
                _one_line(m.description, 40),
            ]
            for m in models
        ],
        ["NAME", "VERSIONS", "LATEST", "ALIASES", "TAGS", "DESCRIPTION"],
    )


def _one_line(text: str, width: int) -> str:
    """`text` on one table line: whitespace runs (newlines too) collapsed, cut to `width`."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _describe(args: argparse.Namespace, model: Any) -> None:
    d = model.to_dict()
    _emit(
        args,
        d,
        "\n".join(
            f"{k:<13}{json.dumps(v) if isinstance(v, dict) else v}" for k, v in sorted(d.items())
        ),
    )


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def _change(c: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(c)


def _run(args: argparse.Namespace) -> int:
    from aiarch.errors import AiarchError, InvalidArgumentError, NotFoundError

    from .errors import RegistryError
    from .registry import Registry

    try:
        reg = Registry(args.registry, artifacts=args.artifacts)
        try:
            return _dispatch(reg, args)
        finally:
            reg.close()
    except (InvalidArgumentError, NotFoundError) as e:
        print(f"aiarch models {args.models_command}: {e}", file=sys.stderr)
        return 2
    except (RegistryError, AiarchError) as e:
        print(f"aiarch models {args.models_command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"aiarch models {args.models_command}: {e}", file=sys.stderr)
        return 2


def _dispatch(reg: Any, args: argparse.Namespace) -> int:
    from aiarch.errors import InvalidArgumentError

    cmd = args.models_command
    if cmd == "register":
        signature = None
        if args.signature:
            try:
                signature = json.loads(args.signature)
            except json.JSONDecodeError as e:
                raise InvalidArgumentError(f"--signature is not valid JSON: {e}") from None
        reference = None
        if args.reference:
            with open(args.reference, "rb") as f:
                reference = f.read()
        print(f"registering {args.path} ...", file=sys.stderr)
        mv = reg.register(
            args.name,
            args.path,
            format=args.format,
            signature=signature,
            metrics=dict(args.metric),
            params=dict(args.param),
            tags=dict(args.tag),
            lineage=dict(args.lineage),
            reference=reference,
        )
        _emit(
            args,
            mv.to_dict(),
            f"registered {mv.uri} (digest {mv.digest[:12]}, {mv.size_bytes} bytes)",
        )
    elif cmd == "list":
        if args.name:
            if args.filter:
                raise InvalidArgumentError(
                    "--filter selects models; use `aiarch models search` to filter versions"
                )
            versions = reg.list_versions(args.name)
            _emit(args, [v.to_dict() for v in versions], _version_rows(versions))
        else:
            models = reg.list_models(args.filter)
            _emit(args, [m.to_dict() for m in models], _model_rows(models))
    elif cmd == "show":
        mv = reg.resolve(args.ref)
        d = mv.to_dict()
        _emit(
            args,
            d,
            "\n".join(
                f"{k:<14}{json.dumps(v) if isinstance(v, dict | list) else v}"
                for k, v in sorted(d.items())
            ),
        )
    elif cmd == "search":
        if args.all:
            from .registry import SearchPage

            page = SearchPage(
                list(reg.search_all(args.filter, order_by=args.order_by, page_size=args.limit))
            )
        else:
            page = reg.search(
                args.filter, order_by=args.order_by, limit=args.limit, page_token=args.page_token
            )
        _emit(args, page.to_dict(), _version_rows(page))
        if page.truncated and not args.json:
            print(
                f"{len(page)} shown, more match: continue with --page-token "
                f"{page.next_page_token} (or --all)",
                file=sys.stderr,
            )
    elif cmd == "tag":
        for key, value in args.tags:
            reg.set_model_tag(args.name, key, value)
        _describe(args, reg.get_model(args.name))
    elif cmd == "untag":
        for key in args.keys:
            reg.delete_model_tag(args.name, key)
        _describe(args, reg.get_model(args.name))
    elif cmd == "describe":
        if args.set is not None:
            reg.set_model_description(args.name, args.set)
        _describe(args, reg.get_model(args.name))
    elif cmd == "promote":
        from .registry import UNSET

        change = reg.promote(
            args.name,
            args.version,
            to=args.to,
            gates=args.gate or None,
            reason=args.reason,
            expected_current=args.expect if args.expect is not None else UNSET,
        )
        text = (
            f"{args.name}@{args.to}: {change.from_version} → {change.to_version}"
            if change
            else f"{args.name}@{args.to} already points at version {args.version}"
        )
        _emit(args, _change(change) if change else None, text)
    elif cmd == "rollback":
        change = reg.rollback(args.name, args.alias, reason=args.reason)
        _emit(
            args,
            _change(change),
            f"{args.name}@{args.alias}: {change.from_version} → {change.to_version} (rollback)",
        )
    elif cmd == "history":
        changes = reg.history(args.name, args.alias)
        _emit(
            args,
            [_change(c) for c in changes],
            _table(
                [
                    [
                        _when(c.at),
                        c.alias,
                        c.action,
                        c.from_version,
                        c.to_version,
                        c.actor,
                        c.reason,
                    ]
                    for c in changes
                ],
                ["WHEN", "ALIAS", "ACTION", "FROM", "TO", "WHO", "REASON"],
            ),
        )
    elif cmd == "archive":
        mv = reg.archive(args.name, args.version)
        _emit(args, mv.to_dict(), f"archived {mv.uri}")
    elif cmd == "delete":
        reg.delete(args.name, args.version)
        _emit(
            args,
            {"deleted": f"models:/{args.name}/{args.version}"},
            f"deleted models:/{args.name}/{args.version}",
        )
    elif cmd == "verify":
        print(f"verifying {args.ref} ...", file=sys.stderr)
        mv = reg.open(args.ref)
        _emit(
            args,
            {"uri": mv.uri, "digest": mv.digest, "ok": True},
            f"ok: {mv.uri} matches digest {mv.digest}",
        )
    return 0
