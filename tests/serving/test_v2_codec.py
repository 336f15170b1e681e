"""Unit tests of the v2 codec (no server, no runtime)."""

from __future__ import annotations

import json

import numpy as np
import pytest

msgspec = pytest.importorskip("msgspec", reason="msgspec is not installed")
pytest.importorskip(
    "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
)

from aiarch.serving import v2  # noqa: E402
from aiarch.serving.errors import HttpError, status_for_exception  # noqa: E402


def _req(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_json_nested_and_flat_decode_to_the_same_array() -> None:
    nested = _req(
        [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}]
    )
    flat = _req([{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}])
    a = v2.decode_infer(nested, None).arrays[0]
    b = v2.decode_infer(flat, None).arrays[0]
    assert a.dtype == np.float32 and a.shape == (2, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    "datatype,data,expected",
    [
        ("BOOL", [True, False], np.array([True, False])),
        ("INT8", [-128, 127], np.array([-128, 127], np.int8)),
        ("UINT64", [0, 2**64 - 1], np.array([0, 2**64 - 1], np.uint64)),
        ("FP64", [0.5, -1], np.array([0.5, -1.0])),
        ("FP16", [1.5, 2], np.array([1.5, 2], np.float16)),
        ("BYTES", ["a", "bc"], np.array([b"a", b"bc"], dtype=object)),
    ],
)
def test_json_datatypes(datatype: str, data: list, expected: np.ndarray) -> None:
    d = v2.decode_infer(
        _req([{"name": "t", "shape": [2], "datatype": datatype, "data": data}]), None
    )
    arr = d.arrays[0]
    assert arr.dtype == expected.dtype
    np.testing.assert_array_equal(arr, expected)


@pytest.mark.parametrize(
    "inp,fragment",
    [
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2, 3]}, "number of elements"),
        ({"name": "x", "shape": [1], "datatype": "FP33", "data": [1]}, "unsupported datatype"),
        ({"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}, "out of range"),
        ({"name": "x", "shape": [1], "datatype": "INT32", "data": ["a"]}, "invalid INT32"),
        (
            {"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]},
            "invalid inference request",
        ),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, "has no data"),
    ],
)
def test_json_errors_are_400(inp: dict, fragment: str) -> None:
    with pytest.raises(HttpError) as e:
        v2.decode_infer(_req([inp]), None)
    assert e.value.status == 400
    assert fragment in e.value.message


def test_binary_inputs_are_zero_copy_views() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.arange(3, dtype=np.int64)
    header = _req(
        [
            {
                "name": "x",
                "shape": [3, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            },
            {"name": "y", "shape": [3], "datatype": "INT64", "data": [0, 1, 2]},
        ]
    )
    body = header + x.tobytes()
    d = v2.decode_infer(body, len(header))
    got = d.arrays[0]
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(d.arrays[1], y)
    assert not got.flags.owndata and not got.flags.writeable
    # The view points into the request body itself: no copy was made.
    base = got.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is body


def test_binary_bytes_tensor_length_prefixed() -> None:
    items = [b"x", b"", b"\xff\x00"]
    payload = b"".join(len(b).to_bytes(4, "little") + b for b in items)
    header = _req(
        [
            {
                "name": "s",
                "shape": [3],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(payload)},
            }
        ]
    )
    d = v2.decode_infer(header + payload, len(header))
    assert list(d.arrays[0]) == items


@pytest.mark.parametrize(
    "size,hlen_delta,fragment",
    [
        (15, 0, "does not match"),
        (16, 1, "runs past the body"),
    ],
)
def test_binary_size_mismatches(size: int, hlen_delta: int, fragment: str) -> None:
    header = _req(
        [{"name": "x", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": size}}]
    )
    body = header + b"\0" * (16 - hlen_delta)
    with pytest.raises(HttpError, match=fragment):
        v2.decode_infer(body, len(header))


def test_header_length_beyond_body_is_400() -> None:
    with pytest.raises(HttpError, match="exceeds"):
        v2.decode_infer(b"{}", 10)


def test_reserved_and_sequence_parameters_rejected() -> None:
    inp = [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]
    with pytest.raises(HttpError, match="reserved"):
        v2.decode_infer(_req(inp, parameters={"triton_x": 1}), None)
    with pytest.raises(HttpError, match="sequence"):
        v2.decode_infer(_req(inp, parameters={"sequence_id": 1}), None)


def test_encode_response_mixed_binary_and_json() -> None:
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    b = np.array([[True], [False]])
    header, buffers = v2.encode_infer_response(
        "m", "1", "id7", ["a", "b"], ["FP32", "BOOL"], [a, b], [True, False]
    )
    doc = json.loads(header)
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "id7"
    assert doc["outputs"][0] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [2, 2],
        "parameters": {"binary_data_size": 16},
    }
    assert doc["outputs"][1]["data"] == [True, False]
    assert bytes(memoryview(buffers[0]).cast("B")) == a.tobytes()


def test_encode_bytes_outputs() -> None:
    arr = np.array([b"hi", b"\xff"], dtype=object)
    _header, buffers = v2.encode_infer_response("m", "1", None, ["s"], ["BYTES"], [arr], [True])
    assert buffers[0] == b"\x02\x00\x00\x00hi\x01\x00\x00\x00\xff"
    with pytest.raises(HttpError, match="UTF-8"):
        v2.encode_infer_response("m", "1", None, ["s"], ["BYTES"], [arr], [False])


def test_predict_rows() -> None:
    arrays = v2.decode_predict(
        b'{"inputs": [[1, 2], [3, 4], [5, 6]]}', [("x", np.dtype(np.float32), (2,))]
    )
    assert arrays[0].shape == (3, 2) and arrays[0].dtype == np.float32
    with pytest.raises(HttpError):
        v2.decode_predict(b'{"inputs": [[1, 2], [3]]}', [("x", np.dtype(np.float32), (2,))])
    body = v2.encode_predict_response(["y"], [np.array([[1.5], [2.0]], np.float32)])
    assert json.loads(body) == {"outputs": [[1.5], [2.0]]}


def test_raw_binary_request() -> None:
    x = np.arange(6, dtype=np.float32)
    arr = v2.decode_raw(x.tobytes(), "x", np.dtype(np.float32), (6,))
    assert arr.shape == (1, 6)
    with pytest.raises(HttpError):
        v2.decode_raw(b"\0" * 5, "x", np.dtype(np.float32), (6,))


class _Fake(Exception):
    pass


def test_error_mapping_by_class_name() -> None:
    aiarch = pytest.importorskip("aiarch", reason="aiarch core not built")
    cases = [
        (aiarch.InvalidArgumentError("x"), 400),
        (aiarch.NotFoundError("x"), 404),
        (aiarch.AlreadyExistsError("x"), 400),
        (aiarch.DeadlineExceededError("x"), 504),
        (aiarch.UnavailableError("x"), 503),
        (aiarch.InternalError("x"), 500),
        (aiarch.ExecutionError("x"), 500),
        (HttpError(413, "big"), 413),
        (_Fake("boom"), 500),
    ]
    for exc, status in cases:
        assert status_for_exception(exc)[0] == status, exc
    exc = aiarch.ResourceExhaustedError("full")
    exc.retry_after_s = 2.2
    status, _, headers = status_for_exception(exc)
    assert status == 429 and ("retry-after", "3") in headers
