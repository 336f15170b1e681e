"""The model registry API: versions of models, content-addressed artifacts, aliases with
history, search, promotion gates and rollback.

    reg = Registry()                                  # SQLite under $AIARCH_HOME (./.aiarch)
    mv = reg.register("fraud", "model.onnx", metrics={"auc": 0.93}, tags={"task": "fraud"})
    reg.promote("fraud", mv.version, to="production", gates="metrics.auc >= 0.9")
    mv = reg.open("fraud", alias="production")        # get + verify the artifact's digest
    reg.rollback("fraud")                             # production back to the previous holder
    reg.set_model_tag("fraud", "team", "risk")        # tags and a description of the model
    page = reg.search("model.tags.team = 'risk'")     # a page; page.next_page_token continues it
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from aiarch.redact import redact_url

from .db import Database, Tx, open_database
from .errors import (
    ConflictError,
    IntegrityError,
    InvalidArgumentError,
    ModelNotFoundError,
)
from .filters import parse_filter, parse_order_by
from .objectstore import ObjectArtifactStore
from .search import (
    SORT_COLUMNS_AT,
    VERSION_COLUMNS,
    check_gates,
    decode_page_token,
    encode_page_token,
    model_filter_sql,
    search_sql,
)
from .signature import infer_signature
from .store import ArtifactStore
from .uris import SCHEME, ModelRef, parse_ref, validate_alias, validate_name

__all__ = [
    "FORMATS_BY_SUFFIX",
    "AliasChange",
    "AliasWatch",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "SearchPage",
]

FORMATS_BY_SUFFIX = {".onnx": "onnx", ".pt2": "torch_export", ".pt": "torchscript", ".py": "python"}
"""File suffix → format, used when `register` is given no `format`."""


_decode = msgspec.json.decode


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class ModelVersion:
    """One registered version. `artifact_path` is the artifact inside the store (a file or a
    folder); it is verified against `digest` by `Registry.open`."""

    name: str
    version: int
    digest: str
    format: str
    artifact_path: Path
    entry: str | None = None
    signature: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    created_by: str = ""
    status: str = "active"
    size_bytes: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}/{self.version}"

    @property
    def source(self) -> str:
        """What a model loader takes: the artifact path, plus `:entry` for Python artifacts."""
        path = str(self.artifact_path)
        return f"{path}:{self.entry}" if self.entry else path

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifact_path"] = str(self.artifact_path)
        d["aliases"] = list(self.aliases)
        d["uri"] = self.uri
        return d


@dataclass(frozen=True)
class AliasChange:
    """One entry of an alias's append-only history."""

    alias: str
    action: str  # "promote", "set", "rollback"
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: float
    id: int = 0


@dataclass(frozen=True)
class ModelSummary:
    """A model: its version count, latest active version, aliases, description and tags."""

    name: str
    versions: int
    latest: int | None
    aliases: dict[str, int]
    created_at: float
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchPage(list[ModelVersion]):
    """One page of a search: the versions (a list), and `next_page_token`, the token that
    continues the search where this page stopped, or None when nothing is left. `truncated`
    is True exactly when more matching versions exist beyond this page."""

    def __init__(self, versions: Sequence[ModelVersion] = (), next_page_token: str | None = None):
        super().__init__(versions)
        self.next_page_token = next_page_token

    @property
    def truncated(self) -> bool:
        return self.next_page_token is not None

    def to_dict(self) -> dict[str, Any]:
        """`{"versions": [...], "next_page_token": ..., "truncated": ...}`."""
        return {
            "versions": [v.to_dict() for v in self],
            "next_page_token": self.next_page_token,
            "truncated": self.truncated,
        }


