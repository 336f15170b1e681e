"""Arrays crossing into the core: byte-swapped and strided arrays are read by value (copied to
native order when needed), other element kinds are refused naming what was expected. Covers
model inputs and outputs, the feature table, the drift sketch and histograms."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import aiarch
from aiarch import _core
from aiarch.errors import ExecutionError, InvalidArgumentError

SWAPPED = ">" if np.little_endian else "<"  # the byte order this machine does not use


def _double_runtime(dtype: str = "float32") -> aiarch.Runtime:
    rt = aiarch.Runtime()
    rt.add_model(
        "double",
        lambda x: x * 2,
        inputs=[aiarch.TensorSpec("x", dtype, (2,))],
        outputs=[aiarch.TensorSpec("y", dtype, (2,))],
    )
    return rt


def test_swapped_byte_order_input_gives_the_right_numbers():
    x = np.array([[1, 2]], dtype=f"{SWAPPED}f4")
    with _double_runtime() as rt:
        np.testing.assert_array_equal(rt.infer_sync("double", x), [[2.0, 4.0]])


@pytest.mark.parametrize("dtype", ["i2", "i4", "i8", "u2", "u4", "u8", "f2", "f8"])
def test_swapped_byte_order_works_for_every_multibyte_dtype(dtype):
    x = np.array([[3, 250]], dtype=f"{SWAPPED}{dtype}")
    native = np.dtype(dtype).newbyteorder("=")
    with _double_runtime(native.name) as rt:
        out = rt.infer_sync("double", x)
    assert out.dtype == native
    np.testing.assert_array_equal(out, np.array([[6, 500]], dtype=native))


def test_swapped_byte_order_input_through_the_event_loop():
    async def main(rt: aiarch.Runtime) -> list[np.ndarray]:
        xs = [np.array([[i, i + 1]], dtype=f"{SWAPPED}f4") for i in range(8)]
        return await asyncio.gather(*(rt.infer("double", x) for x in xs))

    with _double_runtime() as rt:
        outs = asyncio.run(main(rt))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, [[2.0 * i, 2.0 * i + 2]])


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a[:, ::2],  # strided columns
        lambda a: a[::2, :2],  # strided rows
        lambda a: np.asfortranarray(a[:, :2]),  # column-major
        lambda a: a[:, :2].astype(f"{SWAPPED}f4")[::-1],  # swapped and reversed
    ],
    ids=["columns", "rows", "fortran", "swapped-reversed"],
)
def test_non_contiguous_input_gives_the_right_numbers(make):
    a = np.arange(24, dtype=np.float32).reshape(6, 4)
    x = make(a)
    assert not x.flags.c_contiguous or x.dtype.byteorder == SWAPPED
    with _double_runtime() as rt:
        np.testing.assert_array_equal(rt.infer_sync("double", x), np.asarray(x) * 2)


def test_swapped_and_native_inputs_share_one_cache_entry():
    rt = aiarch.Runtime()
    rt.add_model(
        "double",
        lambda x: x * 2,
        inputs=[aiarch.TensorSpec("x", "float32", (2,))],
        outputs=[aiarch.TensorSpec("y", "float32", (2,))],
        cache=aiarch.CacheConfig(max_bytes=1 << 20),
    )
    with rt:
        rt.infer_sync("double", np.array([[1, 2]], np.float32))
        out = rt.infer_sync("double", np.array([[1, 2]], f"{SWAPPED}f4"))
        np.testing.assert_array_equal(out, [[2.0, 4.0]])
        assert rt.stats("double")["cache"]["hits"] == 1


@pytest.mark.parametrize(
    ("x", "got"),
    [
        (np.array([[1.0, 2.0]], dtype=object), "object"),
        (np.array([["1", "2"]]), "<U1"),
        (np.array([[1 + 0j, 2]], dtype=np.complex64), "complex64"),
    ],
    ids=["object", "str", "complex"],
)
def test_non_numeric_inputs_are_refused_naming_what_was_expected(x, got):
    with _double_runtime() as rt, pytest.raises(InvalidArgumentError) as info:
        rt.infer_sync("double", x)
    message = str(info.value)
    assert "input 'x' of model 'double'" in message
    assert "bool, int, uint, float or bfloat16" in message
    assert f"got dtype {got}" in message


def _runtime_returning(fn) -> aiarch.Runtime:
    rt = aiarch.Runtime()
    rt.add_model(
        "m",
        fn,
        inputs=[aiarch.TensorSpec("x", "float32", (2,))],
        outputs=[aiarch.TensorSpec("y", "float32", (2,))],
        warmup=False,
    )
    return rt


def test_swapped_and_strided_model_outputs_give_the_right_numbers():
    with _runtime_returning(lambda x: (x * 2).astype(f"{SWAPPED}f4")) as rt:
        np.testing.assert_array_equal(
            rt.infer_sync("m", np.array([[1, 2]], np.float32)), [[2.0, 4.0]]
        )
    with _runtime_returning(lambda x: np.repeat(x, 2, axis=1)[:, ::2] * 3) as rt:
        np.testing.assert_array_equal(
            rt.infer_sync("m", np.array([[1, 2]], np.float32)), [[3.0, 6.0]]
        )


def test_object_model_output_fails_the_request_naming_the_dtype():
    with (
        _runtime_returning(lambda x: x.astype(object)) as rt,
        pytest.raises(
            ExecutionError, match=r"model 'm' output 0 must be an array of .* got dtype object"
        ),
    ):
        rt.infer_sync("m", np.array([[1, 2]], np.float32))


# ---------------------------------------------------------------- feature table


def test_feature_upsert_and_gather_read_swapped_and_strided_arrays_by_value():
    t = _core.FeatureTable(2, "int64")
    ids = np.array([7, 8], dtype=f"{SWAPPED}i8")
    wide = np.array([[1.5, 0, 2.5], [3.5, 0, 4.5]], dtype=f"{SWAPPED}f4")
    event_ns = np.array([100, 0, 200], dtype=f"{SWAPPED}i8")[::2]
    assert t.upsert(ids, wide[:, ::2], event_ns) == 2
    row, when = t.read(8)
    np.testing.assert_array_equal(row, [3.5, 4.5])
    assert when == 200
    plan = _core.FeaturePlan([(t, [1, 0], [0.0, 0.0], 0, 0)], 2)
    values, status = plan.gather(np.array([8, 0, 7], dtype=f"{SWAPPED}i8")[::2], 300)
    np.testing.assert_array_equal(values, [[4.5, 3.5], [2.5, 1.5]])
    np.testing.assert_array_equal(status, [0, 0])


@pytest.mark.parametrize(
    ("ids", "values", "event_ns", "match"),
    [
        ([1], np.array([[1.0, 2.0]], dtype=object), [0], r"values must be .* got dtype object"),
        (
            np.array([1], dtype=object),
            np.zeros((1, 2)),
            [0],
            r"entity ids .* must be integers; got an array of object",
        ),
        (
            [1],
            np.zeros((1, 2)),
            np.array([1.5]),
            r"event_ns .* int or uint values; got dtype float",
        ),
        (np.array([2**63], np.uint64), np.zeros((1, 2)), [0], "must fit in int64"),
    ],
    ids=["object-values", "object-ids", "float-event-time", "uint64-above-int64"],
)
def test_feature_upsert_refuses_what_it_would_misread(ids, values, event_ns, match):
    t = _core.FeatureTable(2, "int64")
    with pytest.raises(InvalidArgumentError, match=match):
        t.upsert(ids, values, event_ns)
    assert t.counters()["upserts"] == 0


# ---------------------------------------------------------------- drift sketch


def test_drift_sketch_counts_swapped_and_strided_arrays_by_value():
    data = np.array([[0.1, 9.0, 0.7], [0.9, 9.0, 0.2], [0.4, 9.0, 0.6]], np.float64)

    def counts(batch: np.ndarray) -> list[int]:
        s = _core.DriftSketch([0, 0], [[0.5], [0.5]])
        s.count(batch)
        return np.asarray(s.peek_window()).tolist()

    want = counts(np.ascontiguousarray(data[:, ::2]))
    assert counts(data[:, ::2].astype(f"{SWAPPED}f8")) == want
    assert counts(data.astype(f"{SWAPPED}f4")[:, ::2]) == want
    assert counts(data[:, ::2].astype(f"{SWAPPED}f4").copy()) == want


def test_drift_sketch_refuses_object_and_str_arrays():
    s = _core.DriftSketch([0], [[0.5]])
    for batch in (np.array([[0.1]], dtype=object), np.array([["a"]])):
        with pytest.raises(InvalidArgumentError, match=r"drift batch .* got dtype"):
            s.count(batch)
    assert s.values_counted == 0


# ---------------------------------------------------------------- histograms


def test_histogram_reads_swapped_values_and_refuses_floats():
    h = aiarch.Histogram()
    h.record_many(np.array([1000, 2000, 3000], dtype=f"{SWAPPED}i8"))
    snap = h.snapshot()
    assert snap.total_count == 3
    assert 990 <= snap.min <= 1000 and 3000 <= snap.max <= 3010
    with pytest.raises(InvalidArgumentError, match="values must be an array of int or uint"):
        h.record_many(np.array([1.5]))
    assert h.snapshot().total_count == 3
