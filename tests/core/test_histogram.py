"""The native histogram: golden values, accuracy against numpy, merging."""

from __future__ import annotations

import numpy as np
import pytest

import aiarch


def test_small_values_are_exact_golden():
    h = aiarch.Histogram()
    for v in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]:
        h.record(v)
    s = h.snapshot()
    assert s.total_count == 10
    assert s.percentile(50) == 5
    assert s.percentile(90) == 9
    assert s.percentile(100) == 10
    assert s.min == 1
    assert s.max == 10
    assert s.mean == pytest.approx(5.5)


def test_large_values_keep_three_significant_digits_golden():
    h = aiarch.Histogram()
    h.record(1_000_000)  # 1 ms in ns: bucket width 1024 ns
    p = h.snapshot().percentile(50)
    assert abs(p - 1_000_000) <= 1_000_000 / 2048


def test_percentiles_within_stated_error_of_numpy_on_1m_lognormal():
    rng = np.random.default_rng(1234)
    values = rng.lognormal(mean=np.log(200_000), sigma=1.0, size=1_000_000).astype(np.int64)
    h = aiarch.Histogram()
    h.record_many(values)
    s = h.snapshot()
    assert s.total_count == values.size
    for p in (50, 90, 99, 99.9):
        exact = np.percentile(values, p, method="inverted_cdf")
        assert abs(s.percentile(p) - exact) / exact <= 0.001, p


def test_merge_equals_one_histogram_fed_both_streams():
    rng = np.random.default_rng(5)
    a_vals = rng.integers(1, 10**7, 10_000)
    b_vals = rng.integers(1, 10**9, 10_000)
    a, b, both = aiarch.Histogram(), aiarch.Histogram(), aiarch.Histogram()
    a.record_many(a_vals)
    b.record_many(b_vals)
    both.record_many(np.concatenate([a_vals, b_vals]))
    merged = a.snapshot()
    merged.merge(b.snapshot())
    np.testing.assert_array_equal(merged.counts(), both.snapshot().counts())
    with pytest.raises(aiarch.InvalidArgumentError, match="different layouts"):
        merged.merge(aiarch.Histogram(significant_digits=2).snapshot())


def test_snapshot_round_trips_through_counts():
    h = aiarch.Histogram()
    h.record_many(np.arange(1, 5000))
    s = h.snapshot()
    again = aiarch.HistogramSnapshot(s.highest_trackable, s.significant_digits, s.counts())
    assert again.percentile(99) == s.percentile(99)
    with pytest.raises(aiarch.InvalidArgumentError, match="entries"):
        aiarch.HistogramSnapshot(s.highest_trackable, s.significant_digits, s.counts()[:10])


def test_coordinated_omission_correction_golden():
    # One 100 ms stall in a 10 ms schedule: the 9 requests that would have been
    # sent meanwhile saw 90, 80, ..., 20 ms... down to the interval.
    h = aiarch.Histogram()
    h.record_corrected(100_000_000, 10_000_000)
    s = h.snapshot()
    assert s.total_count == 10
    assert abs(s.percentile(50) - 50_000_000) <= 50_000_000 / 2048
    assert abs(s.min - 10_000_000) <= 10_000_000 / 2048


def test_cumulative_counts_for_prometheus_buckets():
    h = aiarch.Histogram()
    h.record_many(np.array([100, 200, 300, 5_000_000]))
    assert h.snapshot().cumulative_counts([150, 1000, 10_000_000]) == [1, 3, 4]
