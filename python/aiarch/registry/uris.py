"""Model references: `models:/name/3`, `models:/name@production`, `models:/name/latest`,
and the short forms `name@production`, `name/3`, `name/latest`, `name`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgumentError

__all__ = ["ModelRef", "is_registry_ref", "parse_ref", "validate_alias", "validate_name"]

SCHEME = "models:/"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")


def validate_name(name: str) -> str:
    """`name` if it is a valid model name (the server's rule: it appears in URLs and paths)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgumentError(
            f"invalid model name {name!r}: use 1-128 of [A-Za-z0-9_.-], starting with a letter "
            "or digit, without '..'"
        )
    return name


def validate_alias(alias: str) -> str:
    """`alias` if it is a valid alias name (`production`, `staging`, `canary-2`, ...)."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias == "latest":
        raise InvalidArgumentError(
            f"invalid alias {alias!r}: use 1-64 of [A-Za-z0-9_-], starting with a letter "
            "('latest' is reserved)"
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: exactly one of `version` / `alias` is set, or neither (= latest)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        if self.version is not None:
            return f"{SCHEME}{self.name}/{self.version}"
        if self.alias is not None:
            return f"{SCHEME}{self.name}@{self.alias}"
        return f"{SCHEME}{self.name}/latest"


def parse_ref(ref: str) -> ModelRef:
    """Parse any accepted reference form; raises InvalidArgumentError naming the forms."""
    if not isinstance(ref, str):
        raise InvalidArgumentError(f"expected a model reference string, got {type(ref).__name__}")
    body = ref[len(SCHEME) :] if ref.startswith(SCHEME) else ref
    try:
        if "@" in body:
            name, _, alias = body.partition("@")
            return ModelRef(validate_name(name), alias=validate_alias(alias))
        name, sep, tail = body.partition("/")
        validate_name(name)
        if not sep or tail == "latest":
            return ModelRef(name)
        if tail.isdigit() and int(tail) > 0:
            return ModelRef(name, version=int(tail))
        raise InvalidArgumentError(f"bad version {tail!r}")
    except InvalidArgumentError as e:
        raise InvalidArgumentError(
            f"invalid model reference {ref!r} ({e}); expected models:/NAME/VERSION, "
            "models:/NAME@ALIAS, models:/NAME/latest, NAME@ALIAS or NAME/VERSION"
        ) from None


def is_registry_ref(source: str) -> bool:
    """True for `models:/...` and `NAME@ALIAS` (the forms that cannot be a Python source)."""
    if source.startswith(SCHEME):
        return True
    if ":" in source or "@" not in source:
        return False
    try:
        parse_ref(source)
    except InvalidArgumentError:
        return False
    return True
