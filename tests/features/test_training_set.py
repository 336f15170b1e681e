"""Point-in-time correctness of training sets against a brute-force oracle on small random
data: each label row gets, per view, the latest source row of its entity at or before the
label's timestamp, only within the view's TTL, else the default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aiarch.errors import InvalidArgumentError, NotFoundError
from aiarch.features import Entity, Feature, FeatureStore, FeatureView

from .conftest import T0

S = 10**9


def random_source(rng: np.random.Generator, n_rows: int, n_entities: int) -> dict[str, np.ndarray]:
    # Distinct event times so that "the latest row" is unique.
    times = T0 + rng.choice(1000, size=n_rows, replace=False).astype(np.int64) * S
    return {
        "card": rng.integers(0, n_entities, n_rows),
        "event_timestamp": times,
        "a": rng.normal(size=n_rows).astype(np.float32),
        "b": rng.integers(-50, 50, n_rows).astype(np.float32),
    }


def oracle(
    src: dict[str, np.ndarray], card: int, t: int, ttl_s: float, feature: str, default: float
) -> float:
    best_t, best_v = None, default
    for k, ts, v in zip(src["card"], src["event_timestamp"], src[feature]):
        if k == card and ts <= t and (best_t is None or ts > best_t):
            best_t, best_v = ts, float(v)
    if best_t is None or (ttl_s > 0 and t - best_t > ttl_s * S):
        return default
    return best_v


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_brute_force_oracle(
    seed: int, tmp_path: Path, make_store: Callable[..., FeatureStore]
) -> None:
    rng = np.random.default_rng(seed)
    fast = random_source(rng, 120, 8)
    slow = random_source(rng, 60, 8)
    for name, cols in (("fast", fast), ("slow", slow)):
        pq.write_table(
            pa.table(
                {**cols, "event_timestamp": pa.array(cols["event_timestamp"], pa.timestamp("ns"))}
            ),
            tmp_path / f"{name}.parquet",
        )
    s = make_store(f"memory://pit-{seed}-{id(tmp_path)}", home=tmp_path / "home")
    s.apply(
        Entity("card"),
        FeatureView(
            "fast",
            "card",
            (Feature("a", default=-1.0), Feature("b")),
            source=str(tmp_path / "fast.parquet"),
            ttl=60,
        ),
        FeatureView(
            "slow", "card", (Feature("a", default=9.0),), source=str(tmp_path / "slow.parquet")
        ),
    )
    n = 200
    label_cards = rng.integers(0, 10, n)  # 8 and 9 never appear in the sources
    label_times = T0 + rng.integers(-20, 1100, n).astype(np.int64) * S
    label_times[:5] = fast["event_timestamp"][:5]  # a label exactly at an event time sees it
    entity_rows = {
        "card": label_cards,
        "event_timestamp": label_times.astype("datetime64[ns]"),
        "label": np.arange(n),
    }
    out = s.training_set(entity_rows, ["fast:a", "slow:a", "fast:b"])
    assert out.column_names == ["card", "event_timestamp", "label", "fast:a", "slow:a", "fast:b"]
    got: dict[str, Any] = out.to_pydict()
    assert got["label"] == list(range(n))  # order kept
    for i in range(n):
        c, t = int(label_cards[i]), int(label_times[i])
        assert got["fast:a"][i] == pytest.approx(oracle(fast, c, t, 60, "a", -1.0)), i
        assert got["fast:b"][i] == pytest.approx(oracle(fast, c, t, 60, "b", 0.0)), i
        assert got["slow:a"][i] == pytest.approx(oracle(slow, c, t, 0, "a", 9.0)), i


def test_nulls_instead_of_defaults_and_input_errors(
    tmp_path: Path, make_store: Callable[..., FeatureStore]
) -> None:
    pq.write_table(
        pa.table({"card": [1], "event_timestamp": pa.array([T0], pa.timestamp("ns")), "a": [2.0]}),
        tmp_path / "v.parquet",
    )
    s = make_store(f"memory://pitnull-{id(tmp_path)}", home=tmp_path / "home")
    s.apply(
        Entity("card"),
        FeatureView("v", "card", (Feature("a", default=5.0),), source=str(tmp_path / "v.parquet")),
    )
    rows = pa.table(
        {"card": [1, 1], "event_timestamp": pa.array([T0 - 1, T0], pa.timestamp("ns", tz="UTC"))}
    )
    assert s.training_set(rows, ["v:a"], fill_defaults=False).column("v:a").to_pylist() == [
        None,
        2.0,
    ]
    assert s.training_set(rows, ["v:*"]).column("v:a").to_pylist() == [5.0, 2.0]
    with pytest.raises(InvalidArgumentError, match="lack the timestamp column 'ts'"):
        s.training_set(rows, ["v:a"], timestamp_field="ts")
    with pytest.raises(InvalidArgumentError, match="lack the key column 'card'"):
        s.training_set({"event_timestamp": [T0]}, ["v:a"])
    with pytest.raises(NotFoundError, match=r"has no feature 'z'; it has: \['a'\]"):
        s.training_set(rows, ["v:z"])
