"""The search filter language: conditions joined by `and`.

    metrics.auc >= 0.9 and tags.task = 'fraud' and params.optimizer != 'sgd'

A condition is `FIELD OP VALUE`. FIELD is `metrics.KEY` (numbers), `params.KEY` or `tags.KEY`
(strings) of the version, `model.tags.KEY` or `model.description` (strings) of the model the
version belongs to, or an attribute: `name`, `version`, `format`, `status`, `created_at`. OP is one of
`= == != < <= > >=` or `like` (SQL `%`/`_` wildcards, strings only). VALUE is a number or a
quoted string ('...' or "..."). A key with unusual characters can be back-quoted:
``tags.`team name` = 'risk'``, ``model.tags.`cost center` = 'risk'``. The same parsed conditions compile to SQL (`db.py`) and evaluate
in Python (promotion gates).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["Condition", "OrderKey", "evaluate", "parse_filter", "parse_order_by"]

KINDS = ("metrics", "params", "tags")
MODEL_TAGS = "model.tags"
"""The kind of a `model.tags.KEY` condition: a tag of the model, not of the version."""
ATTRIBUTES = {"name": str, "version": int, "format": str, "status": str, "created_at": float}
MODEL_ATTRIBUTES = {"model.name": str, "model.description": str}
"""Attributes of the model a version belongs to (`model.name` is the same as `name`)."""
_EXPECTED = (
    "expected metrics.KEY, params.KEY, tags.KEY, model.tags.KEY, model.description or one of "
)
OPS = ("=", "!=", "<", "<=", ">", ">=", "like")

_ATTR_TYPES = {**ATTRIBUTES, **MODEL_ATTRIBUTES}

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op>==|!=|<=|>=|<|>|=)
    | (?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:`[^`]+`|[A-Za-z0-9_\-]+))*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Condition:
    """One `kind.key op value` test; kind is metrics/params/tags, "model.tags", or "attr" (key =
    an attribute of the version or of its model, e.g. "status", "model.description")."""

    kind: str
    key: str
    op: str
    value: str | float | int


@dataclass(frozen=True)
class OrderKey:
    kind: str
    key: str
    descending: bool


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def _key(text: str, key: str, where: str) -> str:
    """A key as written after `kind.`: plain (dots allowed) or one back-quoted name."""
    if key.startswith("`") or key.endswith("`"):
        if len(key) < 3 or not (key.startswith("`") and key.endswith("`")) or "`" in key[1:-1]:
            raise InvalidArgumentError(
                f"{where}: bad key in {text!r}; back-quote the whole key: kind.`KEY`"
            )
        return key[1:-1]
    return key


def _field(text: str, where: str) -> tuple[str, str]:
    unknown = InvalidArgumentError(
        f"{where}: unknown field {text!r}; {_EXPECTED}{sorted(ATTRIBUTES)}"
    )
    head, dot, key = text.partition(".")
    if not dot:
        if text not in ATTRIBUTES:
            raise unknown
        return "attr", text
    if head in KINDS:
        return head, _key(text, key, where)
    if head == "model":
        if text in MODEL_ATTRIBUTES:
            return "attr", text
        sub, dot, key = key.partition(".")
        if sub == "tags" and dot and key:
            return MODEL_TAGS, _key(text, key, where)
    raise unknown


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise InvalidArgumentError(
                f"filter: cannot parse at position {pos}: {text[pos : pos + 30]!r}"
            )
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse_filter(text: str | None) -> list[Condition]:
    """Parse a filter string into conditions (all must hold); "" or None → no condition."""
    if text is None or not text.strip():
        return []
    toks = _tokens(text)
    conds: list[Condition] = []
    i = 0
    while True:
        if i + 3 > len(toks):
            raise InvalidArgumentError(
                f"filter {text!r}: incomplete condition; expected FIELD OP VALUE "
                "(e.g. metrics.auc >= 0.9)"
            )
        (fk, ft), (ok, ot), (vk, vt) = toks[i], toks[i + 1], toks[i + 2]
        if fk != "field":
            raise InvalidArgumentError(f"filter {text!r}: expected a field, got {ft!r}")
        kind, key = _field(ft, f"filter {text!r}")
        op = "like" if ok == "field" and ot.lower() == "like" else ot
        if ok != "op" and op != "like":
            raise InvalidArgumentError(
                f"filter {text!r}: expected an operator {list(OPS)} after {ft!r}, got {ot!r}"
            )
        op = "=" if op == "==" else op
        value: str | float | int
        if vk == "num":
            value = float(vt)
        elif vk == "str":
            value = _unquote(vt)
        else:
            raise InvalidArgumentError(
                f"filter {text!r}: expected a number or a quoted string after {ot!r}, got {vt!r}"
            )
        wants_number = kind == "metrics" or (kind == "attr" and _ATTR_TYPES[key] is not str)
        if op == "like" and wants_number:
            raise InvalidArgumentError(f"filter {text!r}: like applies to strings, not {ft}")
        if wants_number and not isinstance(value, float):
            raise InvalidArgumentError(f"filter {text!r}: {ft} compares with a number, got {vt}")
        if not wants_number and isinstance(value, float):
            raise InvalidArgumentError(
                f"filter {text!r}: {ft} is a string; quote the value ('{vt}')"
            )
        conds.append(Condition(kind, key, op, value))
        i += 3
        if i == len(toks):
            return conds
        if toks[i][0] != "field" or toks[i][1].lower() != "and":
            raise InvalidArgumentError(
                f"filter {text!r}: expected 'and' between conditions, got {toks[i][1]!r} "
                "(only 'and' is supported)"
            )
        i += 1
        if i == len(toks):
            raise InvalidArgumentError(f"filter {text!r}: dangling 'and'")


def parse_order_by(text: str | list[str] | None) -> list[OrderKey]:
    """`"metrics.auc desc, version"` (or a list of such items) → order keys."""
    if not text:
        return []
    items = text if isinstance(text, list) else text.split(",")
    out = []
    for item in items:
        parts = item.split()
        if not parts or len(parts) > 2:
            raise InvalidArgumentError(f"order_by: expected 'FIELD [asc|desc]', got {item!r}")
        direction = parts[1].lower() if len(parts) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise InvalidArgumentError(f"order_by: direction must be asc or desc, got {parts[1]!r}")
        kind, key = _field(parts[0], "order_by")
        out.append(OrderKey(kind, key, direction == "desc"))
    return out


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "like":
        pattern = str(right).replace("*", "[*]").replace("?", "[?]")
        pattern = pattern.replace("%", "*").replace("_", "?")
        return fnmatch.fnmatchcase(str(left), pattern)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def evaluate(conds: list[Condition], fields: Mapping[str, Any]) -> bool:
    """True if every condition holds for `fields` (keys: metrics/params/tags/"model.tags" dicts
    and the attributes). A missing key fails its condition (as in SQL)."""
    for c in conds:
        if c.kind == "attr":
            left = fields.get(c.key)
        else:
            left = (fields.get(c.kind) or {}).get(c.key)
        if left is None:
            return False
        if c.kind == "metrics":
            left = float(left)
        elif c.kind in ("params", "tags", MODEL_TAGS):
            left = str(left)
        if not _compare(left, c.op, c.value):
            return False
    return True
