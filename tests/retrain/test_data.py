"""The data of a run: the window's labelled rows joined point-in-time with offline features."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aiarch.features import Entity, Feature, FeatureStore, FeatureView
from aiarch.monitor.feedback import LabelLog
from aiarch.retrain.data import build_run_data
from aiarch.retrain.policy import DataSpec

T0 = 1_700_000_000.0


def test_window_rows_get_the_feature_value_as_of_their_event_time(tmp_path: Path) -> None:
    # Card 1's amount is 10 from T0 and 20 from T0 + 100 s.
    pq.write_table(
        pa.table(
            {
                "card": [1, 1],
                "event_timestamp": pa.array(
                    [int(T0 * 1e9), int((T0 + 100) * 1e9)], pa.timestamp("ns")
                ),
                "amount": [10.0, 20.0],
            }
        ),
        tmp_path / "txn.parquet",
    )
    store = FeatureStore("memory://retrain-data", home=tmp_path / "home")
    store.apply(
        Entity("card"),
        FeatureView("txn", "card", (Feature("amount"),), source=str(tmp_path / "txn.parquet")),
    )
    log = LabelLog("fraud", str(tmp_path / "labels"))
    # (event time, entity, label, id, version, prediction): one row before the window.
    log.offer(
        [
            (T0 - 5000, 1, 0.0, None, None, None),
            (T0 + 50, 1, 1.0, "a", "1", 0.4),
            (T0 + 150, 1, 0.0, None, "1", 0.2),
            (T0 + 160, 1, 1.0, None, None, None),
        ]
    )
    log.close()
    spec = DataSpec(
        label_log=str(tmp_path / "labels"),
        features=("txn:amount",),
        entity_key="card",
        feature_home=str(tmp_path / "home"),
        holdout_fraction=0.25,
    )
    data = build_run_data(spec, T0 - 1000, T0 + 1000, tmp_path / "run")
    assert (data.rows, data.holdout_rows) == (2, 1)
    train = pq.read_table(data.train_path).to_pydict()
    holdout = pq.read_table(data.holdout_path).to_pydict()
    assert train["txn:amount"] == [10.0, 20.0] and train["label"] == [1.0, 0.0]
    assert holdout["txn:amount"] == [20.0] and holdout["label"] == [1.0]  # the newest row
    store.backend.close()


def test_empty_window_is_refused(tmp_path: Path) -> None:
    from aiarch.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="empty data window"):
        build_run_data(DataSpec(), 10.0, 10.0, tmp_path)
