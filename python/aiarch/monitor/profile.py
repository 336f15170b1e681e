"""Reference profiles: per-feature bins and reference counts, built once from training data.

A profile is stored with a model version (as bytes, see :meth:`Profile.to_bytes`) and reused
for every window; it is never rebuilt from the reference data at serving time.

Bin layout of one feature (the native sketch's layout, see csrc/include/aiarch/drift.h):

- numeric, edges ``e0 < ... < e(k-1)``: ``[null, (-inf, e0), [e0, e1), ..., [e(k-1), +inf)]``;
- categorical, categories ``c0 .. c(m-1)``: ``[null, c0, ..., c(m-1), unknown]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from aiarch import _core
from aiarch.errors import InvalidArgumentError

__all__ = ["FeatureProfile", "Profile"]

FORMAT = "aiarch.profile"
FORMAT_VERSION = 1

EDGE_SAMPLE_ROWS = 65_536
"""Rows above which numeric bin edges come from a seeded sample of this many rows (and are
exact below it). By the Dvoretzky-Kiefer-Wolfowitz inequality (sampling without replacement is
at least as tight), every edge's rank in the full data is within 1 percentile of its nominal
quantile except with probability < 1e-5 (2 exp(-2 n 0.01^2)), and within 0.75 except with
probability < 0.002. Sampled edges only make bins slightly unequal in mass: reference counts
always cover every row, so drift metrics compare like with like."""
EDGE_SAMPLE_SEED = 0x5EED
"""Seed of the edge sample: the same data always gets the same profile."""


class FeatureProfile(msgspec.Struct, frozen=True):
    """Bins and reference statistics of one feature."""

    name: str
    """Feature name (a column name, or ``f{i}`` for unnamed array columns)."""
    kind: Literal["numeric", "categorical"]
    """How values are binned."""
    edges: list[float] = []
    """Numeric: strictly increasing bin edges (reference quantiles)."""
    categories: list[str | float] = []
    """Categorical: the reference's categories. Numbers are binned by value; strings by their
    index in this list (``Profile.encode`` maps them)."""
    reference_counts: list[int] = []
    """Reference rows per bin, in the layout above (null bin first)."""
    centers: list[float] = []
    """Numeric: a representative value per non-null bin (the mean of the reference values in
    it), used by the binned Wasserstein distance."""
    std: float = 0.0
    """Numeric: standard deviation of the finite reference values (Wasserstein normalization)."""

    @property
    def num_bins(self) -> int:
        """Bins including the null bin (and the unknown bin for categoricals)."""
        n = len(self.edges) if self.kind == "numeric" else len(self.categories)
        return n + 2

    @property
    def string_categories(self) -> bool:
        """True when categories are strings (values are mapped to codes before counting)."""
        return self.kind == "categorical" and any(isinstance(c, str) for c in self.categories)


class _ProfileFile(msgspec.Struct, frozen=True):
    format: str
    version: int
    rows: int
    features: list[FeatureProfile]


class Profile:
    """A reference profile: what a model's inputs looked like at training time.

    Example::

        profile = Profile.build(train_x, ["age", "income"], categorical=["plan"])
        blob = profile.to_bytes()          # stored with the model version
        same = Profile.from_bytes(blob)
    """

    def __init__(self, features: Sequence[FeatureProfile], rows: int) -> None:
        if not features:
            raise InvalidArgumentError("a profile needs at least one feature")
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidArgumentError(f"feature names must be unique; repeated: {dup}")
        self.features: tuple[FeatureProfile, ...] = tuple(features)
        self.rows = int(rows)
        self._codes: dict[int, dict[str, int]] = {
            i: {str(c): j for j, c in enumerate(f.categories)}
            for i, f in enumerate(self.features)
            if f.string_categories
        }

    # ------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        data: np.ndarray | Mapping[str, Any],
        feature_names: Sequence[str] | None = None,
        *,
        categorical: Iterable[str] = (),
        bins: int = 10,
        max_categories: int = 100,
        edge_sample_rows: int | None = EDGE_SAMPLE_ROWS,
    ) -> Profile:
        """Profiles reference data: a 2-D array (rows x features) or a mapping of columns.

        Numeric features get ``bins`` quantile bins (fewer when values repeat); columns named in
        ``categorical``, and every non-numeric column, get their ``max_categories`` most frequent
        values. NaN, inf and None are nulls.

        Bin edges are exact quantiles up to ``edge_sample_rows`` rows; above it they are the
        quantiles of that many rows drawn without replacement by a fixed seed (the same data
        always gets the same profile; see :data:`EDGE_SAMPLE_ROWS` for the error bound).
        ``None`` always uses every row. Reference counts, bin centers and the standard
        deviation always cover every row.
        """
        if bins < 1:
            raise InvalidArgumentError(f"bins must be >= 1, got {bins}")
        if edge_sample_rows is not None and edge_sample_rows < 1:
            raise InvalidArgumentError(
                f"edge_sample_rows must be >= 1 or None, got {edge_sample_rows}"
            )
        names, columns = _columns(data, feature_names)
        cat = set(categorical)
        unknown = sorted(cat - set(names))
        if unknown:
            raise InvalidArgumentError(f"categorical names {unknown} are not features: {names}")
        rows = len(columns[0]) if columns else 0
        for name, col in zip(names, columns):
            if len(col) != rows:
                raise InvalidArgumentError(
                    f"column {name!r} has {len(col)} rows; the first column has {rows}"
                )
        features: list[FeatureProfile | None] = [None] * len(names)
        numeric_at: list[int] = []
        numeric_columns: list[np.ndarray] = []
        categorical_at: list[int] = []
        for i, (name, col) in enumerate(zip(names, columns)):
            numeric = _as_float(col)
            if name in cat or numeric is None:
                features[i] = _categorical(name, col, numeric, max_categories)
                categorical_at.append(i)
            else:
                numeric_at.append(i)
                numeric_columns.append(numeric)
        if numeric_at:
            # An all-numeric array is summarized in place; otherwise its numeric columns.
            if isinstance(data, np.ndarray) and len(numeric_at) == len(names):
                matrix = _as_matrix(data)
            else:
                matrix = np.column_stack(numeric_columns)
            for i, f in zip(
                numeric_at, _numeric(names, numeric_at, matrix, bins, edge_sample_rows)
            ):
                features[i] = f
        if categorical_at:
            sub = cls([f for i, f in enumerate(features) if i in categorical_at and f], rows)
            by_name = dict(zip(names, columns))
            counts = sub.count({n: by_name[n] for n in sub.names}, sub.names)
            offsets = sub.offsets()
            for j, i in enumerate(categorical_at):
                features[i] = msgspec.structs.replace(
                    sub.features[j],
                    reference_counts=[int(c) for c in counts[offsets[j] : offsets[j + 1]]],
                )
        return cls([f for f in features if f is not None], rows)

    # ------------------------------------------------------------ serialization

    def to_bytes(self) -> bytes:
        """Stable, versioned msgpack encoding (format ``aiarch.profile`` version 1)."""
        return msgspec.msgpack.encode(
            _ProfileFile(FORMAT, FORMAT_VERSION, self.rows, list(self.features))
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Profile:
        """Decodes :meth:`to_bytes` output; a clear error for anything else."""
        try:
            raw = msgspec.msgpack.decode(blob, type=_ProfileFile)
        except msgspec.DecodeError as e:
            raise InvalidArgumentError(f"not an aiarch profile: {e}") from None
        if raw.format != FORMAT:
            raise InvalidArgumentError(f"not an aiarch profile: format is {raw.format!r}")
        if raw.version != FORMAT_VERSION:
            raise InvalidArgumentError(
                f"profile format version {raw.version} is not supported (this aiarch reads "
                f"version {FORMAT_VERSION})"
            )
        return cls(raw.features, raw.rows)

    # ------------------------------------------------------------ counting

    @property
    def names(self) -> list[str]:
        """Feature names in column order."""
        return [f.name for f in self.features]

    def offsets(self) -> np.ndarray:
        """Start of each feature's bins in the flat count arrays, plus the total at the end."""
        return np.cumsum([0, *(f.num_bins for f in self.features)])

    def sketch(self) -> _core.DriftSketch:
        """A new native drift sketch with this profile's bins."""
        kinds = [0 if f.kind == "numeric" else 1 for f in self.features]
        points: list[list[float]] = []
        for f in self.features:
            if f.kind == "numeric":
                points.append(list(f.edges))
            elif f.string_categories:
                points.append([float(i) for i in range(len(f.categories))])
            else:
                points.append([float(c) for c in f.categories])
        return _core.DriftSketch(kinds, points)

    def encode(self, data: Any, names: Sequence[str] | None = None) -> np.ndarray:
        """A 2-D float array for the sketch: columns in profile order; None → NaN; string
        categories → their codes (unknown strings → -1, which falls in the unknown bin).

        An ndarray of numbers passes through unchanged (no copy)."""
        if isinstance(data, np.ndarray) and data.dtype.kind in "fiub" and not self._codes:
            if data.ndim == 1 and len(self.features) == 1:
                return data.reshape(-1, 1)
            return data
        cols_names, columns = _columns(data, names or self.names)
        by_name = dict(zip(cols_names, columns))
        missing = [n for n in self.names if n not in by_name]
        if missing:
            raise InvalidArgumentError(
                f"data lacks profiled features {missing}; it has {sorted(by_name)}"
            )
        rows = len(columns[0]) if columns else 0
        out = np.empty((rows, len(self.features)), dtype=np.float64)
        for i, f in enumerate(self.features):
            col = by_name[f.name]
            codes = self._codes.get(i)
            if codes is not None:
                out[:, i] = [
                    np.nan if _is_null(v) else codes.get(str(v), -1)
                    for v in np.asarray(col, dtype=object)
                ]
            else:
                numeric = _as_float(col)
                if numeric is None:
                    raise InvalidArgumentError(
                        f"feature {f.name!r} is {f.kind} with numeric bins but got non-numeric "
                        f"values ({np.asarray(col).dtype})"
                    )
                out[:, i] = numeric
        return out

    def count(self, data: Any, names: Sequence[str] | None = None) -> np.ndarray:
        """Bin counts of ``data`` (one native call), in the flat layout."""
        sketch = self.sketch()
        sketch.count(self.encode(data, names))
        return np.asarray(sketch.take_window(), dtype=np.int64)

    def reference(self) -> np.ndarray:
        """Reference counts of every feature, in the flat layout."""
        return np.concatenate([np.asarray(f.reference_counts, np.int64) for f in self.features])

    def __repr__(self) -> str:
        kinds = sum(f.kind == "numeric" for f in self.features)
        return (
            f"Profile({len(self.features)} features: {kinds} numeric, "
            f"{len(self.features) - kinds} categorical; {self.rows} reference rows)"
        )


