"""The native feature table through its binding: gathers, TTL, defaults, snapshots (and reload
in a fresh process via native://PATH), error mapping, and the GIL released during gathers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from aiarch import _core
from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.features import EXPIRED, MISSING, PRESENT, FeatureStore

from .conftest import CARD, T0, TXN


def table(width: int = 3, kind: str = "int64") -> _core.FeatureTable:
    return _core.FeatureTable(width, kind)


def test_gather_selects_columns_fills_defaults_and_reports_status() -> None:
    t = table()
    vals = np.arange(9, dtype=np.float32).reshape(3, 3)
    assert t.upsert(np.array([10, 20, 30]), vals, np.array([100, 200, 300])) == 3
    plan = _core.FeaturePlan([(t, [2, 0], [-1.0, -2.0], 50, 0)], 2)
    values, status = plan.gather(np.array([30, 5, 10, 20]), 260)
    np.testing.assert_array_equal(values, [[8, 6], [-1, -2], [-1, -2], [-1, -2]])
    np.testing.assert_array_equal(status, [PRESENT, MISSING, EXPIRED, EXPIRED])
    assert t.counters() == {"upserts": 3, "stale": 0, "entities": 3}


def test_read_returns_row_and_event_time() -> None:
    t = table(2, "string")
    t.upsert(["k"], np.array([[1.5, 2.5]]), [T0])
    row, when = t.read("k")
    np.testing.assert_array_equal(row, [1.5, 2.5])
    assert when == T0
    assert t.read("other") is None
    ints = table(1)
    ints.upsert([5], np.array([[2.0]]), [1])
    assert ints.read(np.int64(5))[1] == 1
    with pytest.raises(InvalidArgumentError, match="must be an int; got str"):
        ints.read("5")


def test_binding_errors_map_to_aiarch_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"width must be 1\.\.65535"):
        table(0)
    with pytest.raises(InvalidArgumentError, match="key_kind must be"):
        table(1, "uuid")
    t = table()
    with pytest.raises(InvalidArgumentError, match=r"\[rows, 3\] array"):
        t.upsert([1], np.zeros((1, 2)), [0])
    with pytest.raises(InvalidArgumentError, match="one int64 timestamp per row"):
        t.upsert([1, 2], np.zeros((2, 3)), [0])
    with pytest.raises(InvalidArgumentError, match="out of range"):
        _core.FeaturePlan([(t, [3], [0.0], 0, 0)], 1)
    with pytest.raises(InvalidArgumentError, match="overlap"):
        _core.FeaturePlan([(t, [0, 1], [0.0, 0.0], 0, 0), (t, [2], [0.0], 0, 1)], 3)
    with pytest.raises(InvalidArgumentError, match="share one key kind"):
        _core.FeaturePlan([(t, [0], [0.0], 0, 0), (table(1, "string"), [0], [0.0], 0, 1)], 2)
    with pytest.raises(NotFoundError, match="cannot read feature snapshot"):
        t.load_snapshot(str(tmp_path / "absent.snap"))


def test_snapshot_round_trip_and_corruption(tmp_path: Path) -> None:
    t = table(2, "string")
    keys = [f"user-{i}" for i in range(500)]
    vals = np.random.default_rng(1).random((500, 2), dtype=np.float32)
    t.upsert(keys, vals, np.arange(500))
    path = tmp_path / "s.snap"
    t.snapshot(str(path))
    back = table(2, "string")
    assert back.load_snapshot(str(path)) == 500
    for i in (0, 123, 499):
        row, when = back.read(keys[i])
        np.testing.assert_array_equal(row, vals[i])
        assert when == i
    with pytest.raises(InvalidArgumentError, match="holds rows of 2 features with string keys"):
        table(3, "string").load_snapshot(str(path))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    fresh = table(2, "string")
    with pytest.raises(InvalidArgumentError, match="corrupt"):
        fresh.load_snapshot(str(path))
    assert fresh.counters()["entities"] == 0


def test_native_path_store_reloads_in_a_new_process(tmp_path: Path) -> None:
    url = f"native://{tmp_path / 'online'}"
    s = FeatureStore(url, home=tmp_path / "home")
    s.apply(CARD, TXN)
    s.write(
        "txn",
        {
            "card": [1, 2],
            "event_timestamp": [T0, T0],
            "amount_7d": [1.0, 2.0],
            "count_1h": [3, 4],
            "risky": [True, False],
        },
    )
    s.save()
    assert any(p.suffix == ".snap" for p in (tmp_path / "online").iterdir())
    code = textwrap.dedent(
        f"""
        from aiarch.features import FeatureStore
        s = FeatureStore({url!r}, home={str(tmp_path / "home")!r}, clock=lambda: {T0})
        v, st = s.plan(["txn:*"]).get([2, 1, 3])
        print(v.tolist(), st.tolist())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[[2.0, 4.0, 0.0], [1.0, 3.0, 1.0], [0.0, -1.0, 0.0]] [0, 0, 2]"


def test_gathers_release_the_gil_and_see_whole_rows() -> None:
    # Writers replace rows whose every value equals the row's version; readers in threads
    # must never see a mix of versions (the C++ stress test checks this at scale).
    t = table(64)
    keys = np.arange(64, dtype=np.int64)
    plan = _core.FeaturePlan([(t, list(range(64)), [0.0] * 64, 0, 0)], 64)
    t.upsert(keys, np.zeros((64, 64), np.float32), np.zeros(64, np.int64))
    stop = threading.Event()
    torn: list[int] = []

    def read() -> None:
        while not stop.is_set():
            values, _ = plan.gather(keys, 0)
            bad = np.flatnonzero(values.min(axis=1) != values.max(axis=1))
            torn.extend(bad.tolist())

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    for version in range(1, 300):
        t.upsert(keys, np.full((64, 64), version, np.float32), np.full(64, version, np.int64))
    stop.set()
    for r in readers:
        r.join(timeout=30)
    assert torn == []
    values, _ = plan.gather(keys, 0)
    assert (values == 299).all()


def test_row_blobs_are_stored_replaced_and_checked() -> None:
    t = table(1, "string")
    ones = np.ones((2, 1), np.float32)
    assert t.upsert(["a", b"b"], ones, np.array([10, 10]), [b"\x00red", b""]) == 2
    blobs, status = t.gather_blobs(["a", "b", "c"], now_ns=20, ttl_ns=0)
    assert blobs == [b"\x00red", b"", b""]
    assert status.tolist() == [PRESENT, PRESENT, MISSING]
    assert t.upsert(["a"], ones[:1], np.array([30])) == 1  # no blobs: the row's blob is empty
    assert t.gather_blobs(["a"], now_ns=40)[0] == [b""]
    assert t.gather_blobs(["a"], now_ns=100, ttl_ns=5)[1].tolist() == [EXPIRED]
    with pytest.raises(InvalidArgumentError, match="row blobs must be bytes; got str"):
        t.upsert(["a"], ones[:1], np.array([50]), ["text"])
    with pytest.raises(InvalidArgumentError, match="row blobs and values differ in rows"):
        t.upsert(["a"], ones[:1], np.array([50]), [b"x", b"y"])
    with pytest.raises(
        InvalidArgumentError, match="entity ids of a string entity must be str or bytes; got int"
    ):
        t.gather_blobs([1], now_ns=0)
