"""Profiles of large references: exact numpy semantics below the edge sample, a seeded sample
above it (deterministic, counts still over every row), and the native one-pass summary."""

from __future__ import annotations

import numpy as np
import pytest

from aiarch import _core
from aiarch.errors import InvalidArgumentError
from aiarch.monitor import Profile
from aiarch.monitor.profile import EDGE_SAMPLE_ROWS


def _numpy_feature(col: np.ndarray, bins: int) -> tuple[list[float], list[int], list[float], float]:
    """The plain numpy profile of one column: exact quantile edges (an edge at the minimum
    dropped), counts with the null bin first, bin means (midpoints of empty bins), std."""
    finite = col[np.isfinite(col)].astype(np.float64)
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = edges[edges > finite.min()]
    index = np.searchsorted(edges, finite, side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    sums = np.bincount(index, weights=finite, minlength=len(edges) + 1)
    bounds = np.concatenate([[finite.min()], edges, [finite.max()]])
    mid = (bounds[:-1] + bounds[1:]) / 2
    centers = np.where(counts > 0, sums / np.maximum(counts, 1), mid)
    nulls = len(col) - len(finite)
    return edges.tolist(), [nulls, *counts.tolist()], centers.tolist(), float(finite.std())


@pytest.mark.parametrize("seed", range(6))
def test_exact_profile_matches_numpy_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, bins = int(rng.integers(1, 4000)), int(rng.integers(1, 16))
    x = np.column_stack(
        [
            rng.normal(size=rows) * 1e3,
            rng.integers(0, 4, size=rows).astype(np.float64),  # heavy ties
            rng.exponential(size=rows).astype(np.float32).astype(np.float64),
        ]
    )
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.02] = -np.inf
    p = Profile.build(x, bins=bins, edge_sample_rows=None)
    for j, f in enumerate(p.features):
        if not np.isfinite(x[:, j]).any():
            continue
        edges, counts, centers, std = _numpy_feature(x[:, j], bins)
        assert f.edges == edges, (seed, j)
        assert f.reference_counts == counts, (seed, j)
        assert f.centers == centers, (seed, j)
        assert f.std == pytest.approx(std, rel=1e-9), (seed, j)


