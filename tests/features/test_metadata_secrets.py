"""The features' metadata file never keeps an online store's password: materialization
watermarks and resume points are keyed by the store's URL with its password redacted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aiarch.features.metadata import MetadataStore

SECRET = "S3cretPassw0rd"
URL = f"redis://:{SECRET}@127.0.0.1:6399/0"


def _file_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.iterdir() if p.name.startswith("features.db"))


def test_watermarks_and_runs_are_stored_without_the_password(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path)
    meta.save_run("txn", URL, 0, 100, 41, 7)
    meta.set_watermark("clicks", URL, 123)
    assert meta.watermark("clicks", URL) == 123
    assert meta.run("txn", URL) == {"start_ns": 0, "end_ns": 100, "last_key": 41, "rows_done": 7}
    with sqlite3.connect(tmp_path / "features.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        targets = {
            r[0]
            for t in ("watermarks", "materialize_runs")
            for r in conn.execute(f"SELECT target FROM {t}")
        }
    assert targets == {"redis://:***@127.0.0.1:6399/0"}
    assert SECRET.encode() not in _file_bytes(tmp_path)


def test_a_file_written_with_passwords_is_rewritten_and_keeps_its_watermarks(
    tmp_path: Path,
) -> None:
    MetadataStore(tmp_path).views()  # create the schema
    with sqlite3.connect(tmp_path / "features.db") as conn:
        conn.execute("INSERT INTO watermarks VALUES ('clicks', ?, 555, 0)", (URL,))
        conn.execute("INSERT INTO materialize_runs VALUES ('txn', ?, 1, 9, '3', 2)", (URL,))
    meta = MetadataStore(tmp_path)
    assert meta.watermark("clicks", URL) == 555
    assert meta.run("txn", URL) == {"start_ns": 1, "end_ns": 9, "last_key": 3, "rows_done": 2}
    with sqlite3.connect(tmp_path / "features.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert SECRET.encode() not in _file_bytes(tmp_path)
