"""The feature-store API, run against each online backend: the native in-process table and a
real Redis server. One test body, two backends: they must agree."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.features import EXPIRED, MISSING, PRESENT, Entity, Feature, FeatureStore, FeatureView

from .conftest import CARD, PROFILE, SESSION, T0, TXN, USER, Clock

S = 10**9


def txn_rows(ids: list[int], t: int, base: float = 0.0) -> dict[str, Any]:
    n = len(ids)
    return {
        "card": np.asarray(ids, np.int64),
        "event_timestamp": np.full(n, t, np.int64),
        "amount_7d": np.asarray(ids, np.float64) * 10 + base,
        "count_1h": np.asarray(ids, np.int64) + int(base),
        "risky": np.asarray([i % 2 == 0 for i in ids]),
    }


@pytest.fixture
def store(backend_url: str, make_store: Callable[..., FeatureStore]) -> FeatureStore:
    s = make_store(backend_url)
    s.apply(CARD, USER, TXN, PROFILE, SESSION)
    return s


def test_write_then_get_values_status_and_defaults(store: FeatureStore) -> None:
    assert store.write("txn", txn_rows([1, 2, 3], T0)) == 3
    plan = store.plan(["txn:count_1h", "txn:amount_7d", "txn:risky"])
    assert plan.columns == ["txn:count_1h", "txn:amount_7d", "txn:risky"]
    values, status = plan.get([3, 99, 1])
    assert values.dtype == np.float32 and values.shape == (3, 3)
    np.testing.assert_array_equal(values, [[3, 30, 0], [-1, 0, 0], [1, 10, 0]])
    np.testing.assert_array_equal(status, [PRESENT, MISSING, PRESENT])
    values, status = plan.get(np.array([2], np.int32))
    np.testing.assert_array_equal(values, [[2, 20, 1]])


def test_ttl_is_enforced_on_reads(store: FeatureStore, clock: Clock) -> None:
    store.write("txn", txn_rows([1], T0))
    store.write("profile", {"card": [1], "event_timestamp": [T0], "age_days": [400.0]})
    plan = store.plan(["txn:amount_7d", "profile:age_days"])
    clock.now = T0 + 3600 * S  # exactly at the TTL: still served
    values, status = plan.get([1])
    np.testing.assert_array_equal(values, [[10, 400]])
    assert status[0] == PRESENT
    clock.now = T0 + 3600 * S + 1  # past it: txn expired, profile has no TTL
    values, status = plan.get([1])
    np.testing.assert_array_equal(values, [[0, 400]])
    assert status[0] == EXPIRED
    # A row missing in one view and expired in another reports the worse: missing.
    values, status = plan.get([2])
    np.testing.assert_array_equal(values, [[0, 7.5]])
    assert status[0] == MISSING


def test_newer_event_time_wins(store: FeatureStore) -> None:
    assert store.write("txn", txn_rows([1], T0 + 10, base=1)) == 1
    assert store.write("txn", txn_rows([1], T0 + 5, base=2)) == 0  # older: ignored
    assert store.write("txn", txn_rows([1], T0 + 10, base=3)) == 1  # same time: replaces
    values, _ = store.plan(["txn:count_1h"]).get([1])
    assert values[0, 0] == 1 + 3
    assert store.write("txn", txn_rows([1], T0 + 20, base=4)) == 1
    values, _ = store.plan(["txn:count_1h"]).get([1])
    assert values[0, 0] == 1 + 4


def test_write_accepts_pyarrow_tables_with_nulls_and_timestamps(store: FeatureStore) -> None:
    table = pa.table(
        {
            "card": pa.array([7, 8], pa.int64()),
            "event_timestamp": pa.array([T0, T0], pa.timestamp("ns", tz="UTC")),
            "amount_7d": pa.array([1.5, None], pa.float64()),
            "count_1h": pa.array([None, 4], pa.int64()),
            "risky": pa.array([True, False]),
        }
    )
    assert store.write("txn", table) == 2
    values, status = store.plan(["txn:*"]).get([7, 8])
    np.testing.assert_array_equal(values, [[1.5, -1, 1], [0, 4, 0]])
    np.testing.assert_array_equal(status, [PRESENT, PRESENT])


def test_multi_view_plan_groups_columns_per_view(store: FeatureStore) -> None:
    store.write("txn", txn_rows([5], T0))
    store.write("profile", {"card": [5], "event_timestamp": [T0], "age_days": [12.0]})
    plan = store.plan(["txn:amount_7d", "profile:age_days", "txn:count_1h"])
    assert plan.columns == ["txn:amount_7d", "txn:count_1h", "profile:age_days"]
    values, status = plan.get([5])
    np.testing.assert_array_equal(values, [[50, 5, 12]])
    assert status.tolist() == [PRESENT]


def test_string_entities(store: FeatureStore) -> None:
    rows = {
        "user": ["alice", "bob", "émile"],
        "event_timestamp": [T0, T0, T0],
        "clicks": [1, 2, 3],
        "dwell_s": [0.5, 0.25, 2.0],
    }
    assert store.write("session", rows) == 3
    plan = store.plan(["session:*"])
    values, status = plan.get(["émile", "nobody", b"alice"])
    np.testing.assert_array_equal(values, [[3, 2.0], [0, 1.0], [1, 0.5]])
    np.testing.assert_array_equal(status, [PRESENT, MISSING, PRESENT])
    with pytest.raises(InvalidArgumentError, match="must be str or bytes; got int"):
        plan.get([1, 2])


def test_async_get_matches_sync(store: FeatureStore) -> None:
    store.write("txn", txn_rows([1, 2], T0))
    plan = store.plan(["txn:*"])
    sync = plan.get([2, 9, 1])
    got = asyncio.run(plan.get_async([2, 9, 1]))
    np.testing.assert_array_equal(got[0], sync[0])
    np.testing.assert_array_equal(got[1], sync[1])


def test_empty_batch(store: FeatureStore) -> None:
    values, status = store.plan(["txn:*"]).get(np.array([], np.int64))
    assert values.shape == (0, 3) and status.shape == (0,)


def test_unknown_view_and_feature_name_what_exists(store: FeatureStore) -> None:
    with pytest.raises(
        NotFoundError, match=r"unknown feature view 'nope'.*\['profile', 'session', 'txn'\]"
    ):
        store.plan(["nope:x"])
    with pytest.raises(
        NotFoundError,
        match=r"has no feature 'amount'; it has: \['amount_7d', 'count_1h', 'risky'\]",
    ):
        store.plan(["txn:amount"])
    with pytest.raises(InvalidArgumentError, match="'view:feature'"):
        store.plan(["txn"])
    with pytest.raises(InvalidArgumentError, match="requested twice"):
        store.plan(["txn:risky", "txn:*"])
    with pytest.raises(InvalidArgumentError, match=r"one entity.*\['card', 'user'\]"):
        store.plan(["txn:risky", "session:clicks"])
    with pytest.raises(NotFoundError, match="unknown feature view 'ghost'"):
        store.write("ghost", txn_rows([1], T0))


def test_wrong_entity_id_type_is_a_clear_error(store: FeatureStore) -> None:
    plan = store.plan(["txn:amount_7d"])
    with pytest.raises(InvalidArgumentError, match="must be integers; got an array of <U"):
        plan.get(["a", "b"])
    with pytest.raises(InvalidArgumentError, match="must be integers; got an array of float64"):
        plan.get(np.array([1.5]))
    with pytest.raises(InvalidArgumentError, match="one-dimensional"):
        plan.get(np.zeros((2, 2), np.int64))


def test_bad_write_input_is_rejected_whole(store: FeatureStore) -> None:
    rows = txn_rows([1], T0)
    del rows["risky"]
    with pytest.raises(InvalidArgumentError, match=r"lacks columns \['risky'\]"):
        store.write("txn", rows)
    with pytest.raises(InvalidArgumentError, match="int64 keys"):
        store.write("txn", pa.table({**txn_rows([1], T0), "card": pa.array(["x"])}))
    _, status = store.plan(["txn:*"]).get([1])
    assert status[0] == MISSING  # nothing was written


def test_definitions_are_validated_and_persisted(tmp_path: Any, backend_url: str) -> None:
    with pytest.raises(
        InvalidArgumentError,
        match=r"unknown type 'float16'; valid types: float32, float64, int32, int64, bool, string",
    ):
        Feature("x", "float16")
    with pytest.raises(InvalidArgumentError, match="invalid feature view name"):
        FeatureView("bad name", "card", (Feature("x"),))
    with pytest.raises(InvalidArgumentError, match="duplicate features"):
        FeatureView("v", "card", (Feature("x"), Feature("x")))
    with pytest.raises(InvalidArgumentError, match="ttl must be >= 0"):
        FeatureView("v", "card", (Feature("x"),), ttl=-1)
    s = FeatureStore(backend_url, home=tmp_path)
    with pytest.raises(NotFoundError, match="unknown entity 'card'"):
        s.apply(TXN)
    s.apply(CARD, TXN)
    again = FeatureStore(backend_url, home=tmp_path)  # a second process would see the same
    assert again.views()["txn"] == TXN
    assert again.entities()["card"] == Entity("card")
    s.backend.close()
    again.backend.close()


def test_changed_view_layout_never_reads_old_rows(store: FeatureStore) -> None:
    store.write("txn", txn_rows([1], T0))
    store.apply(FeatureView("txn", "card", (Feature("count_1h", "int64", default=-1),), ttl=3600))
    values, status = store.plan(["txn:count_1h"]).get([1])
    assert status[0] == MISSING and values[0, 0] == -1
