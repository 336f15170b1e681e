"""Feature types on every backend: float64, int64, string and vector[N] features are stored and
returned exactly (typed lookups), joined into float32 model input (casts, vector expansion,
vocabulary codes), carried into training sets and through materialization; wrong-typed values,
wrong-length vectors and unknown types are refused with errors naming what was expected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aiarch.errors import InvalidArgumentError
from aiarch.features import MISSING, PRESENT, Entity, Feature, FeatureStore, FeatureView

from .conftest import T0, Clock

USER = Entity("user", dtype="string")
ITEM = Entity("item")
BIG = 2**62 + 12345  # not representable in float32 or float64
PROFILE = FeatureView(
    "uprofile",
    "user",
    (
        Feature("score", "float64", default=-0.5),
        Feature("visits", "int64", default=-1),
        Feature("country", "string", default="??", vocabulary=("US", "DE", "FR")),
        Feature("emb", "vector[3]", default=[9.0, 9.0, 9.0]),
        Feature("ratio"),
    ),
    ttl=3600,
)
NOTES = FeatureView("unotes", "user", (Feature("note", "string"),))


def _rows() -> dict[str, object]:
    return {
        "user": ["alice", "bob", "émile"],
        "event_timestamp": np.full(3, T0, np.int64),
        "score": [0.1, 1e300, None],
        "visits": np.array([BIG, -7, 0], np.int64),
        "country": ["DE", "XX", None],
        "emb": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32),
        "ratio": [0.25, 0.5, 0.75],
    }


def test_typed_values_round_trip_exactly(
    backend_url: str, make_store: Callable[..., FeatureStore]
) -> None:
    store = make_store(backend_url)
    store.apply(USER, PROFILE, NOTES)
    assert store.write("uprofile", _rows()) == 3
    plan = store.plan(["uprofile:*"])
    cols, status = plan.get_typed(["alice", b"bob", "\u00e9mile", "nobody"])
    assert status.tolist() == [PRESENT, PRESENT, PRESENT, MISSING]
    assert cols["uprofile:score"].dtype == np.float64
    assert cols["uprofile:score"].tolist() == [0.1, 1e300, -0.5, -0.5]  # null, missing: default
    assert cols["uprofile:visits"].dtype == np.int64
    assert cols["uprofile:visits"].tolist() == [BIG, -7, 0, -1]
    assert cols["uprofile:country"].tolist() == ["DE", "XX", "??", "??"]
    assert cols["uprofile:emb"].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [9, 9, 9]]
    assert cols["uprofile:ratio"].tolist() == [0.25, 0.5, 0.75, 0.0]


def test_model_input_casts_expands_and_encodes(
    backend_url: str, make_store: Callable[..., FeatureStore]
) -> None:
    store = make_store(backend_url)
    store.apply(USER, PROFILE)
    store.write("uprofile", _rows())
    plan = store.plan(["uprofile:emb", "uprofile:country", "uprofile:visits"])
    assert plan.width == 5
    assert plan.columns == [
        "uprofile:emb[0]",
        "uprofile:emb[1]",
        "uprofile:emb[2]",
        "uprofile:country",
        "uprofile:visits",
    ]
    values, status = plan.get(["alice", "bob", "nobody"])
    assert values.dtype == np.float32
    # country: "DE" is index 1; "XX" (not in the vocabulary) and the default "??" are 3.
    assert values.tolist() == [
        [1, 2, 3, 1, np.float32(BIG)],
        [4, 5, 6, 3, -7],
        [9, 9, 9, 3, -1],
    ]
    assert status.tolist() == [PRESENT, PRESENT, MISSING]
    # Float32-only selections of a typed view take the single-gather path: same answer.
    direct = store.plan(["uprofile:ratio", "uprofile:emb"])
    got, _ = direct.get(["bob", "nobody"])
    assert got.tolist() == [[0.5, 4, 5, 6], [0.0, 9, 9, 9]]


def test_string_without_vocabulary_is_refused_as_model_input(
    backend_url: str, make_store: Callable[..., FeatureStore]
) -> None:
    store = make_store(backend_url)
    store.apply(USER, NOTES)
    store.write("unotes", {"user": ["a"], "event_timestamp": [T0], "note": ["hello"]})
    plan = store.plan(["unotes:note"])
    with pytest.raises(InvalidArgumentError, match=r"unotes:note.*declare a vocabulary"):
        plan.get(["a"])
    cols, status = plan.get_typed(["a", "zz"])
    assert cols["unotes:note"].tolist() == ["hello", ""]
    assert status.tolist() == [PRESENT, MISSING]


def test_missing_string_keys_get_defaults_and_are_counted(
    backend_url: str, make_store: Callable[..., FeatureStore]
) -> None:
    store = make_store(backend_url)
    store.apply(USER, PROFILE)
    store.write("uprofile", _rows())
    plan = store.plan(["uprofile:visits", "uprofile:ratio"])
    before = store.counters.rows
    values, status = plan.get(["ghost", "alice", "phantom"])
    assert values.tolist() == [[-1, 0], [np.float32(BIG), 0.25], [-1, 0]]
    assert np.bincount(status, minlength=3).tolist() == [1, 0, 2]
    assert store.counters.rows - before == 3


def test_ttl_expires_typed_rows(
    backend_url: str, make_store: Callable[..., FeatureStore], clock: Clock
) -> None:
    store = make_store(backend_url)
    store.apply(USER, PROFILE)
    store.write("uprofile", _rows())
    clock.now = T0 + 3601 * 10**9
    cols, status = store.plan(["uprofile:country", "uprofile:visits"]).get_typed(["alice"])
    assert status.tolist() == [1]
    assert cols["uprofile:country"].tolist() == ["??"]
    assert cols["uprofile:visits"].tolist() == [-1]


@pytest.mark.parametrize(
    "column,value,message",
    [
        ("visits", ["12", 3, 4], r"feature 'visits' expects int64 values; got str '12' in row 0"),
        ("visits", [1.5, 2, 3], r"feature 'visits' expects int64 values; got 1\.5 in row 0"),
        ("score", ["x", 1.0, 2.0], r"feature 'score' expects float64 values; got str 'x'"),
        ("country", [1, "DE", "FR"], r"feature 'country' expects string values; got int 1"),
        (
            "emb",
            [[1, 2, 3], [1, 2], [1, 2, 3]],
            r"feature 'emb' expects vector\[3\] values; got a vector of 2 values in row 1",
        ),
        (
            "emb",
            np.zeros((3, 4), np.float32),
            r"feature 'emb' expects vector\[3\] values; got an array of shape \[3, 4\]",
        ),
    ],
)
def test_wrong_typed_values_are_refused_naming_the_feature(
    backend_url: str,
    make_store: Callable[..., FeatureStore],
    column: str,
    value: object,
    message: str,
) -> None:
    store = make_store(backend_url)
    store.apply(USER, PROFILE)
    rows = _rows()
    rows[column] = value
    with pytest.raises(InvalidArgumentError, match=message):
        store.write("uprofile", rows)
    # Nothing of the refused chunk was written.
    assert store.plan(["uprofile:visits"]).get_typed(["alice"])[1].tolist() == [MISSING]


def test_definitions_are_checked() -> None:
    with pytest.raises(InvalidArgumentError) as e:
        Feature("f", "complex64")
    msg = str(e.value)
    assert "feature 'f': unknown type 'complex64'" in msg
    for name in ("float32", "float64", "int64", "string", "vector[N]"):
        assert name in msg
    with pytest.raises(InvalidArgumentError, match="unknown type 'vector\\[0\\]'"):
        Feature("f", "vector[0]")
    with pytest.raises(InvalidArgumentError, match="default must be an int"):
        Feature("f", "int64", default=1.5)
    with pytest.raises(InvalidArgumentError, match="default must be a str"):
        Feature("f", "string", default=3)
    with pytest.raises(InvalidArgumentError, match="a number or 3 numbers, got 2 numbers"):
        Feature("f", "vector[3]", default=[1, 2])
    with pytest.raises(InvalidArgumentError, match="a vocabulary applies to string features"):
        Feature("f", "int64", vocabulary=("a",))
    assert Feature("f", "vector[2]", default=1).default == (1.0, 1.0)
    view = FeatureView.from_json(PROFILE.to_json())
    assert view == PROFILE and view.fingerprint == PROFILE.fingerprint
    assert view.features[2].vocabulary == ("US", "DE", "FR")
    # A float32-only view keeps the row format (and fingerprint) it always had.
    plain = FeatureView("p", "item", (Feature("a"), Feature("b", "bool")))
    assert plain.layout.plain and not PROFILE.layout.plain


def test_native_snapshot_keeps_typed_rows(tmp_path: Path, clock: Clock) -> None:
    url = f"native://{tmp_path / 'snap'}"
    store = FeatureStore(url, home=tmp_path / "home", clock=clock)
    store.apply(USER, PROFILE)
    store.write("uprofile", _rows())
    store.close()
    from aiarch.features import online

    online._SHARED.clear()  # a fresh process's view: tables come back from the snapshot
    again = FeatureStore(url, home=tmp_path / "home", clock=clock)
    cols, status = again.plan(["uprofile:*"]).get_typed(["alice", "bob"])
    assert status.tolist() == [PRESENT, PRESENT]
    assert cols["uprofile:visits"].tolist() == [BIG, -7]
    assert cols["uprofile:country"].tolist() == ["DE", "XX"]
    assert cols["uprofile:emb"].tolist() == [[1, 2, 3], [4, 5, 6]]


def _parquet_source(tmp_path: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    S = 10**9
    table = pa.table(
        {
            "user": ["alice", "alice", "bob"],
            "event_timestamp": pa.array([T0, T0 + 100 * S, T0 + 50 * S], pa.timestamp("ns", "UTC")),
            "score": pa.array([1.25, 2.5, 3.75], pa.float64()),
            "visits": pa.array([BIG, BIG + 1, None], pa.int64()),
            "country": ["US", "FR", "DE"],
            "emb": pa.array([[1, 1, 1], [2, 2, 2], None], pa.list_(pa.float32(), 3)),
            "ratio": pa.array([0.5, 0.25, 0.125], pa.float32()),
        }
    )
    path = tmp_path / "profile.parquet"
    pq.write_table(table, path)
    return str(path)


def test_training_set_and_materialize_keep_types(
    tmp_path: Path, backend_url: str, make_store: Callable[..., FeatureStore], clock: Clock
) -> None:
    import pyarrow as pa

    view = FeatureView(
        PROFILE.name, "user", PROFILE.features, source=_parquet_source(tmp_path), ttl=3600
    )
    store = make_store(backend_url)
    store.apply(USER, view)
    S = 10**9
    ts = store.training_set(
        {
            "user": ["alice", "alice", "bob", "carol"],
            "event_timestamp": pa.array(
                [T0 + 10 * S, T0 + 200 * S, T0 + 60 * S, T0], pa.timestamp("ns", "UTC")
            ),
        },
        ["uprofile:*"],
    )
    assert ts.schema.field("uprofile:score").type == pa.float64()
    assert ts.schema.field("uprofile:visits").type == pa.int64()
    assert ts.schema.field("uprofile:country").type == pa.string()
    assert ts.column("uprofile:visits").to_pylist() == [BIG, BIG + 1, -1, -1]
    assert ts.column("uprofile:country").to_pylist() == ["US", "FR", "DE", "??"]
    assert ts.column("uprofile:emb").to_pylist() == [[1, 1, 1], [2, 2, 2], [9, 9, 9], [9, 9, 9]]

    clock.now = T0 + 1000 * S
    result = store.materialize("uprofile", progress=False)
    assert result["rows"] == 2
    cols, status = store.plan(["uprofile:*"]).get_typed(["alice", "bob"])
    assert status.tolist() == [PRESENT, PRESENT]
    assert cols["uprofile:visits"].tolist() == [BIG + 1, -1]  # the latest row; a null: default
    assert cols["uprofile:score"].tolist() == [2.5, 3.75]
    assert cols["uprofile:country"].tolist() == ["FR", "DE"]
    assert cols["uprofile:emb"].tolist() == [[2, 2, 2], [9, 9, 9]]


def test_served_join_of_typed_features(tmp_path: Path) -> None:
    """The served model wrapper feeds int64, vector and vocabulary-coded string features as
    float32 columns, and refuses a model whose lookups hold an uncoded string."""
    from aiarch.serving.features import FeatureInputs, FeatureLookupModel

    url = f"memory://served-types-{id(tmp_path)}"
    store = FeatureStore(url, home=tmp_path / "home")
    items = FeatureView(
        "items",
        "item",
        (
            Feature("emb", "vector[2]"),
            Feature("stock", "int64", default=-1),
            Feature("kind", "string", vocabulary=("book", "toy")),
            Feature("label", "string"),
        ),
    )
    store.apply(ITEM, items)
    store.write(
        "items",
        {
            "item": [1, 2],
            "event_timestamp": [T0, T0],
            "emb": [[0.5, 1.5], [2.5, 3.5]],
            "stock": [10, 20],
            "kind": ["toy", "food"],
            "label": ["a", "b"],
        },
    )
    seen: list[np.ndarray] = []

    def model(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return x.sum(axis=1, keepdims=True)

    cfg = FeatureInputs(
        store=url, lookups=["items:emb", "items:stock", "items:kind"], home=str(tmp_path / "home")
    )
    wrapped = FeatureLookupModel("m", model, cfg)
    _, status = wrapped(np.array([2, 1, 3], np.int64))
    assert seen[-1].tolist() == [[2.5, 3.5, 20, 2], [0.5, 1.5, 10, 1], [0, 0, -1, 2]]
    assert status.tolist() == [PRESENT, PRESENT, MISSING]
    assert wrapped.stats()["rows"]["missing"] == 1
    bad = FeatureInputs(store=url, lookups=["items:label"], home=str(tmp_path / "home"))
    with pytest.raises(ValueError, match=r"model 'm': .*items:label.*vocabulary"):
        FeatureLookupModel("m", model, bad)


def test_async_typed_lookup_matches_sync(
    backend_url: str, make_store: Callable[..., FeatureStore]
) -> None:
    import asyncio

    store = make_store(backend_url)
    store.apply(USER, PROFILE)
    store.write("uprofile", _rows())
    plan = store.plan(["uprofile:*"])
    ids = ["bob", "nobody", "alice"]

    async def both() -> tuple[object, object]:
        try:
            return await plan.get_typed_async(ids), await plan.get_async(ids[:1])
        finally:
            aclose = getattr(store.backend, "aclose", None)
            if aclose is not None:
                await aclose()

    (cols, status), (values, _) = asyncio.run(both())
    want_cols, want_status = plan.get_typed(ids)
    assert status.tolist() == want_status.tolist()  # type: ignore[attr-defined]
    for ref, col in want_cols.items():
        assert cols[ref].tolist() == col.tolist(), ref  # type: ignore[index]
    assert values.tolist() == plan.get(ids[:1])[0].tolist()  # type: ignore[attr-defined]


@pytest.mark.redis
def test_typed_lookup_serves_defaults_when_redis_is_down(
    own_redis: object, make_store: Callable[..., FeatureStore]
) -> None:
    store = make_store(own_redis.url, on_unavailable="default", timeout_s=0.2)  # type: ignore[attr-defined]
    store.apply(USER, PROFILE)
    store.write("uprofile", _rows())
    own_redis.stop()  # type: ignore[attr-defined]
    cols, status = store.plan(["uprofile:visits", "uprofile:country"]).get_typed(["alice"])
    assert status.tolist() == [3]  # UNAVAILABLE
    assert cols["uprofile:visits"].tolist() == [-1]
    assert cols["uprofile:country"].tolist() == ["??"]
    assert store.counters.fallbacks == 1


def test_int64_bits_that_look_like_nans_come_back_exactly(
    backend_url: str, make_store: Callable[..., FeatureStore]
) -> None:
    """An int64 lives in two float32 slots; halves that read as signalling NaNs, quiet NaNs or
    denormals must survive every copy (gather, defaults over absent rows, Redis bytes)."""
    store = make_store(backend_url)
    store.apply(USER, PROFILE)
    tricky = [0x7F8000017F800001, -1, 0x0000000100000001, -(2**63), 2**63 - 1]
    rows = {
        "user": [f"u{i}" for i in range(5)],
        "event_timestamp": np.full(5, T0, np.int64),
        "score": [0.0] * 5,
        "visits": np.array(tricky, np.int64),
        "country": ["US"] * 5,
        "emb": np.zeros((5, 3), np.float32),
        "ratio": [0.0] * 5,
    }
    store.write("uprofile", rows)
    ids = ["nobody", "u0", "u1", "u2", "u3", "u4"]
    cols, _ = store.plan(["uprofile:visits", "uprofile:ratio"]).get_typed(ids)
    assert cols["uprofile:visits"].tolist() == [-1, *tricky]
