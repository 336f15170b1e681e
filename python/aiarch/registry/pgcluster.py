"""A throw-away PostgreSQL cluster on 127.0.0.1 for tests and benchmarks.

    with TemporaryPostgres() as pg:
        reg = Registry(pg.url(schema="t1"))

`initdb` + `pg_ctl` from the Debian packages (or $AIARCH_PG_BIN) in a temporary folder, on a
free port, trust authentication on loopback only. PostgreSQL refuses to run as root, so as root
the binaries run as the `postgres` user through `runuser`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PostgresUnavailable", "TemporaryPostgres", "find_pg_bin"]


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (scripts/setup.sh installs them)."""


def find_pg_bin() -> Path:
    """The folder holding initdb and pg_ctl."""
    candidates = [os.environ.get("AIARCH_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or "
        "PATH; install them with scripts/setup.sh (Debian: postgresql) or set AIARCH_PG_BIN"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryPostgres:
    """Start on `start()` (or `with`), stop and delete everything on `stop()`."""

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self.port = 0
        self.dir: Path | None = None
        self._as_postgres: list[str] = []

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_postgres, *args],
            check=True,
            capture_output=True,
            timeout=self.timeout_s,
        )

    def start(self) -> TemporaryPostgres:
        bin_dir = find_pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="aiarch-pg-"))
        data = self.dir / "data"
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PostgresUnavailable("running as root needs runuser to start PostgreSQL")
            self._as_postgres = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self.port = _free_port()
        try:
            self._run(
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            )
            options = (
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=200 -c shared_buffers=64MB"
            )
            self._run(
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.dir / "server.log"),
                "-w",
                "-t",
                str(int(self.timeout_s)),
                "start",
            )
        except subprocess.CalledProcessError as e:
            log = ""
            with contextlib.suppress(OSError):
                log = (self.dir / "server.log").read_text()[-2000:]
            self.stop()
            raise RuntimeError(
                f"starting PostgreSQL failed: {e.stderr.decode(errors='replace')}\n{log}"
            ) from None
        self._bin = bin_dir
        return self

    def url(self, schema: str | None = None) -> str:
        """Connection URL; with `schema`, the schema is created and made the search path."""
        base = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if schema is None:
            return base
        import psycopg

        with psycopg.connect(base, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return f"{base}?options=-csearch_path%3D{schema}"

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(
                    str(self._bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"
                )
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
