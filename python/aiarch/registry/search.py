"""SQL of `Registry.search`, the row shape every version query selects, and the Python
evaluation of the same filters (promotion gates, naive baselines)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from .errors import GateFailedError, InvalidArgumentError
from .filters import KINDS, MODEL_TAGS, Condition, OrderKey, evaluate, parse_filter

__all__ = [
    "VERSION_COLUMNS",
    "check_gates",
    "decode_page_token",
    "encode_page_token",
    "fields_of",
    "matches",
    "model_filter_sql",
    "search_sql",
]

VERSION_COLUMNS = (
    "m.name, v.version, v.digest, v.format, v.artifact_name, v.entry, v.signature, v.metrics, "
    "v.params, v.tags, v.lineage, v.created_at, v.created_by, v.status, v.size_bytes, v.id, "
    "v.model_id"
)
"""Columns of a version row, in the order `Registry._row_to_version` reads them."""
SORT_COLUMNS_AT = 17
"""A search row carries its sort key (one value per order key, then `v.id`) from this column."""

_ATTR_SQL = {
    "name": "m.name",
    "version": "v.version",
    "format": "v.format",
    "status": "v.status",
    "created_at": "v.created_at",
    "model.name": "m.name",
    "model.description": "m.description",
}
_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "like": "LIKE"}
# kind → (table, its id column, the version row's column it joins on)
_KV_TABLES = {
    "metrics": ("version_metrics", "version_id", "v.id"),
    "params": ("version_params", "version_id", "v.id"),
    "tags": ("version_tags", "version_id", "v.id"),
    MODEL_TAGS: ("model_tags", "model_id", "v.model_id"),
}


def _after(keys: list[tuple[str, bool, bool]], cursor: list[Any]) -> tuple[str, list[Any]]:
    """SQL true for rows that sort strictly after `cursor` under `keys` ((expression,
    descending, nullable), ending with the unique `v.id`): keyset paging, so rows inserted or
    deleted between pages never shift a later page. NULLs sort last in either direction."""
    branches: list[str] = []
    args: list[Any] = []
    equal: list[tuple[str, list[Any]]] = []
    for (expr, descending, nullable), value in zip(keys, cursor, strict=True):
        if value is None:
            # Only NULLs tie with NULL and nothing sorts after it within this key.
            equal.append((f"{expr} IS NULL", []))
            continue
        after = f"{expr} {'<' if descending else '>'} ?"
        if nullable:
            after = f"({after} OR {expr} IS NULL)"
        branches.append(" AND ".join([e for e, _ in equal] + [after]))
        for _, a in equal:
            args.extend(a)
        args.append(value)
        equal.append((f"{expr} = ?", [value]))
    return "(" + " OR ".join(f"({b})" for b in branches) + ")", args


def search_sql(
    conds: list[Condition],
    order: list[OrderKey],
    limit: int,
    cursor: list[Any] | None = None,
    extra: str | None = None,
) -> tuple[str, list[Any]]:
    """One SELECT of at most `limit` rows after `cursor` (the sort key of the previous page's
    last row). Version key/value conditions are answered first, on ids only: the first one (an
    equality if there is one: usually the most selective) scans its (key, value) index and
    every other is a probe of its table's (version_id, key) primary key. Only the matching ids
    (at most `limit` of them when no other ordering or condition applies) reach the wide
    `versions` rows. Each row holds its sort key from column `SORT_COLUMNS_AT`, then the
    column `extra` (an SQL expression over `v`, without placeholders) when given."""
    kv = sorted((c for c in conds if c.kind in KINDS), key=lambda c: c.op != "=")
    model_tags = [c for c in conds if c.kind == MODEL_TAGS]
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
        if not attrs and not model_tags and not order:
            if cursor is not None:
                inner.append("AND c0.version_id < ?")
                args.append(cursor[-1])
                cursor = None  # applied here, on ids only
            inner.append("ORDER BY c0.version_id DESC LIMIT ?")
            args.append(limit)
        source = "(" + " ".join(inner) + ") hits JOIN versions v ON v.id = hits.id "
    joins = []
    for i, c in enumerate(model_tags):
        joins.append(
            f"JOIN model_tags t{i} ON t{i}.model_id = v.model_id AND t{i}.key = ? "
            f"AND t{i}.value {_SQL_OPS[c.op]} ?"
        )
        args.extend((c.key, c.value))
    keys: list[tuple[str, bool, bool]] = []
    for i, o in enumerate(order):
        if o.kind == "attr":
            keys.append((_ATTR_SQL[o.key], o.descending, False))
        else:
            table, id_column, joined_on = _KV_TABLES[o.kind]
            joins.append(
                f"LEFT JOIN {table} o{i} ON o{i}.{id_column} = {joined_on} AND o{i}.key = ?"
            )
            args.append(o.key)
            keys.append((f"o{i}.value", o.descending, True))
    keys.append(("v.id", True, False))
    sort_columns = ", ".join(expr for expr, _, _ in keys)
    tail = f", {extra}" if extra else ""
    sql = (
        f"SELECT {VERSION_COLUMNS}, {sort_columns}{tail} FROM {source}"
        "JOIN models m ON m.id = v.model_id "
    )
    sql += " ".join(joins)
    where = [f"{_ATTR_SQL[c.key]} {_SQL_OPS[c.op]} ?" for c in attrs]
    args.extend(c.value for c in attrs)
    if cursor is not None:
        after, after_args = _after(keys, cursor)
        where.append(after)
        args.extend(after_args)
    if where:
        sql += " WHERE " + " AND ".join(where)
    order_sql = [
        f"{expr} {'DESC' if descending else 'ASC'}{' NULLS LAST' if nullable else ''}"
        for expr, descending, nullable in keys
    ]
    sql += " ORDER BY " + ", ".join(order_sql) + " LIMIT ?"
    args.append(limit)
    return sql, args


_TOKEN_VERSION = 1


def _query_id(conds: list[Condition], order: list[OrderKey]) -> str:
    """A short digest naming one search (its parsed filter and order), carried by its tokens."""
    text = repr((sorted(conds, key=repr), order))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key_types(order: list[OrderKey]) -> list[tuple[type, ...]]:
    """The JSON types of a sort key's values, order key by order key."""
    numbers = (int, float)
    return [
        numbers
        if o.kind == "metrics" or (o.kind == "attr" and o.key in ("version", "created_at"))
        else (str,)
        for o in order
    ]


