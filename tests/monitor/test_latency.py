"""Latency windows over the core's histograms: percentiles against exact numpy order
statistics within the histogram's stated error, windows by snapshot difference, merges."""

from __future__ import annotations

import numpy as np
import pytest

import aiarch
from aiarch.monitor.latency import LatencyHistory, StageCounts, merge_stage_counts, summarize

# histogram.h: 3 significant digits; a percentile is the midpoint of a bucket of relative
# width <= 1/1024, so it is within 1/2048 of the exact order statistic for values >= 2048.
REL_ERROR = 1 / 2048


def _values(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.lognormal(mean=12.0, sigma=1.0, size=n)).astype(np.int64) + 2048


def test_percentiles_match_numpy_within_stated_error() -> None:
    v = _values(3, 50_000)
    h = aiarch.Histogram()
    h.record_many(v)
    s = summarize(StageCounts.of(h.snapshot()).histogram())
    assert s["count"] == v.size
    ordered = np.sort(v)
    for key, per_mille in (("p50_us", 500), ("p90_us", 900), ("p99_us", 990), ("p999_us", 999)):
        # The order statistic of rank ceil(p * n), in integers (numpy's inverted_cdf computes
        # the rank in floating point and lands one rank higher at 99.9% of 50,000).
        rank = -(-per_mille * v.size // 1000)
        exact = ordered[rank - 1]
        assert s[key] * 1e3 == pytest.approx(exact, rel=REL_ERROR), key
        assert s[key] * 1e3 == pytest.approx(
            np.percentile(v, per_mille / 10, method="inverted_cdf"), rel=0.01
        )


def test_window_is_the_difference_of_snapshots() -> None:
    h = aiarch.Histogram()
    early, late = _values(4, 5000), _values(5, 3000) * 10
    history = LatencyHistory(horizon_s=600)
    history.append(0.0, {})
    h.record_many(early)
    history.append(60.0, {"end_to_end": StageCounts.of(h.snapshot())})
    h.record_many(late)
    now = {"end_to_end": StageCounts.of(h.snapshot())}
    # At t=120 the last minute starts at the snapshot taken at t=60.
    last_minute = history.window(120.0, 60.0, now)["end_to_end"]
    assert last_minute.total_count == late.size
    assert last_minute.percentile(99) == pytest.approx(
        np.percentile(late, 99, method="inverted_cdf"), rel=REL_ERROR
    )
    # Windows reach back to the latest snapshot at or before their start: at t=100 that is
    # the one at t=0, so the window covers at least the minute asked for.
    assert history.window(100.0, 60.0, now)["end_to_end"].total_count == early.size + late.size
    everything = history.window(120.0, 1e9, now)["end_to_end"]
    assert everything.total_count == early.size + late.size


def test_merge_equals_one_histogram_of_everything() -> None:
    parts = [_values(s, 2000) for s in range(4)]
    snaps = []
    for v in parts:
        h = aiarch.Histogram()
        h.record_many(v)
        snaps.append(StageCounts.of(h.snapshot()))
    one = aiarch.Histogram()
    one.record_many(np.concatenate(parts))
    assert merge_stage_counts(snaps) == StageCounts.of(one.snapshot())


def test_merge_rejects_other_layouts() -> None:
    a = StageCounts.of(aiarch.Histogram().snapshot())
    b = StageCounts.of(aiarch.Histogram(1 << 20, 2).snapshot())
    with pytest.raises(aiarch.InvalidArgumentError, match="different layouts"):
        merge_stage_counts([a, b])
