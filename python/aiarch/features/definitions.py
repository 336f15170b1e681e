"""Feature definitions in Feast's nouns: Entity, Feature, FeatureView.

Definitions are plain frozen dataclasses; `FeatureStore.apply` stores them in the metadata store
(SQLite under ``AIARCH_HOME``). Feature types (see `types`): float32, int32 and bool (held as
float32: exact up to 2**24), float64 and int64 (exact), string (categorical) and vector[N]
(N float32 values, e.g. an embedding).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiarch.errors import InvalidArgumentError

from .types import VALID_TYPES, FeatureType, ViewLayout, parse_type

__all__ = ["ENTITY_DTYPES", "FEATURE_DTYPES", "Entity", "Feature", "FeatureView", "parse_ref"]

ENTITY_DTYPES = ("int64", "string")
"""Entity key types: 64-bit integers or strings (UTF-8 bytes online)."""

FEATURE_DTYPES = VALID_TYPES
"""Feature types accepted in definitions (``vector[N]`` with a length N)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"invalid {kind} name {name!r}: use 1-128 of [A-Za-z0-9_], not starting with a digit"
        )
    return name


@dataclass(frozen=True)
class Entity:
    """The thing features describe (a user, a card, a merchant), identified by one key."""

    name: str
    """Entity name, also the default key column name in sources and entity frames."""

    dtype: str = "int64"
    """Key type: ``"int64"`` or ``"string"``."""

    join_key: str = ""
    """Key column in sources and entity frames; defaults to ``name``."""

    description: str = ""
    """Free text shown by ``aiarch features list``."""

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        if self.dtype not in ENTITY_DTYPES:
            raise InvalidArgumentError(
                f"entity {self.name!r}: dtype must be one of {list(ENTITY_DTYPES)}, "
                f"got {self.dtype!r}"
            )
        if not self.join_key:
            object.__setattr__(self, "join_key", self.name)
        _check_name("join key", self.join_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "join_key": self.join_key,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entity:
        return cls(
            d["name"], d.get("dtype", "int64"), d.get("join_key", ""), d.get("description", "")
        )


@dataclass(frozen=True)
class Feature:
    """One typed value of a feature view, with the default served when it is missing or expired."""

    name: str
    """Feature name, unique within its view; also its column name in the source."""

    dtype: str = "float32"
    """Type: float32, float64, int32, int64, bool, string or vector[N]."""

    default: Any = None
    """Value served for a missing or expired row (and for nulls in the source); None = the
    type's zero: 0.0, 0, "" or N zeros (a vector also takes one number for every element)."""

    vocabulary: tuple[str, ...] = ()
    """String features only: the categories, in order. A served join (float model input)
    feeds a string as its position in this list, ``len(vocabulary)`` for any other value; a
    string feature without one cannot be joined into a float input."""

    type: FeatureType = field(init=False, repr=False, compare=False)
    """The parsed type."""

    def __post_init__(self) -> None:
        _check_name("feature", self.name)
        ftype = parse_type(self.name, self.dtype)
        object.__setattr__(self, "type", ftype)
        object.__setattr__(self, "dtype", ftype.name)
        object.__setattr__(self, "default", ftype.normalize_default(self.name, self.default))
        vocab = self.vocabulary
        if isinstance(vocab, str) or not all(isinstance(v, str) for v in vocab):
            raise InvalidArgumentError(
                f"feature {self.name!r}: vocabulary must be a list of strings, got {vocab!r}"
            )
        vocab = tuple(vocab)
        if vocab and ftype.kind != "string":
            raise InvalidArgumentError(
                f"feature {self.name!r}: a vocabulary applies to string features; "
                f"this one is {ftype.name}"
            )
        if len(set(vocab)) != len(vocab):
            raise InvalidArgumentError(f"feature {self.name!r}: vocabulary has duplicates")
        object.__setattr__(self, "vocabulary", vocab)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "default": self.default}
        if self.vocabulary:
            d["vocabulary"] = list(self.vocabulary)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Feature:
        return cls(
            d["name"], d.get("dtype", "float32"), d.get("default"), tuple(d.get("vocabulary", ()))
        )


