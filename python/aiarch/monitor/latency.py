"""Latency windows over the core's cumulative histograms.

The core's histograms only grow; a window's distribution is the difference of two snapshots
(counts subtract bucket by bucket). Snapshots travel as :class:`StageCounts` — plain arrays — so
several worker processes merge by adding them.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping

import msgspec
import numpy as np

from aiarch import _core
from aiarch.errors import InvalidArgumentError

__all__ = [
    "PERCENTILES",
    "STAGES",
    "LatencyHistory",
    "StageCounts",
    "merge_stage_counts",
    "summarize",
]

STAGES = ("queue", "feature_lookup", "execution", "end_to_end")
"""Latency stages, in request order; a stage the runtime does not measure is left out."""
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


class StageCounts(msgspec.Struct, frozen=True):
    """One cumulative latency histogram as sparse arrays (mergeable by addition)."""

    highest_trackable: int
    significant_digits: int
    length: int
    index: list[int]
    count: list[int]

    @classmethod
    def of(cls, snap: _core.HistogramSnapshot) -> StageCounts:
        counts = np.asarray(snap.counts())
        nz = np.flatnonzero(counts)
        return cls(
            snap.highest_trackable,
            snap.significant_digits,
            len(counts),
            nz.tolist(),
            counts[nz].tolist(),
        )

    def dense(self) -> np.ndarray:
        out = np.zeros(self.length, dtype=np.uint64)
        out[np.asarray(self.index, dtype=np.int64)] = np.asarray(self.count, dtype=np.uint64)
        return out

    def histogram(self, minus: StageCounts | None = None) -> _core.HistogramSnapshot:
        """The native snapshot of these counts (less ``minus``'s: a window)."""
        counts = self.dense()
        if minus is not None:
            _check_layout(self, minus)
            counts = counts - np.minimum(counts, minus.dense())
        return _core.HistogramSnapshot(self.highest_trackable, self.significant_digits, counts)


def _check_layout(a: StageCounts, b: StageCounts) -> None:
    if (a.highest_trackable, a.significant_digits, a.length) != (
        b.highest_trackable,
        b.significant_digits,
        b.length,
    ):
        raise InvalidArgumentError(
            "latency histograms have different layouts: "
            f"({a.highest_trackable}, {a.significant_digits}) vs "
            f"({b.highest_trackable}, {b.significant_digits})"
        )


def merge_stage_counts(parts: list[StageCounts]) -> StageCounts:
    """The sum of several processes' histograms of one stage."""
    first = parts[0]
    total = first.dense()
    for p in parts[1:]:
        _check_layout(first, p)
        total = total + p.dense()
    nz = np.flatnonzero(total)
    return StageCounts(
        first.highest_trackable,
        first.significant_digits,
        first.length,
        nz.tolist(),
        total[nz].tolist(),
    )


def summarize(snap: _core.HistogramSnapshot) -> dict[str, float]:
    """count, mean and percentiles in microseconds (0 when empty)."""
    if snap.total_count == 0:
        return {"count": 0, "mean_us": 0.0, **{f"{k}_us": 0.0 for k, _ in PERCENTILES}}
    out: dict[str, float] = {"count": snap.total_count, "mean_us": snap.mean / 1e3}
    for k, p in PERCENTILES:
        out[f"{k}_us"] = snap.percentile(p) / 1e3
    return out


class LatencyHistory:
    """Timestamped cumulative snapshots of one model's stages, kept for ``horizon_s``.

    Appended once per monitor tick; read by reports and scrapes. Not thread-safe: the
    monitor serializes access with its lock.
    """

    def __init__(self, horizon_s: float = 330.0) -> None:
        self.horizon_s = horizon_s
        self._times: deque[float] = deque()
        self._entries: deque[Mapping[str, StageCounts]] = deque()

    def append(self, now: float, stages: Mapping[str, StageCounts]) -> None:
        self._times.append(now)
        self._entries.append(dict(stages))
        while len(self._times) > 2 and self._times[1] <= now - self.horizon_s:
            self._times.popleft()
            self._entries.popleft()

    def at_or_before(self, t: float) -> Mapping[str, StageCounts] | None:
        """The latest snapshot taken at or before ``t`` (the oldest one when none is)."""
        if not self._times:
            return None
        i = bisect.bisect_right(list(self._times), t) - 1
        return self._entries[max(i, 0)]

    def window(
        self, now: float, seconds: float, current: Mapping[str, StageCounts]
    ) -> dict[str, _core.HistogramSnapshot]:
        """Per stage, what was recorded in the last ``seconds`` (as far as history reaches)."""
        base = self.at_or_before(now - seconds)
        out = {}
        for stage, counts in current.items():
            before = base.get(stage) if base is not None else None
            out[stage] = counts.histogram(before)
        return out
