"""Materialization from Parquet: latest row per entity in the window, chunked, resumable, and
incremental through the stored watermark; on a persistent native store and on Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aiarch.errors import InvalidArgumentError
from aiarch.features import MISSING, PRESENT, Entity, Feature, FeatureStore, FeatureView

from .conftest import T0, RedisServer

S = 10**9


def write_source(path: Path, n_entities: int, times: list[int]) -> None:
    """Every entity has a row at each time; its value encodes (entity, time)."""
    ids = np.repeat(np.arange(n_entities), len(times))
    ts = np.tile(np.asarray(times, np.int64), n_entities)
    pq.write_table(
        pa.table(
            {
                "card": ids,
                "event_timestamp": pa.array(ts, pa.timestamp("ns")),
                "spend": (ids * 1000 + (ts - T0) // S).astype(np.float64),
            }
        ),
        path,
    )


@pytest.fixture(params=["native", pytest.param("redis", marks=pytest.mark.redis)])
def persistent_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "native":
        return f"native://{tmp_path / 'online'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return server.url


def make(url: str, tmp_path: Path, make_store: Callable[..., FeatureStore]) -> FeatureStore:
    src = tmp_path / "spend.parquet"
    write_source(src, 50, [T0 + 10 * S, T0 + 20 * S, T0 + 30 * S])
    s = make_store(url, home=tmp_path / "home")
    s.apply(Entity("card"), FeatureView("spend", "card", (Feature("spend"),), source=str(src)))
    return s


def spend(s: FeatureStore, ids: list[int]) -> list[float]:
    values, status = s.plan(["spend:spend"]).get(ids)
    assert (status == PRESENT).all()
    return values[:, 0].tolist()


def test_window_takes_latest_row_per_entity(
    persistent_url: str, tmp_path: Path, make_store: Callable[..., FeatureStore]
) -> None:
    s = make(persistent_url, tmp_path, make_store)
    r = s.materialize("spend", T0, T0 + 25 * S, chunk_rows=7, progress=False)
    assert (r["rows"], r["applied"], r["complete"]) == (50, 50, True)
    assert spend(s, [0, 49]) == [20.0, 49020.0]  # t=30 is outside [start, end)


def test_interrupted_run_resumes_and_watermark_makes_it_incremental(
    persistent_url: str,
    tmp_path: Path,
    make_store: Callable[..., FeatureStore],
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = make(persistent_url, tmp_path, make_store)
    first = s.materialize("spend", None, T0 + 15 * S, chunk_rows=20, max_chunks=1)
    assert (first["rows"], first["complete"]) == (20, False)
    assert "materialize spend" in capsys.readouterr().err  # the progress bar
    _, status = s.plan(["spend:spend"]).get(list(range(50)))
    assert (status[:20] == PRESENT).all() and (status[20:] == MISSING).all()

    again = make_store(persistent_url, home=tmp_path / "home")  # as a new process would
    second = again.materialize("spend", progress=False, chunk_rows=20)
    assert second["resumed"] and second["complete"]
    assert (second["rows"], second["end_ns"]) == (30, T0 + 15 * S)
    assert spend(again, list(range(50))) == [i * 1000 + 10.0 for i in range(50)]

    # Incremental: starts at the watermark, so only rows after it are read.
    third = again.materialize("spend", end=T0 + 40 * S, progress=False)
    assert third["start_ns"] == T0 + 15 * S and third["rows"] == 50
    assert spend(again, [3]) == [3030.0]


def test_source_errors_name_the_problem(
    tmp_path: Path, make_store: Callable[..., FeatureStore]
) -> None:
    src = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"card": [1], "ts": [T0]}), src)
    s = make_store(f"memory://bad-{id(tmp_path)}", home=tmp_path / "home")
    s.apply(Entity("card"), FeatureView("v", "card", (Feature("spend"),), source=str(src)))
    with pytest.raises(InvalidArgumentError, match=r"lacks columns \['event_timestamp', 'spend'\]"):
        s.materialize("v", progress=False)
    s.apply(FeatureView("w", "card", (Feature("spend"),)))
    with pytest.raises(InvalidArgumentError, match="has no source"):
        s.materialize("w", progress=False)
