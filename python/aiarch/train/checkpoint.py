"""Checkpoints with an atomic "latest" pointer, so a restarted job resumes from a complete one.

The main rank writes ``step-<step>.pt`` under a temporary name, fsyncs it, renames it into
place, then replaces ``latest.json`` the same way (temp name, fsync, rename, fsync of the
folder); every rank then waits at a barrier. A crash at any point leaves ``latest.json``
naming the previous complete checkpoint: a file is never visible under its final name
half-written, and the pointer never names a file that is not fully on disk.

``load_latest()`` reads the pointer and the file on the main rank, checks the file's
sha256 against the pointer, and broadcasts the state to every rank, so all ranks resume
from the same step even where only the main rank can see the checkpoint folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .rundir import fsync_dir, write_json_atomic

__all__ = ["CheckpointCorruptError", "CheckpointStore", "LoadedCheckpoint"]

_STEP_FILE = re.compile(r"^step-(\d{9,})\.pt$")
POINTER = "latest.json"


class CheckpointCorruptError(RuntimeError):
    """The file that ``latest.json`` names is missing or does not match its recorded sha256."""


class _Group(Protocol):
    """What the store needs from the training context (collectives over every rank)."""

    @property
    def is_main(self) -> bool: ...

    def barrier(self, *, slow: bool = False) -> None: ...

    def broadcast_object(self, obj: Any, *, slow: bool = False) -> Any: ...


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back by `CheckpointStore.load_latest`."""

    step: int
    """The step it was saved at."""
    state: dict[str, Any]
    """The saved mapping; modules, optimizers and schedulers appear as their state_dicts."""
    path: Path
    """The file it came from."""


class _HashingWriter(io.RawIOBase):
    """A write-only file wrapper that hashes what passes through (no second read)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._f.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        self._f.flush()


def _unwrap(obj: Any) -> Any:
    """DistributedDataParallel → its module; anything with state_dict() → that dict."""
    inner = getattr(obj, "module", None)
    if inner is not None and type(obj).__name__ == "DistributedDataParallel":
        obj = inner
    state_dict: Callable[[], Any] | None = getattr(obj, "state_dict", None)
    if callable(state_dict) and not isinstance(obj, Mapping):
        return state_dict()
    return obj


class CheckpointStore:
    """Checkpoints of one run under `directory`. Methods are collective: call them on every rank.

    Not thread-safe. `keep` complete checkpoints are kept; older ones are deleted after the
    pointer has moved past them.
    """

    def __init__(self, directory: str | os.PathLike[str], group: _Group, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self._group = group
        if group.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_partial_files()

    # -- writing ---------------------------------------------------------------------------

    def save(self, state: Mapping[str, Any], step: int) -> Path:
        """Saves `state` as the checkpoint of `step` and moves "latest" to it.

        `state` maps names to picklable values; `nn.Module` (DDP unwrapped), optimizers and
        LR schedulers are stored as their ``state_dict()``. Called on every rank, once per
        checkpoint: the main rank writes, all ranks wait at a barrier until the checkpoint
        is complete. Returns the checkpoint's path.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of name -> value, got {type(state).__name__}")
        path = self.directory / f"step-{step:09d}.pt"
        if self._group.is_main:
            self._write(path, {str(k): _unwrap(v) for k, v in state.items()}, step)
        self._group.barrier(slow=True)
        return path

    def _write(self, path: Path, state: dict[str, Any], step: int) -> None:
        import torch

        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                writer = _HashingWriter(f)
                torch.save(state, writer)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        pointer = {
            "step": step,
            "file": path.name,
            "sha256": writer.sha256.hexdigest(),
            "bytes": writer.size,
            "time": time.time(),
        }
        write_json_atomic(self.directory / POINTER, pointer)
        self._prune(step)

    def _prune(self, latest_step: int) -> None:
        older = sorted(s for s in self._complete_steps() if s < latest_step)
        for step in older[: max(0, len(older) - (self.keep - 1))]:
            (self.directory / f"step-{step:09d}.pt").unlink(missing_ok=True)

    def _remove_partial_files(self) -> None:
        """Temporary files left by a crash mid-save; never named by the pointer."""
        for p in self.directory.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)

    def _complete_steps(self) -> list[int]:
        steps = []
        for p in self.directory.iterdir() if self.directory.is_dir() else ():
            m = _STEP_FILE.match(p.name)
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    # -- reading ---------------------------------------------------------------------------

    def pointer(self) -> dict[str, Any] | None:
        """The content of ``latest.json`` on this rank's filesystem, or None."""
        import json

        try:
            value = json.loads((self.directory / POINTER).read_text())
        except FileNotFoundError:
            return None
        return value if isinstance(value, dict) else None

    def latest_step(self) -> int | None:
        """The step of the last complete checkpoint (decided by the main rank), or None."""
        step = None
        if self._group.is_main:
            ptr = self.pointer()
            step = int(ptr["step"]) if ptr else None
        return self._group.broadcast_object(step, slow=True)

    def load_latest(
        self, into: Mapping[str, Any] | None = None, *, weights_only: bool = True
    ) -> LoadedCheckpoint | None:
        """Reads the last complete checkpoint, or returns None when there is none yet.

        Called on every rank: the main rank reads and verifies the file, every rank gets
        the same state (tensors on CPU). `into` maps state names to objects with
        ``load_state_dict`` (a model — DDP or not —, an optimizer, a scheduler) that are
        loaded from the matching entries. `weights_only=True` refuses arbitrary pickled
        objects (tensors, numbers, strings and containers of them load).
        """
        payload: tuple[int, dict[str, Any], str] | None = None
        error: str | None = None
        if self._group.is_main:
            try:
                payload = self._read_latest(weights_only)
            except CheckpointCorruptError as e:
                error = str(e)
        payload, error = self._group.broadcast_object((payload, error), slow=True)
        if error is not None:
            raise CheckpointCorruptError(error)
        if payload is None:
            return None
        step, state, path = payload
        if into:
            missing = [k for k in into if k not in state]
            if missing:
                raise KeyError(
                    f"checkpoint of step {step} has no entry {missing[0]!r}; "
                    f"it has: {', '.join(sorted(state)) or '(nothing)'}"
                )
            for key, obj in into.items():
                target = obj.module if type(obj).__name__ == "DistributedDataParallel" else obj
                target.load_state_dict(state[key])
        return LoadedCheckpoint(step=step, state=state, path=Path(path))

    def _read_latest(self, weights_only: bool) -> tuple[int, dict[str, Any], str] | None:
        import torch

        ptr = self.pointer()
        if ptr is None:
            return None
        path = self.directory / str(ptr["file"])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointCorruptError(
                f"{self.directory / POINTER} names {path.name}, which does not exist"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != ptr.get("sha256"):
            raise CheckpointCorruptError(
                f"checkpoint {path} has sha256 {digest[:12]}…, but {POINTER} recorded "
                f"{str(ptr.get('sha256'))[:12]}…: the file was changed or damaged after it was written"
            )
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=weights_only)
        return int(ptr["step"]), state, str(path)
