"""The data of a retraining run: labelled rows whose event time falls in the window (from the
feedback label log), joined point-in-time with the feature store's offline features, split into
a training file and a holdout file (the newest rows), both Parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiarch.errors import InvalidArgumentError

from .policy import DataSpec

__all__ = ["RunData", "build_run_data"]


@dataclass(frozen=True)
class RunData:
    """What a run's training script reads."""

    train_path: str
    holdout_path: str
    window_start: float
    window_end: float
    rows: int
    holdout_rows: int


def _labelled_rows(spec: DataSpec, start: float, end: float) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    folder = Path(spec.label_log)
    if not spec.label_log or not folder.is_dir() or not any(folder.glob("*.parquet")):
        return pa.table({"time": pa.array([], pa.float64()), "label": pa.array([], pa.float64())})
    table = ds.dataset(str(folder), format="parquet").to_table()
    keep = pc.and_(pc.greater_equal(table["time"], start), pc.less_equal(table["time"], end))
    table = table.filter(keep)
    return table.sort_by([("time", "ascending")])


def build_run_data(spec: DataSpec, start: float, end: float, out_dir: Path) -> RunData:
    """Write `train.parquet` and `holdout.parquet` under `out_dir` for the window
    [start, end] (seconds since the epoch)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if end <= start:
        raise InvalidArgumentError(f"empty data window [{start}, {end}]")
    table = _labelled_rows(spec, start, end)
    if spec.features and table.num_rows:
        from aiarch.features import FeatureStore

        table = table.filter(pc.is_valid(table["entity_id"]))
        store = FeatureStore(home=spec.feature_home or None)
        entity_rows = pa.table(
            {
                spec.entity_key: table["entity_id"],
                "event_timestamp": pc.cast(pc.multiply(table["time"], 1e9), pa.int64()).cast(
                    pa.timestamp("ns")
                ),
                "label": table["label"],
                "time": table["time"],
            }
        )
        table = store.training_set(entity_rows, list(spec.features))
    out_dir.mkdir(parents=True, exist_ok=True)
    n = table.num_rows
    n_holdout = round(n * spec.holdout_fraction) if n > 1 else 0
    train, holdout = table.slice(0, n - n_holdout), table.slice(n - n_holdout)
    train_path, holdout_path = out_dir / "train.parquet", out_dir / "holdout.parquet"
    pq.write_table(train, train_path)
    pq.write_table(holdout, holdout_path)
    return RunData(str(train_path), str(holdout_path), start, end, train.num_rows, n_holdout)