def _numpy_edges(values: np.ndarray, quantiles: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return []
    return np.unique(np.quantile(finite, quantiles)).tolist()


def _selection_columns(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Columns that take the native selection through every path: spread values, heavy ties, a
    narrow range far from zero (keys equal in their top bits: several radix levels), a
    constant, tiny magnitudes, heavy tails, and a spread over a thousand octaves (more wanted
    buckets than one copying pass takes); with NaN and +/-inf mixed in."""
    x = np.column_stack(
        [
            rng.normal(size=rows) * 1e3,
            rng.integers(0, 4, size=rows).astype(np.float64),
            1.7e9 + rng.integers(0, 1000, size=rows) * 1e-3,
            np.full(rows, 5.0),
            rng.integers(-5, 5, size=rows) * 1e-300,
            rng.standard_cauchy(size=rows),
            np.exp2(rng.uniform(-500, 500, size=rows)),  # every rank in a bucket of its own
        ]
    )
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.01] = -np.inf
    x[rng.random(x.shape) < 0.01] = np.inf
    return x


# 140k rows: fewer columns copied at a time (a bounded buffer per thread).
@pytest.mark.parametrize(
    ("rows", "bins"),
    [(1, 10), (37, 3), (5000, 10), (60_000, 10), (20_000, 300), (140_000, 10)],
)
def test_quantile_edges_equal_numpy_quantile_bit_for_bit(rows: int, bins: int) -> None:
    rng = np.random.default_rng(rows + bins)
    x = _selection_columns(rows, rng)
    q = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    got = _core.quantile_edges(x, q.tolist())
    assert got == [_numpy_edges(x[:, j], q) for j in range(x.shape[1])]
    # Listed rows (repeats allowed), float32 input and a column-major copy: the same rule.
    pick = np.sort(rng.integers(0, rows, size=max(1, rows // 3)))
    assert _core.quantile_edges(x, q.tolist(), pick) == [
        _numpy_edges(x[pick, j], q) for j in range(x.shape[1])
    ]
    with np.errstate(over="ignore"):  # the widest column's extremes become +/-inf: nulls
        x32 = x.astype(np.float32)
    assert _core.quantile_edges(x32, q.tolist()) == [
        _numpy_edges(x32[:, j], q) for j in range(x.shape[1])
    ]
    assert _core.quantile_edges(np.asfortranarray(x), q.tolist()) == got


@pytest.mark.parametrize("rows", [3000, EDGE_SAMPLE_ROWS + 5000])
def test_profile_does_not_depend_on_the_reference_layout(rows: int) -> None:
    """Row-major, column-major, a strided view and float32 (whose values float64 holds
    exactly) give the same profile bytes: with and without the edge sample."""
    rng = np.random.default_rng(rows)
    x = _selection_columns(rows, rng)
    with np.errstate(over="ignore"):
        x = x.astype(np.float32).astype(np.float64)
    want = Profile.build(x).to_bytes()
    wide = np.empty((rows, 2 * x.shape[1]))
    wide[:, ::2] = x
    assert Profile.build(np.asfortranarray(x)).to_bytes() == want
    assert Profile.build(wide[:, ::2]).to_bytes() == want
    assert Profile.build(x.astype(np.float32)).to_bytes() == want


def test_quantile_edges_golden() -> None:
    # numpy's linear method on 1..10: (n - 1) * q = 2.25 -> 3 + 0.25 * (4 - 3); 4.5 -> 5.5;
    # 9 -> the maximum. Ties collapse to one edge.
    x = np.arange(1.0, 11.0).reshape(-1, 1)
    assert _core.quantile_edges(x, [0.25, 0.5, 1.0]) == [[3.25, 5.5, 10.0]]
    ties = np.array([[1.0], [1.0], [1.0], [2.0]])
    assert _core.quantile_edges(ties, [0.1, 0.2, 0.5, 0.9]) == [[1.0, 1.7000000000000002]]


def test_quantile_edges_of_columns_without_finite_values_are_empty() -> None:
    x = np.array([[np.nan, 1.0], [np.inf, 2.0], [-np.inf, 3.0]])
    assert _core.quantile_edges(x, [0.5]) == [[], [2.0]]
    assert _core.quantile_edges(x, []) == [[], []]
    assert _core.quantile_edges(np.empty((0, 2)), [0.5]) == [[], []]
    assert _core.quantile_edges(np.empty((3, 0)), [0.5]) == []


def test_quantile_edges_give_a_zero_edge_as_positive_zero() -> None:
    x = np.array([[-0.0], [0.0], [-0.0], [1.0], [-1.0]])
    (edges,) = _core.quantile_edges(x, [0.5])
    assert edges == [0.0] and np.copysign(1.0, edges[0]) == 1.0


def test_quantile_edges_refuse_bad_arguments() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(InvalidArgumentError, match=r"quantiles must be in \[0, 1\]"):
        _core.quantile_edges(x, [1.5])
    with pytest.raises(InvalidArgumentError, match="outside the batch's 3 rows"):
        _core.quantile_edges(x, [0.5], np.array([0, 3]))
    with pytest.raises(InvalidArgumentError, match="rows must be 1-D"):
        _core.quantile_edges(x, [0.5], np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match="rows"):
        _core.quantile_edges(x, [0.5], np.array([0.5]))


def test_sampled_edges_are_deterministic_and_counts_cover_every_row() -> None:
    rng = np.random.default_rng(7)
    rows = EDGE_SAMPLE_ROWS * 3
    x = rng.lognormal(size=(rows, 3))
    a, b = Profile.build(x), Profile.build(x.copy())
    assert a.to_bytes() == b.to_bytes()
    exact = Profile.build(x, edge_sample_rows=None)
    assert [f.edges for f in a.features] != [f.edges for f in exact.features]
    for j, f in enumerate(a.features):
        assert sum(f.reference_counts) == rows
        # Counts are exact for the sampled edges, over every row.
        want = np.bincount(
            np.searchsorted(f.edges, x[:, j], side="right"), minlength=len(f.edges) + 1
        )
        assert f.reference_counts[1:] == want.tolist()
        # Each sampled edge sits within one percentile of its nominal quantile in the full data.
        ranks = np.searchsorted(np.sort(x[:, j]), f.edges) / rows
        assert np.abs(ranks - np.linspace(0, 1, 11)[1:-1]).max() < 0.01


def test_small_inputs_keep_exact_edges_by_default() -> None:
    x = np.random.default_rng(3).normal(size=(EDGE_SAMPLE_ROWS, 2))
    assert Profile.build(x).to_bytes() == Profile.build(x, edge_sample_rows=None).to_bytes()


def test_mixed_columns_count_categoricals_and_numerics() -> None:
    data = {"n": np.arange(10.0), "c": np.array(["a", "b"] * 5, dtype=object)}
    p = Profile.build(data)
    assert p.names == ["n", "c"]
    assert sum(p.features[0].reference_counts) == 10
    assert p.features[1].reference_counts == [0, 5, 5, 0]


def test_summarize_numeric_refuses_bad_edges() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(InvalidArgumentError, match="strictly increasing"):
        _core.summarize_numeric(x, [[1.0, 1.0], []])
    with pytest.raises(InvalidArgumentError, match="2 feature columns but 1"):
        _core.summarize_numeric(x, [[]])
    with pytest.raises(InvalidArgumentError, match="edge_sample_rows"):
        Profile.build(x, edge_sample_rows=0)


def test_large_window_evaluation_does_not_need_scipy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from aiarch.monitor import Profile, evaluate_drift\n"
        "x = np.random.default_rng(0).normal(size=(5000, 4))\n"
        "p = Profile.build(x)\n"
        "d = evaluate_drift(p, p.count(x + 1))\n"
        "assert d.drifted and all(f.method == 'wasserstein' for f in d.features)\n"
        "print('scipy.stats' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# 500k x 20 = 10M values: split over threads by column wherever there are two or more cores.
_BIG_ROWS, _BIG_FEATURES = 500_000, 20


def _big_batch() -> tuple[np.ndarray, list[list[float]]]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(_BIG_ROWS, _BIG_FEATURES)) * np.arange(1, _BIG_FEATURES + 1)
    x[rng.random(x.shape) < 0.01] = np.nan
    edges = [
        np.quantile(x[:50_000, j][np.isfinite(x[:50_000, j])], [0.2, 0.5, 0.8]).tolist()
        for j in range(_BIG_FEATURES)
    ]
    return x, edges


def test_large_summary_equals_column_by_column_bit_for_bit() -> None:
    x, edges = _big_batch()
    whole = _core.summarize_numeric(x, edges)
    for j in range(_BIG_FEATURES):
        # One column is binned by one thread: the sequential reference.
        (alone,) = _core.summarize_numeric(x[:, j : j + 1], [edges[j]])
        for key in ("edges", "counts", "sums"):
            assert whole[j][key].tolist() == alone[key].tolist(), (j, key)
        for key in ("finite", "min", "max", "std"):
            assert whole[j][key] == alone[key], (j, key)


def test_large_count_equals_counting_in_small_batches() -> None:
    x, edges = _big_batch()
    sketch = _core.DriftSketch([0] * _BIG_FEATURES, edges)
    sketch.count(x)
    whole = np.asarray(sketch.take_window())
    for start in range(0, _BIG_ROWS, 50):  # 50 x 20 values: counted on the calling thread
        sketch.count(x[start : start + 50])
    assert whole.tolist() == np.asarray(sketch.take_window()).tolist()
    assert whole.sum() == x.size