def encode_page_token(conds: list[Condition], order: list[OrderKey], sort_key: list[Any]) -> str:
    """The opaque token naming the position after a row with `sort_key` in this search."""
    payload = {"v": _TOKEN_VERSION, "q": _query_id(conds, order), "after": list(sort_key)}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, conds: list[Condition], order: list[OrderKey]) -> list[Any]:
    """The sort key a token from `encode_page_token` carries; InvalidArgumentError when it is
    not a token or belongs to another search (another filter or order_by)."""
    shown = token[:40] + ("..." if len(token) > 40 else "") if isinstance(token, str) else token
    hint = "pass the next_page_token of the previous page of the same search, or no token"
    if not isinstance(token, str) or not token:
        raise InvalidArgumentError(f"page_token must be a non-empty string, got {shown!r}; {hint}")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"page_token {shown!r} is not a page token; {hint}") from None
    types = [*_key_types(order), (int,)]
    after = payload.get("after") if isinstance(payload, dict) else None
    if (
        not isinstance(payload, dict)
        or payload.get("v") != _TOKEN_VERSION
        or not isinstance(after, list)
        or len(after) != len(types)
        or not all(
            (v is None and i < len(types) - 1) or (isinstance(v, t) and not isinstance(v, bool))
            for i, (v, t) in enumerate(zip(after, types, strict=True))
        )
    ):
        raise InvalidArgumentError(f"page_token {shown!r} is not a page token; {hint}")
    if payload.get("q") != _query_id(conds, order):
        raise InvalidArgumentError(
            f"page_token {shown!r} belongs to a search with another filter or order_by; {hint}"
        )
    return after


_MODEL_COLUMNS = {"name": "m.name", "model.name": "m.name", "model.description": "m.description"}


def model_filter_sql(conds: list[Condition], text: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (over `models m`) of `Registry.list_models`: conditions on `name`,
    `model.description` and `model.tags.KEY`; a condition on versions is refused."""
    where: list[str] = []
    args: list[Any] = []
    for c in conds:
        op = _SQL_OPS[c.op]
        if c.kind == MODEL_TAGS:
            where.append(
                "EXISTS (SELECT 1 FROM model_tags t WHERE t.model_id = m.id AND t.key = ? "
                f"AND t.value {op} ?)"
            )
            args.extend((c.key, c.value))
        elif c.kind == "attr" and c.key in _MODEL_COLUMNS:
            where.append(f"{_MODEL_COLUMNS[c.key]} {op} ?")
            args.append(c.value)
        else:
            shown = c.key if c.kind == "attr" else f"{c.kind}.{c.key}"
            raise InvalidArgumentError(
                f"model filter {text!r}: {shown} is a field of versions; models are filtered by "
                "name, model.description and model.tags.KEY (search() filters versions)"
            )
    return " AND ".join(where), args


def fields_of(mv: Any, model: Any = None) -> dict[str, Any]:
    """A ModelVersion (and its model's ModelSummary, for `model.*` fields) as the mapping
    `filters.evaluate` reads. Without `model`, every `model.tags`/`model.description`
    condition fails."""
    return {
        MODEL_TAGS: model.tags if model is not None else {},
        "model.name": mv.name,
        "model.description": model.description if model is not None else None,
        "metrics": mv.metrics,
        "params": mv.params,
        "tags": mv.tags,
        "name": mv.name,
        "version": float(mv.version),
        "format": mv.format,
        "status": mv.status,
        "created_at": mv.created_at,
    }


def check_gates(mv: Any, gates: list[str], model: Any = None) -> None:
    """Raise GateFailedError listing every gate condition `mv` (of `model`) fails, with the
    actual value."""
    fields = fields_of(mv, model)
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


def matches(mv: Any, conds: list[Condition], model: Any = None) -> bool:
    """True if `mv` (of `model`) satisfies every condition (the Python evaluation of a search)."""
    return evaluate(conds, fields_of(mv, model))
