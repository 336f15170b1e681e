"""Property tests: random bytes and random JSON never crash or hang the parser and decoder, and
the server keeps answering valid requests afterwards."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip(
    "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
)
from aiarch.serving import v2  # noqa: E402
from aiarch.serving.errors import HttpError  # noqa: E402

from .conftest import request  # noqa: E402
from .models import linear  # noqa: E402

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
_datatype = st.sampled_from([*v2.DATATYPES, "FP33", ""])
_tensor = st.fixed_dictionaries(
    {
        "name": st.text(max_size=4),
        "shape": st.lists(st.integers(-2, 5), max_size=3),
        "datatype": _datatype,
    },
    optional={
        "data": _json,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "x"]), st.integers(-5, 64), max_size=2
        ),
    },
)
_request = st.fixed_dictionaries(
    {"inputs": st.lists(_tensor, max_size=3)},
    optional={
        "id": _json,
        "parameters": st.dictionaries(st.text(max_size=10), _json, max_size=3),
        "outputs": _json,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=256), hlen=st.none() | st.integers(-4, 300))
def test_decoder_random_bytes(body: bytes, hlen: int | None) -> None:
    try:
        v2.decode_infer(body, hlen)
    except HttpError as e:
        assert e.status == 400


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_request, tail=st.binary(max_size=64))
def test_decoder_random_requests(doc: dict, tail: bytes) -> None:
    header = json.dumps(doc).encode()
    for body, hlen in ((header, None), (header + tail, len(header))):
        try:
            d = v2.decode_infer(body, hlen)
        except HttpError as e:
            assert e.status == 400
        else:
            assert len(d.arrays) == len(doc["inputs"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    junk=st.binary(max_size=512)
    | st.builds(
        lambda m, p, h: f"{m} {p} HTTP/1.1\r\n{h}\r\n\r\n".encode(),
        st.sampled_from(["GET", "POST", "PUT", "X"]),
        st.sampled_from(["/v2", "/v2/models/lin/infer", "/%ff", "/v2/models/../x", "*"]),
        st.text(max_size=40),
    )
)
def test_server_survives_random_input(server, junk: bytes) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        # The server answers what it can parse and closes once the client has finished
        # sending: a read that times out is a connection the server left hanging.
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass  # refused outright: fine, as long as the server itself lives on
    _assert_answers_correctly(server.port)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(doc=_request)
def test_server_random_infer_json(server, doc: dict) -> None:  # type: ignore[no-untyped-def]
    r = request(server.port, "POST", "/v2/models/lin/infer", json.dumps(doc).encode())
    assert r.status in (200, 400), r.body
    assert "error" in r.json() or r.status == 200
    _assert_answers_correctly(server.port)


_ROW = np.linspace(-1.0, 1.0, 8, dtype=np.float32)


def _assert_answers_correctly(port: int) -> None:
    """The server is alive and right: a valid request gets 200 and the model's exact answer."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": _ROW.tolist()}]}
    ).encode()
    r = request(port, "POST", "/v2/models/lin/infer", body)
    assert r.status == 200, r.body
    out = r.json()["outputs"][0]  # type: ignore[index]
    assert out["shape"] == [1, 4]
    np.testing.assert_allclose(out["data"], linear(_ROW[None, :])[0], rtol=1e-6)
