"""Sampled prediction log: inputs, outputs, latency and version to rotating Parquet files.

The serving side only samples rows and hands them to a bounded queue (``put_nowait``); a
background thread writes Parquet with pyarrow. When the queue is full the sample is dropped and
counted — the request path never waits for the disk.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiarch.errors import InvalidArgumentError

__all__ = ["PredictionLog", "PredictionLogConfig"]

log = logging.getLogger("aiarch.monitor")


@dataclass(frozen=True)
class PredictionLogConfig:
    """Where and how much to log."""

    directory: str = ""
    """Folder of the Parquet files (created when missing)."""
    sample_rate: float = 0.01
    """Share of rows logged, in [0, 1]."""
    rows_per_file: int = 100_000
    """Rows per file: a file is closed, and the next one started, once it holds this many."""
    max_files: int = 100
    """Oldest files are deleted beyond this many (0 = keep all)."""
    max_pending_batches: int = 1024
    """Bound of the queue between the serving side and the writer; beyond it samples drop."""
    seed: int | None = None
    """Seed of the sampler (tests)."""

    def __post_init__(self) -> None:
        if not self.directory:
            raise InvalidArgumentError("prediction log needs a directory")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise InvalidArgumentError(f"sample_rate must be in [0, 1], got {self.sample_rate}")
        if self.rows_per_file < 1 or self.max_pending_batches < 1 or self.max_files < 0:
            raise InvalidArgumentError(
                "rows_per_file and max_pending_batches must be >= 1, max_files >= 0"
            )


class PredictionLog:
    """Bounded, never-blocking, sampled Parquet log of one model's predictions."""

    def __init__(self, model: str, config: PredictionLogConfig) -> None:
        import pyarrow  # noqa: F401  (fail at configuration time, not in the writer)

        self.model = model
        self.config = config
        self.dir = Path(config.directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logged_rows = 0
        self.dropped_rows = 0
        self.files_written = 0
        self._rng = np.random.default_rng(config.seed)
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(config.max_pending_batches)
        self._thread = threading.Thread(target=self._run, name="aiarch-predlog", daemon=True)
        self._thread.start()

    def offer(
        self, version: str, inputs: tuple[np.ndarray, ...], outputs: Any, latency_ns: int
    ) -> None:
        """Samples rows of one batch and queues them. Called once per batch on the batch path;
        never blocks."""
        rows = inputs[0].shape[0] if inputs else 0
        if rows == 0 or self.config.sample_rate == 0.0:
            return
        pick = np.flatnonzero(self._rng.random(rows) < self.config.sample_rate)
        if pick.size == 0:
            return
        outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        item = (
            time.time(),
            version,
            latency_ns,
            [np.asarray(a)[pick].reshape(pick.size, -1) for a in inputs],
            [np.asarray(a)[pick].reshape(pick.size, -1) for a in outs],
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_rows += int(pick.size)

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued, closes the current file and stops the writer."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    # ------------------------------------------------------------ writer thread

    def _run(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer: Any = None
        rows_in_file = 0
        done = False
        while not done:
            got = [self._queue.get()]
            while True:  # batch what is already queued into one row group
                try:
                    got.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if got[-1] is None:
                done = True
            items = [i for i in got if i is not None]
            if not items:
                continue
            try:
                table = self._table(pa, items)
                # Split what was queued at file boundaries: a file holds at most rows_per_file
                # rows however many batches the writer found waiting.
                start = 0
                while start < table.num_rows:
                    part = table.slice(start, self.config.rows_per_file - rows_in_file)
                    if writer is None:
                        writer = pq.ParquetWriter(self._new_path(), table.schema)
                    writer.write_table(part)
                    start += part.num_rows
                    rows_in_file += part.num_rows
                    self.logged_rows += part.num_rows
                    if rows_in_file >= self.config.rows_per_file:
                        writer.close()
                        writer, rows_in_file = None, 0
                        self._prune()
            except Exception as e:  # a full disk must not kill the writer
                log.warning("prediction log for %s failed to write: %s", self.model, e)
                self.dropped_rows += sum(int(i[3][0].shape[0]) for i in items)
        if writer is not None:
            writer.close()
            self._prune()

    def _table(self, pa: Any, items: list[tuple[Any, ...]]) -> Any:
        ts, versions, lat, ins, outs = [], [], [], [], []
        for t, version, latency_ns, inputs, outputs in items:
            n = inputs[0].shape[0]
            ts.extend([t] * n)
            versions.extend([version] * n)
            lat.extend([latency_ns / 1e3] * n)
            ins.append(np.concatenate([a.astype(np.float64) for a in inputs], axis=1))
            outs.append(np.concatenate([a.astype(np.float64) for a in outputs], axis=1))
        x = np.concatenate(ins)
        y = np.concatenate(outs)
        return pa.table(
            {
                "time": pa.array(ts, pa.float64()),
                "model": pa.array([self.model] * len(ts)),
                "version": pa.array(versions),
                "batch_latency_us": pa.array(lat, pa.float64()),
                "inputs": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
                "outputs": pa.FixedSizeListArray.from_arrays(pa.array(y.ravel()), y.shape[1]),
            }
        )

    def _new_path(self) -> Path:
        self.files_written += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return self.dir / f"{self.model}-{stamp}-{os.getpid()}-{self.files_written:06d}.parquet"

    def _prune(self) -> None:
        if self.config.max_files == 0:
            return
        files = sorted(self.dir.glob(f"{self.model}-*.parquet"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.config.max_files)]:
            old.unlink(missing_ok=True)