# ---------------------------------------------------------------- helpers


def _columns(data: Any, feature_names: Sequence[str] | None) -> tuple[list[str], list[np.ndarray]]:
    if isinstance(data, Mapping):
        names = list(feature_names) if feature_names is not None else [str(k) for k in data]
        missing = [n for n in names if n not in data]
        if missing:
            raise InvalidArgumentError(f"columns {missing} are missing; data has {list(data)}")
        return names, [np.asarray(data[n]) for n in names]
    arr = np.asarray(data)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise InvalidArgumentError(
            f"expected a 2-D array (rows x features) or a mapping of columns, got shape {arr.shape}"
        )
    names = (
        list(feature_names) if feature_names is not None else [f"f{i}" for i in range(arr.shape[1])]
    )
    if len(names) != arr.shape[1]:
        raise InvalidArgumentError(
            f"{len(names)} feature names for an array with {arr.shape[1]} columns"
        )
    return names, [arr[:, i] for i in range(arr.shape[1])]


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v))


def _as_float(col: np.ndarray) -> np.ndarray | None:
    """Float64 values with None/NaN/inf kept as non-finite; None when the column isn't numeric."""
    if col.dtype.kind in "fiub":
        return col.astype(np.float64, copy=False)
    if col.dtype.kind != "O":
        return None
    out = np.empty(len(col), dtype=np.float64)
    for i, v in enumerate(col):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
            out[i] = float(v)
        else:
            return None
    return out


