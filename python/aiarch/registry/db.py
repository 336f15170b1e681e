"""Registry metadata in SQLite (default) or PostgreSQL: one schema, versioned migrations.

SQL is written once with `?` placeholders; the PostgreSQL dialect rewrites them to `%s`.
Connections are per thread (sqlite3 connections and psycopg connections are not shared across
threads): SQLite in WAL mode with a long busy timeout, write transactions opened with
`BEGIN IMMEDIATE` so concurrent writers queue for the lock instead of failing on upgrade;
PostgreSQL through psycopg 3 in autocommit mode with explicit transactions.

Migrations are numbered; `migrate` applies the missing ones in one transaction under a lock
(`BEGIN IMMEDIATE` on SQLite, a transaction-scoped advisory lock on PostgreSQL), so processes
that start together apply each migration exactly once.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from aiarch.redact import redact_url

from .errors import RegistryError

__all__ = ["MIGRATIONS", "Database", "Tx", "open_database"]

# Each migration: (number, description, statements). Types are written for both dialects:
# {pk} is the auto-increment primary key, {blob} the binary type, {clustered} the table option
# that stores rows in primary-key order where the dialect has one.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "models, versions, searchable metrics/params/tags, aliases and their history",
        [
            """CREATE TABLE models (
                id {pk},
                name TEXT NOT NULL UNIQUE,
                next_version BIGINT NOT NULL DEFAULT 1,
                change_seq BIGINT NOT NULL DEFAULT 0,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE versions (
                id {pk},
                model_id BIGINT NOT NULL REFERENCES models(id),
                version BIGINT NOT NULL,
                digest TEXT NOT NULL,
                format TEXT NOT NULL,
                artifact_name TEXT NOT NULL,
                entry TEXT,
                signature TEXT,
                metrics TEXT NOT NULL,
                params TEXT NOT NULL,
                tags TEXT NOT NULL,
                lineage TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                status TEXT NOT NULL DEFAULT 'active',
                created_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL,
                UNIQUE (model_id, version)
            )""",
            "CREATE INDEX versions_digest ON versions (digest)",
            """CREATE TABLE version_metrics (
                version_id BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
                key TEXT NOT NULL,
                value DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (version_id, key)
            ){clustered}""",
            "CREATE INDEX version_metrics_kv ON version_metrics (key, value, version_id)",
            """CREATE TABLE version_params (
                version_id BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (version_id, key)
            ){clustered}""",
            "CREATE INDEX version_params_kv ON version_params (key, value, version_id)",
            """CREATE TABLE version_tags (
                version_id BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (version_id, key)
            ){clustered}""",
            "CREATE INDEX version_tags_kv ON version_tags (key, value, version_id)",
            """CREATE TABLE version_references (
                version_id BIGINT PRIMARY KEY REFERENCES versions(id) ON DELETE CASCADE,
                data {blob} NOT NULL
            )""",
            """CREATE TABLE aliases (
                model_id BIGINT NOT NULL REFERENCES models(id),
                alias TEXT NOT NULL,
                version BIGINT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (model_id, alias)
            )""",
            "CREATE INDEX aliases_version ON aliases (model_id, version)",
            """CREATE TABLE alias_history (
                id {pk},
                model_id BIGINT NOT NULL REFERENCES models(id),
                alias TEXT NOT NULL,
                action TEXT NOT NULL,
                from_version BIGINT,
                to_version BIGINT,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX alias_history_model ON alias_history (model_id, alias, id)",
        ],
    ),
    (
        2,
        "model-level description and searchable model tags",
        [
            "ALTER TABLE models ADD COLUMN description TEXT NOT NULL DEFAULT ''",
            """CREATE TABLE model_tags (
                model_id BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (model_id, key)
            ){clustered}""",
            "CREATE INDEX model_tags_kv ON model_tags (key, value, model_id)",
        ],
    ),
    (
        3,
        "progressive rollouts: the step every server follows, the controller lease, the history",
        [
            """CREATE TABLE rollouts (
                id {pk},
                model_id BIGINT NOT NULL REFERENCES models(id),
                candidate BIGINT NOT NULL,
                baseline BIGINT NOT NULL,
                steps TEXT NOT NULL,
                dwell_s DOUBLE PRECISION NOT NULL,
                step_timeout_s DOUBLE PRECISION NOT NULL,
                thresholds TEXT NOT NULL,
                step BIGINT NOT NULL,
                weight BIGINT NOT NULL,
                state TEXT NOT NULL,
                reason TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                step_started_at DOUBLE PRECISION NOT NULL,
                lease_owner TEXT,
                lease_expires_at DOUBLE PRECISION
            )""",
            # At most one active rollout per model, and the servers' poll is one probe of it.
            "CREATE UNIQUE INDEX rollouts_active ON rollouts (model_id) "
            "WHERE state IN ('running', 'paused')",
            "CREATE INDEX rollouts_model ON rollouts (model_id, id)",
            """CREATE TABLE rollout_events (
                id {pk},
                rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
                step BIGINT NOT NULL,
                weight BIGINT NOT NULL,
                decision TEXT NOT NULL,
                reason TEXT NOT NULL,
                arms TEXT NOT NULL,
                actor TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id)",
        ],
    ),
]

_MIGRATION_LOCK_KEY = 0x616961726368  # "aiarch": the advisory lock id of migrations


class Tx:
    """A transaction's cursor: `execute`, `one`, `all`, `scalar`. Not thread-safe."""

    def __init__(self, cursor: Any, postgres: bool):
        self._cur = cursor
        self.postgres = postgres

    def execute(self, sql: str, params: Sequence[Any] = (), *, prepare: bool = True) -> Any:
        if self.postgres:
            # psycopg prepares a statement run 5 times; PostgreSQL may then use one generic
            # plan for all parameter values. `prepare=False` keeps planning with the values.
            self._cur.execute(
                sql.replace("?", "%s"), tuple(params), prepare=None if prepare else False
            )
        else:
            self._cur.execute(sql, tuple(params))
        return self._cur

    def all(
        self, sql: str, params: Sequence[Any] = (), *, prepare: bool = True
    ) -> list[tuple[Any, ...]]:
        return list(self.execute(sql, params, prepare=prepare).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else row[0]

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


class Database:
    """Per-thread connections to one database; `tx()` opens a transaction. Thread-safe."""

    postgres = False

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def tx(self, write: bool = False) -> Iterator[Tx]:
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
        self._local = threading.local()

    def ddl(self, statement: str) -> str:
        raise NotImplementedError

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """First row of one read-only statement run on its own (no explicit transaction)."""
        raise NotImplementedError

    def query_all(
        self, sql: str, params: Sequence[Any] = (), *, prepare: bool = True
    ) -> list[tuple[Any, ...]]:
        """Every row of one read-only statement run on its own (no explicit transaction: one
        round trip, one snapshot). `prepare=False` plans it with the values every time."""
        raise NotImplementedError

    def string_agg(self, expr: str) -> str:
        """SQL aggregating `expr` into one comma-separated string."""
        raise NotImplementedError

    def analyze(self) -> None:
        """Refresh the query planner's statistics of the registry tables."""
        with self.tx(write=True) as tx:
            tx.execute("ANALYZE")

    def migration_lock(self, tx: Tx) -> None:
        """Called first inside the migration transaction."""

    def migrate(self) -> int:
        """Apply missing migrations once, under a lock; returns the schema version."""
        latest = MIGRATIONS[-1][0]
        with contextlib.suppress(Exception), self.tx() as tx:
            current = tx.scalar("SELECT MAX(version) FROM schema_migrations")
            if current == latest:
                return latest
        with self.tx(write=True) as tx:
            self.migration_lock(tx)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            applied = {int(r[0]) for r in tx.all("SELECT version FROM schema_migrations")}
            if applied and max(applied) > latest:
                raise RegistryError(
                    f"the registry database {redact_url(self.url)} has schema version {max(applied)}, newer "
                    f"than this aiarch understands ({latest}); upgrade aiarch"
                )
            for number, description, statements in MIGRATIONS:
                if number in applied:
                    continue
                for stmt in statements:
                    tx.execute(self.ddl(stmt))
                tx.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    (number, description, time.time()),
                )
        return latest


class SqliteDatabase(Database):
    busy_timeout_s = 120.0

    def close(self) -> None:
        # Refresh the planner's statistics where they went stale (cheap when they did not).
        with contextlib.suppress(sqlite3.Error), self.tx(write=True) as tx:
            tx.execute("PRAGMA optimize")
        super().close()

    def __init__(self, path: Path):
        super().__init__(f"sqlite:///{path}")
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> Any:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        # Switching to WAL needs a moment of exclusive access; when many processes open a new
        # database at once some see SQLITE_BUSY here without the busy handler: retry.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # LIKE is case-sensitive on PostgreSQL and in the Python evaluator: match that.
        conn.execute("PRAGMA case_sensitive_like=ON")
        return conn

    @contextlib.contextmanager
    def tx(self, write: bool = False) -> Iterator[Tx]:
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Tx(cur, False)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        except sqlite3.OperationalError as e:
            raise RegistryError(f"registry database {self.path}: {e}") from e
        finally:
            cur.close()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        try:
            row = self._conn().execute(sql, tuple(params)).fetchone()
        except sqlite3.OperationalError as e:
            raise RegistryError(f"registry database {self.path}: {e}") from e
        return None if row is None else tuple(row)

    def query_all(
        self, sql: str, params: Sequence[Any] = (), *, prepare: bool = True
    ) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self._conn().execute(sql, tuple(params)).fetchall()]
        except sqlite3.OperationalError as e:
            raise RegistryError(f"registry database {self.path}: {e}") from e

    def string_agg(self, expr: str) -> str:
        return f"group_concat({expr}, ',')"

    def ddl(self, statement: str) -> str:
        # WITHOUT ROWID: the (version_id, key) primary key holds the value, so a search's
        # probe of a key/value table is one index lookup.
        return statement.format(pk="INTEGER PRIMARY KEY", blob="BLOB", clustered=" WITHOUT ROWID")


class PostgresDatabase(Database):
    postgres = True

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise RegistryError(
                "a postgresql:// registry needs psycopg 3: pip install 'aiarch[postgres]'"
            ) from None
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as e:
            raise RegistryError(f"cannot connect to the registry database: {e}") from None

    @contextlib.contextmanager
    def tx(self, write: bool = False) -> Iterator[Tx]:
        conn = self._conn()
        if conn.closed or conn.broken:
            self._local.conn = None
            conn = self._conn()
        import psycopg

        try:
            with conn.transaction(), conn.cursor() as cur:
                yield Tx(cur, True)
        except psycopg.OperationalError as e:
            raise RegistryError(f"registry database unavailable: {e}") from e

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        import psycopg

        conn = self._conn()
        if conn.closed or conn.broken:
            self._local.conn = None
            conn = self._conn()
        try:
            row = conn.execute(sql.replace("?", "%s"), tuple(params)).fetchone()
        except psycopg.OperationalError as e:
            raise RegistryError(f"registry database unavailable: {e}") from e
        return None if row is None else tuple(row)

    def query_all(
        self, sql: str, params: Sequence[Any] = (), *, prepare: bool = True
    ) -> list[tuple[Any, ...]]:
        import psycopg

        conn = self._conn()
        if conn.closed or conn.broken:
            self._local.conn = None
            conn = self._conn()
        try:
            cur = conn.execute(
                sql.replace("?", "%s"), tuple(params), prepare=None if prepare else False
            )
            return [tuple(r) for r in cur.fetchall()]
        except psycopg.OperationalError as e:
            raise RegistryError(f"registry database unavailable: {e}") from e

    def string_agg(self, expr: str) -> str:
        return f"string_agg({expr}, ',')"

    def analyze(self) -> None:
        # VACUUM also marks pages all-visible, which lets searches use index-only scans of the
        # key/value indexes; it cannot run inside a transaction block.
        conn = self._conn()
        for table in (
            "models",
            "model_tags",
            "versions",
            "version_metrics",
            "version_params",
            "version_tags",
        ):
            conn.execute(f"VACUUM (ANALYZE) {table}")

    def ddl(self, statement: str) -> str:
        return statement.format(
            pk="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", blob="BYTEA", clustered=""
        )

    def migration_lock(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_KEY,))


def open_database(url: str | None, home: Path) -> Database:
    """The database for a registry URL: None → SQLite at `home/registry.db`;
    `sqlite:///path` → that file; `postgresql://...` / `postgres://...` → PostgreSQL."""
    if url is None:
        return SqliteDatabase(home / "registry.db")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url[len("sqlite:///") :]))
    if "://" not in url:
        return SqliteDatabase(Path(os.fspath(url)))
    raise RegistryError(
        f"unsupported registry URL {redact_url(url)!r}: expected postgresql://..., sqlite:///PATH or nothing "
        "(SQLite under AIARCH_HOME)"
    )
