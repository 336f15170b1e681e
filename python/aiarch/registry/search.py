"""SQL of `Registry.search`, the row shape every version query selects, and the Python
evaluation of the same filters (promotion gates, naive baselines)."""

from __future__ import annotations

from typing import Any

from .errors import GateFailedError
from .filters import Condition, OrderKey, evaluate, parse_filter

__all__ = ["VERSION_COLUMNS", "check_gates", "fields_of", "matches", "search_sql"]

VERSION_COLUMNS = (
    "m.name, v.version, v.digest, v.format, v.artifact_name, v.entry, v.signature, v.metrics, "
    "v.params, v.tags, v.lineage, v.created_at, v.created_by, v.status, v.size_bytes, v.id, "
    "v.model_id"
)
"""Columns of a version row, in the order `Registry._row_to_version` reads them."""

_ATTR_SQL = {
    "name": "m.name",
    "version": "v.version",
    "format": "v.format",
    "status": "v.status",
    "created_at": "v.created_at",
}
_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}


def search_sql(conds: list[Condition], order: list[OrderKey], limit: int) -> tuple[str, list[Any]]:
    """One SELECT. Key/value conditions are answered first, on ids only: the first one (an
    equality if there is one: usually the most selective) scans its (key, value) index and
    every other is a probe of its table's (version_id, key) primary key. Only the matching ids
    (at most `limit` of them when no other ordering or attribute filter applies) reach the
    wide `versions` rows."""
    kv = sorted((c for c in conds if c.kind != "attr"), key=lambda c: c.op != "=")
    attrs = [c for c in conds if c.kind == "attr"]
    args: list[Any] = []
    source = "versions v "
    if kv:
        first = kv[0]
        inner = [f"SELECT c0.version_id AS id FROM version_{first.kind} c0"]
        for i, c in enumerate(kv[1:], 1):
            inner.append(
                f"JOIN version_{c.kind} c{i} ON c{i}.version_id = c0.version_id AND c{i}.key = ? "
                f"AND c{i}.value {_SQL_OPS[c.op]} ?"
            )
            args.extend((c.key, c.value))
        inner.append(f"WHERE c0.key = ? AND c0.value {_SQL_OPS[first.op]} ?")
        args.extend((first.key, first.value))
        if not attrs and not order:
            inner.append("ORDER BY c0.version_id DESC LIMIT ?")
            args.append(limit)
        source = "(" + " ".join(inner) + ") hits JOIN versions v ON v.id = hits.id "
    joins = []
    order_sql = []
    for i, o in enumerate(order):
        direction = "DESC" if o.descending else "ASC"
        if o.kind == "attr":
            order_sql.append(f"{_ATTR_SQL[o.key]} {direction}")
        else:
            joins.append(
                f"LEFT JOIN version_{o.kind} o{i} ON o{i}.version_id = v.id AND o{i}.key = ?"
            )
            args.append(o.key)
            order_sql.append(f"o{i}.value {direction} NULLS LAST")
    order_sql.append("v.id DESC")
    sql = f"SELECT {VERSION_COLUMNS} FROM {source}JOIN models m ON m.id = v.model_id "
    sql += " ".join(joins)
    if attrs:
        sql += " WHERE " + " AND ".join(f"{_ATTR_SQL[c.key]} {_SQL_OPS[c.op]} ?" for c in attrs)
        args.extend(c.value for c in attrs)
    sql += " ORDER BY " + ", ".join(order_sql) + " LIMIT ?"
    args.append(limit)
    return sql, args


def fields_of(mv: Any) -> dict[str, Any]:
    """A ModelVersion as the mapping `filters.evaluate` reads."""
    return {
        "metrics": mv.metrics,
        "params": mv.params,
        "tags": mv.tags,
        "name": mv.name,
        "version": float(mv.version),
        "format": mv.format,
        "status": mv.status,
        "created_at": mv.created_at,
    }


def check_gates(mv: Any, gates: list[str]) -> None:
    """Raise GateFailedError listing every gate condition `mv` fails, with the actual value."""
    fields = fields_of(mv)
    failed = []
    for gate in gates:
        for cond in parse_filter(gate):
            if not evaluate([cond], fields):
                actual = (
                    fields.get(cond.key) if cond.kind == "attr" else fields[cond.kind].get(cond.key)
                )
                failed.append(
                    f"{cond.kind}.{cond.key} {cond.op} {cond.value!r} (actual: {actual!r})"
                )
    if failed:
        raise GateFailedError(
            f"{mv.name} version {mv.version} fails promotion gate(s): {'; '.join(failed)}"
        )


def matches(mv: Any, conds: list[Condition]) -> bool:
    """True if `mv` satisfies every condition (the Python evaluation of a search)."""
    return evaluate(conds, fields_of(mv))