def _as_matrix(data: np.ndarray) -> np.ndarray:
    arr = np.asarray(data)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def _edge_sample(rows: int, limit: int | None) -> np.ndarray | None:
    """The rows whose values set the bin edges, ascending: None (every row) up to ``limit``,
    else ``limit`` rows drawn without replacement by a fixed seed."""
    if limit is None or rows <= limit:
        return None
    return np.sort(np.random.default_rng(EDGE_SAMPLE_SEED).choice(rows, limit, replace=False))


def _numeric(
    names: Sequence[str],
    at: Sequence[int],
    matrix: np.ndarray,
    bins: int,
    edge_sample_rows: int | None,
) -> list[FeatureProfile]:
    """Numeric features of ``matrix``'s columns: numpy.quantile's edges of the (sampled) rows by
    a native selection (_core.quantile_edges: no sort, no copy of the matrix), then one native
    pass over every value (_core.summarize_numeric)."""
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1].tolist()
    edges = _core.quantile_edges(matrix, quantiles, _edge_sample(len(matrix), edge_sample_rows))
    summaries = _core.summarize_numeric(matrix, edges)
    out = []
    for i, s in zip(at, summaries):
        counts = s["counts"]
        if s["finite"] == 0:
            out.append(
                FeatureProfile(names[i], "numeric", centers=[0.0], reference_counts=counts.tolist())
            )
            continue
        kept, finite_counts = s["edges"], counts[1:]
        bounds = np.concatenate([[s["min"]], kept, [s["max"]]])
        midpoints = (bounds[:-1] + bounds[1:]) / 2
        centers = np.where(finite_counts > 0, s["sums"] / np.maximum(finite_counts, 1), midpoints)
        out.append(
            FeatureProfile(
                names[i],
                "numeric",
                edges=kept.tolist(),
                reference_counts=counts.tolist(),
                centers=centers.tolist(),
                std=float(s["std"]),
            )
        )
    return out


def _categorical(
    name: str, col: np.ndarray, numeric: np.ndarray | None, max_categories: int
) -> FeatureProfile:
    if numeric is not None:
        finite = numeric[np.isfinite(numeric)]
        values, counts = np.unique(finite, return_counts=True)
        keep = np.sort(values[np.argsort(-counts, kind="stable")[:max_categories]])
        return FeatureProfile(name, "categorical", categories=[float(v) for v in keep])
    seen: dict[str, int] = {}
    for v in np.asarray(col, dtype=object):
        if not _is_null(v):
            key = str(v)
            seen[key] = seen.get(key, 0) + 1
    top = sorted(seen, key=lambda k: (-seen[k], k))[:max_categories]
    return FeatureProfile(name, "categorical", categories=sorted(top))