def _actor() -> str:
    user = os.environ.get("AIARCH_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return f"uid:{os.getuid()}"


def _str_map(what: str, value: Mapping[str, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{what} must be a mapping of str → value, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise InvalidArgumentError(f"{what}: keys must be non-empty strings, got {k!r}")
        out[k] = v if isinstance(v, str) else json.dumps(v)
    return out


def _metric_map(value: Mapping[str, Any] | None) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"metrics must be a mapping of str → number, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise InvalidArgumentError(f"metrics: keys must be non-empty strings, got {k!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"metrics.{k} must be a number, got {v!r}") from None
        if f != f:
            raise InvalidArgumentError(f"metrics.{k} is NaN")
        out[k] = f
    return out


def _split_python_ref(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    text = os.fspath(path)
    head, sep, attr = text.rpartition(":")
    if sep and head.endswith(".py") and attr:
        return Path(head), attr
    return Path(text), None


class AliasWatch:
    """Tells a server that an alias moved: `poll()` costs one indexed read and returns the new
    version (or None when unchanged). Call it on a timer; it never blocks on writers."""

    def __init__(self, registry: Registry, name: str, alias: str):
        self.registry = registry
        self.name = name
        self.alias = alias
        self.version: int | None = registry.alias_version(name, alias)

    def poll(self) -> int | None:
        current = self.registry.alias_version(self.name, self.alias)
        if current != self.version:
            self.version = current
            return current
        return None


class Registry:
    """Models, versions and aliases in SQLite (default) or PostgreSQL, artifacts in a
    content-addressed store. Thread-safe; several processes may share one registry.

    `url`: None → `$AIARCH_REGISTRY` if set, else SQLite at `$AIARCH_HOME/registry.db`
    (AIARCH_HOME defaults to `./.aiarch`); `postgresql://...` → PostgreSQL (psycopg 3);
    `sqlite:///PATH` → that SQLite file.

    `artifacts`: None → `$AIARCH_ARTIFACTS` if set, else the local store; `s3://BUCKET/PREFIX`
    (see `aiarch.registry.objectstore`) → a bucket shared by every host, with the local store as
    this host's cache. The local store lives under `store` (default `$AIARCH_HOME/artifacts`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        store: str | os.PathLike[str] | None = None,
        artifacts: str | None = None,
    ):
        home_path = Path(home if home is not None else os.environ.get("AIARCH_HOME", ".aiarch"))
        url = url or os.environ.get("AIARCH_REGISTRY") or None
        artifacts = artifacts or os.environ.get("AIARCH_ARTIFACTS") or None
        if artifacts is not None and not artifacts.startswith("s3://"):
            raise InvalidArgumentError(
                f"artifacts must be an s3://BUCKET[/PREFIX] URL, got {redact_url(artifacts)!r} "
                "(a local store is chosen with store= or $AIARCH_HOME)"
            )
        root = Path(store) if store is not None else home_path / "artifacts"
        local = ArtifactStore(root.absolute())
        self.store: ArtifactStore | ObjectArtifactStore = (
            local if artifacts is None else ObjectArtifactStore(artifacts, local)
        )
        self.db: Database = open_database(url, home_path)
        self.url = self.db.url
        self._trees = str(self.store.trees)
        self.db.migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registering -----------------------------------------------------------------------
    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        signature: dict[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        lineage: Mapping[str, Any] | None = None,
        reference: Any = None,
    ) -> ModelVersion:
        """Copy the artifact into the store and record the next version of `name`.

        `path`: a file, a folder, or `file.py:attr` for a Python callable. `format` is inferred
        from the suffix when None (.onnx, .pt2, .pt, .py). `reference`: bytes or an object with
        `to_bytes()` (a drift reference profile), stored with the version. The version number
        is assigned in the same transaction that records it: a failure at any point leaves no
        version behind. Thread-safe.
        """
        validate_name(name)
        art, entry = _split_python_ref(path)
        if not art.exists():
            raise InvalidArgumentError(f"artifact {os.fspath(path)!r} does not exist")
        if format is None:
            if art.is_dir():
                raise InvalidArgumentError(
                    f"cannot infer the format of folder {art}; pass format= (known by suffix: "
                    f"{', '.join(f'{s} → {f}' for s, f in FORMATS_BY_SUFFIX.items())})"
                )
            format = FORMATS_BY_SUFFIX.get(art.suffix)
            if format is None:
                raise InvalidArgumentError(
                    f"cannot infer the format of {art.name!r} from its suffix; pass format= "
                    f"(known suffixes: {', '.join(FORMATS_BY_SUFFIX)})"
                )
        if entry is not None and format != "python":
            raise InvalidArgumentError(f"':{entry}' applies to Python artifacts, not {format}")
        metric_map = _metric_map(metrics)
        param_map = _str_map("params", params)
        tag_map = _str_map("tags", tags)
        lineage_map = dict(lineage or {})
        try:
            lineage_json = json.dumps(lineage_map, sort_keys=True)
        except TypeError as e:
            raise InvalidArgumentError(f"lineage must be JSON-serializable: {e}") from None
        if reference is not None and not isinstance(reference, bytes | bytearray | memoryview):
            # int.to_bytes exists but means something else: numbers are not profiles.
            to_bytes = (
                None if isinstance(reference, int | str) else getattr(reference, "to_bytes", None)
            )
            if to_bytes is None:
                raise InvalidArgumentError(
                    f"reference must be bytes or have to_bytes(), got {type(reference).__name__}"
                )
            reference = to_bytes()
        if signature is None:
            signature = infer_signature(format, art, entry)

        manifest = self.store.put(art)
        artifact_name = manifest.files[0][0] if manifest.kind == "file" else ""
        now = time.time()
        actor = _actor()
        with self.db.tx(write=True) as tx:
            tx.execute(
                "INSERT INTO models (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, now),
            )
            model_id, version = tx.one(
                "UPDATE models SET next_version = next_version + 1 WHERE name = ? "
                "RETURNING id, next_version - 1",
                (name,),
            ) or (0, 0)
            version_id = tx.scalar(
                "INSERT INTO versions (model_id, version, digest, format, artifact_name, entry, "
                "signature, metrics, params, tags, lineage, size_bytes, status, created_at, "
                "created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?) "
                "RETURNING id",
                (
                    model_id,
                    version,
                    manifest.digest,
                    format,
                    artifact_name,
                    entry,
                    json.dumps(signature) if signature is not None else None,
                    json.dumps(metric_map),
                    json.dumps(param_map),
                    json.dumps(tag_map),
                    lineage_json,
                    manifest.size,
                    now,
                    actor,
                ),
            )
            for table, values in (
                ("version_metrics", metric_map),
                ("version_params", param_map),
                ("version_tags", tag_map),
            ):
                for k, v in values.items():
                    tx.execute(
                        f"INSERT INTO {table} (version_id, key, value) VALUES (?, ?, ?)",
                        (version_id, k, v),
                    )
            if reference is not None:
                tx.execute(
                    "INSERT INTO version_references (version_id, data) VALUES (?, ?)",
                    (version_id, bytes(reference)),
                )
        if not self.store.has(manifest.digest):
            # A concurrent delete of the last version sharing this content removed the tree
            # between the copy and the commit: put it back (content-addressed, idempotent).
            self.store.put(art)
        return ModelVersion(
            name=name,
            version=int(version),
            digest=manifest.digest,
            format=format,
            artifact_path=self.store.artifact_path(manifest.digest, manifest),
            entry=entry,
            signature=signature,
            metrics=metric_map,
            params=param_map,
            tags=tag_map,
            lineage=lineage_map,
            created_at=now,
            created_by=actor,
            size_bytes=manifest.size,
        )

    # -- reading ---------------------------------------------------------------------------
    def _row_to_version(self, row: Sequence[Any], aliases: tuple[str, ...] = ()) -> ModelVersion:
        (name, version, digest, fmt, artifact_name, entry, sig, metrics, params, tags) = row[:10]
        lineage, created_at, created_by, status, size = row[10:15]
        tree = f"{self._trees}/{digest}"
        return ModelVersion(
            name=name,
            version=int(version),
            digest=digest,
            format=fmt,
            artifact_path=Path(f"{tree}/{artifact_name}" if artifact_name else tree),
            entry=entry,
            signature=_decode(sig) if sig else None,
            metrics=_decode(metrics),
            params=_decode(params),
            tags=_decode(tags),
            lineage=_decode(lineage),
            created_at=float(created_at),
            created_by=created_by,
            status=status,
            size_bytes=int(size),
            aliases=aliases,
        )

    def _model_id(self, tx: Tx, name: str, lock: bool = False) -> int:
        suffix = " FOR UPDATE" if lock and tx.postgres else ""
        model_id = tx.scalar(f"SELECT id FROM models WHERE name = ?{suffix}", (name,))
        if model_id is None:
            names = [r[0] for r in tx.all("SELECT name FROM models ORDER BY name LIMIT 21")]
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ModelNotFoundError(
                f"no model named {name!r} in the registry; models: {shown or '(none)'}"
            )
        return int(model_id)

    def model_id_in(self, tx: Tx, name: str, *, lock: bool = False) -> int:
        """The id of model `name` inside the caller's transaction `tx`; `lock` holds the model
        row until it ends (serializing alias changes of the model). ModelNotFoundError naming
        the models when there is none."""
        return self._model_id(tx, name, lock)

    def _missing_version(self, tx: Tx, model_id: int, name: str, what: str) -> ModelNotFoundError:
        versions = [
            int(r[0])
            for r in tx.all(
                "SELECT version FROM versions WHERE model_id = ? ORDER BY version", (model_id,)
            )
        ]
        aliases = {
            r[0]: int(r[1])
            for r in tx.all("SELECT alias, version FROM aliases WHERE model_id = ?", (model_id,))
        }
        return ModelNotFoundError(
            f"model {name!r} has no {what}; versions: {_ranges(versions) or '(none)'}; aliases: "
            + (", ".join(f"{a} → {v}" for a, v in sorted(aliases.items())) or "(none)")
        )

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """A version by number, by alias, or the latest active one. Raises ModelNotFoundError
        naming what exists. Thread-safe."""
        if version is not None and alias is not None:
            raise InvalidArgumentError("give a version or an alias, not both")
        # One statement, outside an explicit transaction: one round trip to PostgreSQL.
        held = self._held_aliases()
        if alias is not None:
            sql = (
                f"SELECT {VERSION_COLUMNS}, {held} FROM aliases a "
                "JOIN models m ON m.id = a.model_id "
                "JOIN versions v ON v.model_id = a.model_id AND v.version = a.version "
                "WHERE m.name = ? AND a.alias = ?"
            )
            args: tuple[Any, ...] = (name, alias)
            what = f"alias {alias!r}"
        elif version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise InvalidArgumentError(f"version must be an int, got {version!r}")
            sql = (
                f"SELECT {VERSION_COLUMNS}, {held} FROM versions v "
                "JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?"
            )
            args = (name, version)
            what = f"version {version}"
        else:
            sql = (
                f"SELECT {VERSION_COLUMNS}, {held} FROM versions v "
                "JOIN models m ON m.id = v.model_id "
                "WHERE m.name = ? AND v.status = 'active' ORDER BY v.version DESC LIMIT 1"
            )
            args = (name,)
            what = "active version"
        row = self.db.query_one(sql, args)
        if row is None:
            with self.db.tx() as tx:
                raise self._missing_version(tx, self._model_id(tx, name), name, what)
        return self._row_to_version(row, _aliases_of(row[17]))

    def _held_aliases(self) -> str:
        """SQL of one column: the aliases that point at version `v`, comma-separated (NULL for
        none), read in the same statement as the version."""
        return (
            f"(SELECT {self.db.string_agg('a2.alias')} FROM aliases a2 "
            "WHERE a2.model_id = v.model_id AND a2.version = v.version)"
        )

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """`models:/n/3`, `models:/n@production`, `models:/n/latest`, `n@production`, `n/3`."""
        r = ref if isinstance(ref, ModelRef) else parse_ref(ref)
        return self.get(r.name, r.version, r.alias)

    def open(self, name: str, version: int | None = None, alias: str | None = None) -> ModelVersion:
        """`get` + re-hash the artifact against its digest: what every load must call.
        `name` may also be a reference (`fraud@production`, `models:/fraud/3`). Raises
        IntegrityError on a tampered or missing artifact."""
        if (
            version is None
            and alias is None
            and ("@" in name or "/" in name or name.startswith(SCHEME))
        ):
            mv = self.resolve(name)
        else:
            mv = self.get(name, version, alias)
        self._verified(mv, self.store.verify)
        return mv

    def _verified(self, mv: ModelVersion, check: Any) -> None:
        try:
            check(mv.digest)
        except IntegrityError as e:
            raise IntegrityError(f"{mv.uri} cannot be loaded: {e}") from None

    def verify(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> ModelVersion:
        """Re-hash a version's artifact where it is stored (the bucket, for an object store;
        this host's cache is not trusted for this); returns the version, or raises
        IntegrityError naming it and the file that is missing or altered."""
        if (
            version is None
            and alias is None
            and ("@" in name or "/" in name or name.startswith(SCHEME))
        ):
            mv = self.resolve(name)
        else:
            mv = self.get(name, version, alias)
        self._verified(mv, self.store.check)
        return mv

    def load_reference(self, name: str, version: int) -> bytes | None:
        """The drift reference stored with a version, or None."""
        with self.db.tx() as tx:
            row = tx.one(
                "SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id "
                "WHERE m.name = ? AND v.version = ?",
                (name, version),
            )
            if row is None:
                raise self._missing_version(
                    tx, self._model_id(tx, name), name, f"version {version}"
                )
            data = tx.scalar("SELECT data FROM version_references WHERE version_id = ?", (row[0],))
        return None if data is None else bytes(data)

    def list_models(self, filter: str | None = None) -> list[ModelSummary]:
        """Every model (or those matching `filter`, conditions on `name`, `model.description`
        and `model.tags.KEY` only, e.g. `model.tags.team = 'risk'`) with its version count,
        latest active version, aliases, description and tags, by name."""
        where, args = model_filter_sql(parse_filter(filter), filter)
        with self.db.tx() as tx:
            rows = tx.all(
                "SELECT m.id, m.name, m.created_at, m.description, COUNT(v.id), "
                "MAX(CASE WHEN v.status = 'active' THEN v.version END) "
                "FROM models m LEFT JOIN versions v ON v.model_id = m.id "
                + (f"WHERE {where} " if where else "")
                + "GROUP BY m.id, m.name, m.created_at, m.description ORDER BY m.name",
                args,
            )
            aliases: dict[int, dict[str, int]] = {}
            for model_id, alias, version in tx.all("SELECT model_id, alias, version FROM aliases"):
                aliases.setdefault(int(model_id), {})[alias] = int(version)
            tags: dict[int, dict[str, str]] = {}
            for model_id, key, value in tx.all(
                "SELECT model_id, key, value FROM model_tags ORDER BY key"
            ):
                tags.setdefault(int(model_id), {})[key] = value
        return [
            ModelSummary(
                name=name,
                versions=int(count),
                latest=None if latest is None else int(latest),
                aliases=aliases.get(int(model_id), {}),
                created_at=float(created),
                description=description,
                tags=tags.get(int(model_id), {}),
            )
            for model_id, name, created, description, count, latest in rows
        ]

    def get_model(self, name: str) -> ModelSummary:
        """One model with its description and tags; ModelNotFoundError naming the models."""
        with self.db.tx() as tx:
            model_id = self._model_id(tx, name)
            created, description, count, latest = tx.one(
                "SELECT m.created_at, m.description, COUNT(v.id), "
                "MAX(CASE WHEN v.status = 'active' THEN v.version END) "
                "FROM models m LEFT JOIN versions v ON v.model_id = m.id WHERE m.id = ? "
                "GROUP BY m.id, m.created_at, m.description",
                (model_id,),
            ) or (0.0, "", 0, None)
            aliases = {
                a: int(v)
                for a, v in tx.all(
                    "SELECT alias, version FROM aliases WHERE model_id = ?", (model_id,)
                )
            }
            tags = dict(
                tx.all(
                    "SELECT key, value FROM model_tags WHERE model_id = ? ORDER BY key",
                    (model_id,),
                )
            )
        return ModelSummary(
            name=name,
            versions=int(count),
            latest=None if latest is None else int(latest),
            aliases=aliases,
            created_at=float(created),
            description=description,
            tags=tags,
        )

    # -- model tags and description --------------------------------------------------------
    def set_model_tag(self, name: str, key: str, value: Any) -> None:
        """Set tag `key` of model `name` (not of one version) to `value` (a string; other
        values are stored as their JSON text), replacing any earlier value. Searchable as
        `model.tags.KEY`. Thread-safe."""
        (key, text), *_ = _str_map("model tags", {key: value}).items()
        with self.db.tx(write=True) as tx:
            model_id = self._model_id(tx, name)
            tx.execute(
                "INSERT INTO model_tags (model_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                (model_id, key, text),
            )

    def delete_model_tag(self, name: str, key: str) -> None:
        """Remove tag `key` of model `name`; ModelNotFoundError (naming the tags it has) when
        it has no such tag. Thread-safe."""
        with self.db.tx(write=True) as tx:
            model_id = self._model_id(tx, name)
            tx.execute("DELETE FROM model_tags WHERE model_id = ? AND key = ?", (model_id, key))
            if tx.rowcount == 0:
                keys = [
                    r[0]
                    for r in tx.all(
                        "SELECT key FROM model_tags WHERE model_id = ? ORDER BY key", (model_id,)
                    )
                ]
                raise ModelNotFoundError(
                    f"model {name!r} has no tag {key!r}; tags: {', '.join(keys) or '(none)'}"
                )

    def set_model_description(self, name: str, description: str) -> None:
        """Replace the description of model `name` ("" clears it). Searchable as
        `model.description`. Thread-safe."""
        if not isinstance(description, str):
            raise InvalidArgumentError(f"description must be a string, got {description!r}")
        with self.db.tx(write=True) as tx:
            model_id = self._model_id(tx, name)
            tx.execute("UPDATE models SET description = ? WHERE id = ?", (description, model_id))

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of `name`, newest first (archived included)."""
        with self.db.tx() as tx:
            model_id = self._model_id(tx, name)
            rows = tx.all(
                f"SELECT {VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "
                "WHERE v.model_id = ? ORDER BY v.version DESC",
                (model_id,),
            )
            by_version: dict[int, list[str]] = {}
            for alias, version in tx.all(
                "SELECT alias, version FROM aliases WHERE model_id = ?", (model_id,)
            ):
                by_version.setdefault(int(version), []).append(alias)
        return [self._row_to_version(r, tuple(sorted(by_version.get(int(r[1]), [])))) for r in rows]

    def search(
        self,
        filter: str | None = None,
        order_by: str | list[str] | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> SearchPage:
        """One page of at most `limit` versions matching every condition of `filter` (see
        `aiarch.registry.filters`), e.g. `metrics.auc >= 0.9 and model.tags.team = 'risk'`;
        `order_by` like `metrics.auc desc` (default: newest first). The page's
        `next_page_token` (None on the last page; `truncated` says the same) passed back as
        `page_token` with the same filter and order_by continues after the page's last
        version: paging returns every match once, in order, even while versions are added.
        Each key/value condition is answered from an index. Thread-safe."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be a positive int, got {limit!r}")
        conds = parse_filter(filter)
        order = parse_order_by(order_by)
        cursor = None if page_token is None else decode_page_token(page_token, conds, order)
        # One row more than the page says whether anything is left after it. One statement
        # (the aliases of each row in a last column), outside an explicit transaction: one
        # round trip to PostgreSQL, one consistent snapshot. Plans depend on the values (how
        # selective each condition is): never a generic one.
        sql, args = search_sql(conds, order, limit + 1, cursor, extra=self._held_aliases())
        rows = self.db.query_all(sql, args, prepare=False)
        token = None
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_page_token(conds, order, list(rows[-1][SORT_COLUMNS_AT:-1]))
        return SearchPage([self._row_to_version(r, _aliases_of(r[-1])) for r in rows], token)

    def search_all(
        self,
        filter: str | None = None,
        order_by: str | list[str] | None = None,
        page_size: int = 100,
    ) -> Iterator[ModelVersion]:
        """Every version matching `filter`, in `order_by` order, read `page_size` at a time."""
        page = self.search(filter, order_by, page_size)
        yield from page
        while page.next_page_token is not None:
            page = self.search(filter, order_by, page_size, page.next_page_token)
            yield from page

    # -- aliases ---------------------------------------------------------------------------
    def alias_version(self, name: str, alias: str) -> int | None:
        """The version `alias` points at now, or None. One indexed read."""
        row = self.db.query_one(
            "SELECT a.version FROM aliases a JOIN models m ON m.id = a.model_id "
            "WHERE m.name = ? AND a.alias = ?",
            (name, alias),
        )
        return None if row is None else int(row[0])

    def change_counter(self, name: str) -> int:
        """A number that grows whenever an alias of `name` moves (0 for an unknown model)."""
        with self.db.tx() as tx:
            v = tx.scalar("SELECT change_seq FROM models WHERE name = ?", (name,))
        return int(v or 0)

    def watch(self, name: str, alias: str) -> AliasWatch:
        """An `AliasWatch` on `name@alias` (see there); servers poll it on a timer."""
        validate_alias(alias)
        return AliasWatch(self, name, alias)

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        expected_current: int | None = UNSET,
        reason: str = "",
        action: str = "set",
    ) -> AliasChange | None:
        """Point `alias` at `version`: a compare-and-swap when `expected_current` is given (an
        int, or None for "the alias must not exist yet"); ConflictError if it moved. Appends
        to the alias's history. Returns the change, or None if it already pointed there."""
        validate_alias(alias)
        with self.db.tx(write=True) as tx:
            model_id = self._model_id(tx, name, lock=True)  # serializes alias changes per model
            return self.move_alias_in(
                tx,
                model_id,
                name,
                alias,
                version,
                expected_current=expected_current,
                reason=reason,
                action=action,
            )

    def move_alias_in(
        self,
        tx: Tx,
        model_id: int,
        name: str,
        alias: str,
        version: int,
        *,
        expected_current: int | None = UNSET,
        reason: str = "",
        action: str = "set",
    ) -> AliasChange | None:
        """`set_alias` inside the caller's write transaction `tx`, which has locked the model
        row (`_model_id(tx, name, lock=True)`): lets a change of other registry state commit
        together with the alias move. Not thread-safe (one transaction)."""
        actor = _actor()
        now = time.time()
        status = tx.scalar(
            "SELECT status FROM versions WHERE model_id = ? AND version = ?",
            (model_id, version),
        )
        if status is None:
            raise self._missing_version(tx, model_id, name, f"version {version}")
        if status != "active":
            raise ConflictError(f"{name} version {version} is {status}; it cannot hold an alias")
        current = tx.scalar(
            "SELECT version FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias)
        )
        current = None if current is None else int(current)
        if expected_current is not UNSET and current != expected_current:
            raise ConflictError(
                f"alias {alias!r} of {name!r} points at "
                f"{'nothing' if current is None else f'version {current}'}, expected "
                f"{'nothing' if expected_current is None else f'version {expected_current}'}"
                "; it moved meanwhile — re-read and retry"
            )
        if current == version:
            return None
        tx.execute(
            "INSERT INTO aliases (model_id, alias, version, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, "
            "updated_at = excluded.updated_at",
            (model_id, alias, version, now),
        )
        history_id = tx.scalar(
            "INSERT INTO alias_history (model_id, alias, action, from_version, to_version, "
            "actor, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (model_id, alias, action, current, version, actor, reason, now),
        )
        tx.execute("UPDATE models SET change_seq = change_seq + 1 WHERE id = ?", (model_id,))
        return AliasChange(alias, action, current, version, actor, reason, now, int(history_id))

    def promote(
        self,
        name: str,
        version: int,
        to: str = "production",
        *,
        gates: str | Sequence[str] | None = None,
        reason: str = "",
        expected_current: int | None = UNSET,
    ) -> AliasChange | None:
        """Point alias `to` at `version` after checking `gates` (filter conditions on the
        version, e.g. "metrics.auc >= 0.9") and its artifact's digest. Compare-and-swap against
        the alias as read when the call starts (or `expected_current`): a concurrent promotion
        makes this one fail with ConflictError instead of silently overwriting it."""
        validate_alias(to)
        if expected_current is UNSET:
            expected_current = self.alias_version(name, to)
        mv = self.get(name, version)
        if gates:
            check_gates(
                mv, [gates] if isinstance(gates, str) else list(gates), self.get_model(name)
            )
        self._verified(mv, self.store.verify)
        return self.set_alias(
            name, to, version, expected_current=expected_current, reason=reason, action="promote"
        )

    def rollback(self, name: str, alias: str = "production", *, reason: str = "") -> AliasChange:
        """Point `alias` back at the version that held it before the current one (undoing
        earlier rollbacks too: repeated calls walk further back), after verifying that
        version's digest. ConflictError if the alias moved meanwhile."""
        validate_alias(alias)
        changes = self.history(name, alias)
        stack: list[int | None] = []
        for c in changes:
            if c.action == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(c.to_version)
        if len(stack) < 2:
            current = stack[-1] if stack else None
            raise ConflictError(
                f"alias {alias!r} of {name!r} has no earlier version to roll back to "
                f"(current: {current}, history entries: {len(changes)})"
            )
        current, target = stack[-1], stack[-2]
        assert target is not None
        mv = self.get(name, target)
        self._verified(mv, self.store.verify)
        change = self.set_alias(
            name,
            alias,
            target,
            expected_current=current,
            reason=reason or f"rollback from version {current}",
            action="rollback",
        )
        assert change is not None
        return change

    def history(self, name: str, alias: str | None = None) -> list[AliasChange]:
        """The append-only alias history of `name` (one alias or all), oldest first."""
        with self.db.tx() as tx:
            model_id = self._model_id(tx, name)
            sql = (
                "SELECT alias, action, from_version, to_version, actor, reason, at, id "
                "FROM alias_history WHERE model_id = ?"
            )
            args: list[Any] = [model_id]
            if alias is not None:
                sql += " AND alias = ?"
                args.append(alias)
            rows = tx.all(sql + " ORDER BY id", args)
        return [
            AliasChange(
                alias=r[0],
                action=r[1],
                from_version=None if r[2] is None else int(r[2]),
                to_version=None if r[3] is None else int(r[3]),
                actor=r[4],
                reason=r[5],
                at=float(r[6]),
                id=int(r[7]),
            )
            for r in rows
        ]

    # -- lifecycle -------------------------------------------------------------------------
    def _refuse_if_aliased(self, tx: Tx, model_id: int, name: str, version: int, what: str) -> None:
        held = [
            r[0]
            for r in tx.all(
                "SELECT alias FROM aliases WHERE model_id = ? AND version = ? ORDER BY alias",
                (model_id, version),
            )
        ]
        if held:
            raise ConflictError(
                f"cannot {what} {name} version {version}: alias(es) {', '.join(held)} point at "
                "it; promote another version or roll back first"
            )

    def archive(self, name: str, version: int) -> ModelVersion:
        """Mark a version archived (kept, not 'latest', cannot hold an alias). Refused while an
        alias points at it."""
        with self.db.tx(write=True) as tx:
            model_id = self._model_id(tx, name, lock=True)
            if (
                tx.scalar(
                    "SELECT 1 FROM versions WHERE model_id = ? AND version = ?", (model_id, version)
                )
                is None
            ):
                raise self._missing_version(tx, model_id, name, f"version {version}")
            self._refuse_if_aliased(tx, model_id, name, version, "archive")
            tx.execute(
                "UPDATE versions SET status = 'archived' WHERE model_id = ? AND version = ?",
                (model_id, version),
            )
        return self.get(name, version)

    def delete(self, name: str, version: int) -> None:
        """Delete a version and, if no other version shares it, its artifact. Refused while an
        alias points at it. Version numbers are never reused; the alias history is kept."""
        with self.db.tx(write=True) as tx:
            model_id = self._model_id(tx, name, lock=True)
            digest = tx.scalar(
                "SELECT digest FROM versions WHERE model_id = ? AND version = ?",
                (model_id, version),
            )
            if digest is None:
                raise self._missing_version(tx, model_id, name, f"version {version}")
            self._refuse_if_aliased(tx, model_id, name, version, "delete")
            tx.execute(
                "DELETE FROM versions WHERE model_id = ? AND version = ?", (model_id, version)
            )
            shared = tx.scalar("SELECT 1 FROM versions WHERE digest = ? LIMIT 1", (digest,))
        if shared is None:
            with contextlib.suppress(OSError):
                self.store.remove_tree(digest)

    def optimize(self) -> None:
        """Refresh the database's planner statistics (search picks its plans from them). Worth
        running after a bulk import; PostgreSQL's autovacuum also does it on its own schedule."""
        self.db.analyze()

    def sweep_store(self, *, grace_s: float = 3600.0) -> int:
        """Remove store entries no version references (left by interrupted registrations or
        deletions). Run it while nothing registers on this host. In a bucket, entries younger
        than `grace_s` are kept: they may belong to a registration in flight elsewhere.
        Returns the count removed."""
        with self.db.tx() as tx:
            keep = {r[0] for r in tx.all("SELECT DISTINCT digest FROM versions")}
        if isinstance(self.store, ObjectArtifactStore):
            return self.store.sweep(keep, grace_s=grace_s)
        return self.store.sweep(keep)


def _ranges(versions: list[int]) -> str:
    """[1, 2, 3, 5] → "1-3, 5"."""
    parts: list[str] = []
    start = prev = None
    for v in versions:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def _aliases_of(held: str | None) -> tuple[str, ...]:
    """The aliases of a `_held_aliases` column, sorted."""
    return tuple(sorted(held.split(","))) if held else ()
