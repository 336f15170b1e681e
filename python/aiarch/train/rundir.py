"""The run directory: where one training job keeps its checkpoints, exports and records.

``$AIARCH_HOME/runs/<run_id>/`` (``AIARCH_HOME`` defaults to ``./.aiarch``)::

    checkpoints/       step-000000012.pt … and latest.json, the atomic "latest" pointer
    export/<name>/     model.pt2 (served) and model.onnx, written by ctx.register()
    logs/              torch.distributed.elastic's per-attempt logs and error files
    attempts.jsonl     one line per (re)start of the worker group, written by the main rank
    progress.jsonl     one line per epoch (loss, samples/s), written by the main rank
    registered.json    model versions this run registered, by name

This module imports no torch: the launcher and the CLI read the records with it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = [
    "RunDir",
    "aiarch_home",
    "new_run_id",
    "validate_run_id",
    "write_json_atomic",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def aiarch_home(home: str | os.PathLike[str] | None = None) -> Path:
    """`home`, else ``$AIARCH_HOME``, else ``./.aiarch``, as an absolute path."""
    chosen = home if home is not None else os.environ.get("AIARCH_HOME") or ".aiarch"
    return Path(chosen).expanduser().resolve()


def new_run_id(script: str | os.PathLike[str]) -> str:
    """A fresh run id: ``<script stem>-<UTC time>-<6 hex>`` (sortable, unique per launch)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(script).stem).strip("-") or "run"
    return f"{stem[:40]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def validate_run_id(run_id: str) -> str:
    """Returns `run_id` if it is usable as a directory name, else raises ValueError."""
    if not _RUN_ID.match(run_id):
        raise ValueError(
            f"run id {run_id!r} is not valid: expected 1-128 characters from "
            "[A-Za-z0-9._-], starting with a letter or digit"
        )
    return run_id


def write_json_atomic(path: Path, value: Any) -> None:
    """Writes JSON to a temporary name, fsyncs it, renames it over `path`, fsyncs the folder.

    A reader sees the old content or the new one, never a torn file, even after a crash.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Makes a rename inside `path` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash mid-write; the others still count
    return rows


class RunDir:
    """Paths and records of one run. Not thread-safe; the main rank is the only writer."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def for_run(cls, run_id: str, home: str | os.PathLike[str] | None = None) -> RunDir:
        """``<home>/runs/<run_id>``."""
        return cls(aiarch_home(home) / "runs" / validate_run_id(run_id))

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def export_dir(self, name: str) -> Path:
        return self.path / "export" / name

    def create(self) -> RunDir:
        """Creates the folder (and parents); returns self."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def append(self, record: str, row: dict[str, Any]) -> None:
        """Appends one JSON line to `<record>.jsonl` (one write call, so lines stay whole)."""
        self.create()
        line = json.dumps(row, sort_keys=True) + "\n"
        with open(self.path / f"{record}.jsonl", "a") as f:
            f.write(line)

    def attempts(self) -> list[dict[str, Any]]:
        """One row per start of the worker group (restart_count, world_size, time)."""
        return _read_jsonl(self.path / "attempts.jsonl")

    def progress(self) -> list[dict[str, Any]]:
        """One row per logged epoch (epoch, loss, samples, samples_per_s, seconds, ...)."""
        return _read_jsonl(self.path / "progress.jsonl")

    def registered(self) -> dict[str, dict[str, Any]]:
        """Model versions this run registered, by model name."""
        try:
            value = json.loads((self.path / "registered.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    def record_registered(self, name: str, info: dict[str, Any]) -> None:
        """Adds one model version to registered.json (atomically replaced)."""
        self.create()
        value = self.registered()
        value[name] = info
        write_json_atomic(self.path / "registered.json", value)
