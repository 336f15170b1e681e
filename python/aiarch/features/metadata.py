"""The features' metadata store: definitions, materialization watermarks and resume points.

One SQLite file (WAL) under ``AIARCH_HOME`` (default ``./.aiarch``): ``features.db``. Every call
opens a short transaction, so several processes (a server, the CLI) may share the file.

A materialization target (the online store's URL) is stored with its password redacted: the
password does not identify the store, and the file is readable by whoever can read the home
folder. Rows written before that rule are rewritten when the file is first opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiarch.redact import redact_url

from .definitions import Entity, FeatureView

__all__ = ["MetadataStore", "default_home"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
  name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feature_views (
  name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS watermarks (
  view TEXT NOT NULL, target TEXT NOT NULL, end_ns INTEGER NOT NULL, updated_s REAL NOT NULL,
  PRIMARY KEY (view, target));
CREATE TABLE IF NOT EXISTS materialize_runs (
  view TEXT NOT NULL, target TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
  last_key TEXT, rows_done INTEGER NOT NULL, PRIMARY KEY (view, target));
"""


_TARGET_TABLES = ("watermarks", "materialize_runs")


def _target_key(target: str) -> str:
    """How a materialization target is stored and looked up: its URL without secrets."""
    return redact_url(target)


def _redact_stored_targets(conn: sqlite3.Connection) -> None:
    """Rewrite rows keyed by a URL that still holds a password (the newest row wins a clash)."""
    for table in _TARGET_TABLES:
        rows = conn.execute(f"SELECT rowid, view, target FROM {table} ORDER BY rowid").fetchall()
        for rowid, view, target in rows:
            key = _target_key(target)
            if key != target:
                conn.execute(f"DELETE FROM {table} WHERE view = ? AND target = ?", (view, key))
                conn.execute(f"UPDATE {table} SET target = ? WHERE rowid = ?", (key, rowid))


def default_home() -> Path:
    """``$AIARCH_HOME`` or ``./.aiarch``."""
    return Path(os.environ.get("AIARCH_HOME") or ".aiarch")


class MetadataStore:
    """Definitions and materialization state in ``<home>/features.db``. Thread-safe."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.path = self.home / "features.db"
        self._lock = threading.Lock()
        self._ready = False

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if not self._ready:
                self.home.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10.0)
            # Freed pages are zeroed, so a rewritten target leaves no password behind.
            conn.execute("PRAGMA secure_delete=ON")
            try:
                if not self._ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(_SCHEMA)
                    with conn:
                        _redact_stored_targets(conn)
                    self._ready = True
                with conn:
                    yield conn
            finally:
                conn.close()

    # -- definitions ---------------------------------------------------------------------------
    def put_entity(self, entity: Entity) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO entities VALUES (?, ?, ?)",
                (entity.name, json.dumps(entity.to_json()), time.time()),
            )

    def put_view(self, view: FeatureView) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO feature_views VALUES (?, ?, ?)",
                (view.name, json.dumps(view.to_json()), time.time()),
            )

    def delete_view(self, name: str) -> bool:
        with self._tx() as c:
            return c.execute("DELETE FROM feature_views WHERE name = ?", (name,)).rowcount > 0

    def entities(self) -> dict[str, Entity]:
        with self._tx() as c:
            rows = c.execute("SELECT spec FROM entities ORDER BY name").fetchall()
        return {e.name: e for e in (Entity.from_json(json.loads(r[0])) for r in rows)}

    def views(self) -> dict[str, FeatureView]:
        with self._tx() as c:
            rows = c.execute("SELECT spec FROM feature_views ORDER BY name").fetchall()
        return {v.name: v for v in (FeatureView.from_json(json.loads(r[0])) for r in rows)}

    # -- materialization -----------------------------------------------------------------------
    def watermark(self, view: str, target: str) -> int | None:
        """End (ns) of the last completed materialization of `view` into `target`."""
        target = _target_key(target)
        with self._tx() as c:
            row = c.execute(
                "SELECT end_ns FROM watermarks WHERE view = ? AND target = ?", (view, target)
            ).fetchone()
        return None if row is None else int(row[0])

    def set_watermark(self, view: str, target: str, end_ns: int) -> None:
        target = _target_key(target)
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO watermarks VALUES (?, ?, ?, ?)",
                (view, target, int(end_ns), time.time()),
            )
            c.execute("DELETE FROM materialize_runs WHERE view = ? AND target = ?", (view, target))

    def run(self, view: str, target: str) -> dict[str, Any] | None:
        """The unfinished materialization of `view` into `target`, if any."""
        target = _target_key(target)
        with self._tx() as c:
            row = c.execute(
                "SELECT start_ns, end_ns, last_key, rows_done FROM materialize_runs "
                "WHERE view = ? AND target = ?",
                (view, target),
            ).fetchone()
        if row is None:
            return None
        return {
            "start_ns": int(row[0]),
            "end_ns": int(row[1]),
            "last_key": None if row[2] is None else json.loads(row[2]),
            "rows_done": int(row[3]),
        }

    def save_run(
        self, view: str, target: str, start_ns: int, end_ns: int, last_key: Any, rows_done: int
    ) -> None:
        target = _target_key(target)
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO materialize_runs VALUES (?, ?, ?, ?, ?, ?)",
                (
                    view,
                    target,
                    int(start_ns),
                    int(end_ns),
                    None if last_key is None else json.dumps(last_key),
                    int(rows_done),
                ),
            )