@dataclass(frozen=True)
class FeatureView:
    """Features of one entity that come from one source and share a TTL."""

    name: str
    """View name; features are referred to as ``"view:feature"``."""

    entity: str
    """Name of the entity (an :class:`Entity` is accepted and replaced by its name)."""

    features: tuple[Feature, ...] = ()
    """The features, in row order."""

    source: str = ""
    """Parquet file, directory or glob holding the offline rows (key, event time, features)."""

    timestamp_field: str = "event_timestamp"
    """Event-time column of the source."""

    ttl: float = 0.0
    """Seconds after its event time during which a row is served (a ``timedelta`` is accepted);
    0 = rows never expire. Enforced on every online read and in training sets."""

    description: str = ""
    """Free text shown by ``aiarch features list``."""

    _fingerprint: str = field(default="", init=False, repr=False, compare=False)
    _layout: ViewLayout | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        if isinstance(self.entity, Entity):
            object.__setattr__(self, "entity", self.entity.name)
        _check_name("entity", self.entity)
        feats = tuple(self.features)
        if not feats:
            raise InvalidArgumentError(f"feature view {self.name!r} has no features")
        for f in feats:
            if not isinstance(f, Feature):
                raise InvalidArgumentError(
                    f"feature view {self.name!r}: features must be Feature objects, got {f!r}"
                )
        names = [f.name for f in feats]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidArgumentError(f"feature view {self.name!r}: duplicate features {dupes}")
        object.__setattr__(self, "features", feats)
        ttl = self.ttl.total_seconds() if isinstance(self.ttl, timedelta) else self.ttl
        try:
            ttl = float(ttl)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"feature view {self.name!r}: ttl must be seconds or a timedelta"
            ) from None
        if not ttl >= 0:
            raise InvalidArgumentError(f"feature view {self.name!r}: ttl must be >= 0, got {ttl}")
        object.__setattr__(self, "ttl", ttl)
        _check_name("timestamp field", self.timestamp_field)
        layout = ViewLayout(feats)
        object.__setattr__(self, "_layout", layout)
        shape: list[Any] = [self.entity, [(f.name, f.dtype) for f in feats]]
        if not layout.plain:
            # Typed rows (wide slots, blobs) are a second row format: a view that once held
            # int64 or float64 as float32 must not read its old rows as the new ones.
            shape.append("typed-rows-1")
        schema = json.dumps(shape)
        object.__setattr__(self, "_fingerprint", hashlib.sha1(schema.encode()).hexdigest()[:10])

    @property
    def ttl_ns(self) -> int:
        """TTL in nanoseconds (0 = none)."""
        return round(self.ttl * 1e9)

    @property
    def fingerprint(self) -> str:
        """Short hash of the row layout (entity, feature names and types). Online rows are stored
        under it, so a changed layout never reads rows written for another."""
        return self._fingerprint

    @property
    def layout(self) -> ViewLayout:
        """Where each feature lives in an online row."""
        assert self._layout is not None
        return self._layout

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entity": self.entity,
            "features": [f.to_json() for f in self.features],
            "source": self.source,
            "timestamp_field": self.timestamp_field,
            "ttl": self.ttl,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureView:
        return cls(
            name=d["name"],
            entity=d["entity"],
            features=tuple(Feature.from_json(f) for f in d["features"]),
            source=d.get("source", ""),
            timestamp_field=d.get("timestamp_field", "event_timestamp"),
            ttl=d.get("ttl", 0.0),
            description=d.get("description", ""),
        )


def parse_ref(ref: str) -> tuple[str, str]:
    """``"view:feature"`` → (view, feature); ``"view:*"`` selects every feature of the view."""
    if not isinstance(ref, str):
        raise InvalidArgumentError(f"a feature reference is 'view:feature', got {ref!r}")
    view, sep, feat = ref.partition(":")
    if not sep or not view or not feat:
        raise InvalidArgumentError(f"a feature reference is 'view:feature', got {ref!r}")
    return view, feat
