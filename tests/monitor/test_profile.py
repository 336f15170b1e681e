"""Reference profiles: bins, null handling, the stable byte format, clear errors."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from aiarch import _core
from aiarch.errors import InvalidArgumentError
from aiarch.monitor import Profile


def test_numeric_bins_from_quantiles() -> None:
    x = np.arange(1000, dtype=np.float64).reshape(-1, 1)
    p = Profile.build(x, ["v"], bins=4)
    f = p.features[0]
    assert f.kind == "numeric"
    assert f.edges == [249.75, 499.5, 749.25]
    # [null, <249.75, [249.75, 499.5), [499.5, 749.25), >= 749.25]
    assert f.reference_counts == [0, 250, 250, 250, 250]
    assert f.centers == [124.5, 374.5, 624.5, 874.5]
    assert f.std == pytest.approx(np.arange(1000).std())


def test_nan_inf_none_are_nulls() -> None:
    data = {
        "a": np.array([1.0, np.nan, np.inf, -np.inf, 2.0, 3.0]),
        "b": np.array(["x", None, "y", "x", float("nan"), "z"], dtype=object),
        "c": np.array([1, None, 2, 3, None, 4], dtype=object),
    }
    p = Profile.build(data, categorical=["b"])
    a, b, c = p.features
    assert a.reference_counts[0] == 3
    assert b.kind == "categorical" and b.categories == ["x", "y", "z"]
    assert b.reference_counts == [2, 2, 1, 1, 0]  # null, x, y, z, unknown
    assert c.kind == "numeric" and c.reference_counts[0] == 2
    # Serving-time batches count the same way (None → NaN → null; unseen → unknown).
    counts = p.count({"a": [np.nan, 5.0], "b": [None, "w"], "c": [None, None]})
    off = p.offsets()
    assert counts[off[0]] == 1
    assert counts[off[1] : off[2]].tolist() == [1, 0, 0, 0, 1]
    assert counts[off[2]] == 2


def test_numeric_categorical_codes_are_values() -> None:
    x = np.array([[3.0], [7.0], [7.0], [3.0], [9.0]])
    p = Profile.build(x, ["plan"], categorical=["plan"])
    assert p.features[0].categories == [3.0, 7.0, 9.0]
    assert p.features[0].reference_counts == [0, 2, 2, 1, 0]
    assert p.count(np.array([[7.0], [4.0]])).tolist() == [0, 0, 1, 0, 1]


def test_round_trip_bytes() -> None:
    rng = np.random.default_rng(1)
    data = {"num": rng.normal(size=500), "cat": rng.choice(["a", "b", "c"], size=500)}
    p = Profile.build(data)
    q = Profile.from_bytes(p.to_bytes())
    assert q.features == p.features
    assert q.rows == 500
    assert (q.reference() == p.reference()).all()
    assert q.to_bytes() == p.to_bytes()


def test_format_is_versioned() -> None:
    p = Profile.build(np.arange(10.0).reshape(-1, 1))
    raw = msgspec.msgpack.decode(p.to_bytes())
    assert raw["format"] == "aiarch.profile" and raw["version"] == 1
    raw["version"] = 99
    with pytest.raises(InvalidArgumentError, match="version 99 is not supported"):
        Profile.from_bytes(msgspec.msgpack.encode(raw))
    with pytest.raises(InvalidArgumentError, match="not an aiarch profile"):
        Profile.from_bytes(b"\x00garbage")


def test_bad_input_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="2 feature names for an array with 3 columns"):
        Profile.build(np.zeros((4, 3)), ["a", "b"])
    with pytest.raises(InvalidArgumentError, match=r"categorical names \['zz'\] are not features"):
        Profile.build(np.zeros((4, 1)), ["a"], categorical=["zz"])
    p = Profile.build(np.zeros((4, 2)), ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="2 feature columns; the profile has 3"):
        Profile.build(np.zeros((4, 3)), ["a", "b", "c"]).sketch().count(np.zeros((1, 2)))
    with pytest.raises(
        InvalidArgumentError, match=r"columns \['b'\] are missing; data has \['a'\]"
    ):
        p.count({"a": [1.0]})


def test_sketch_counts_strided_and_float32_without_copy_semantics() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    p = Profile.build(x)
    want = p.count(x)
    s = p.sketch()
    s.count(np.asfortranarray(x).astype(np.float64))
    s.count(x.astype(np.float32).astype(np.float64))
    wide = np.zeros((300, 8))
    wide[:, ::2] = x
    s.count(wide[:, ::2])  # a strided view
    assert (np.asarray(s.take_window()) == 3 * want).all()
    ints = _core.DriftSketch([0], [[0.5]])
    ints.count(np.array([[0], [1], [2]], dtype=np.int64))  # converted to float64
    assert ints.peek_window().tolist() == [0, 1, 2]
    with pytest.raises(InvalidArgumentError, match="2-D array"):
        ints.count(np.zeros(3))
