"""The native request path of the server (the default front end): v2 infer answered in C++,
everything else forwarded to the App, and `--http python` as the fallback.

Runs against the real server (`server` fixture, native by default) on 127.0.0.1.
"""

from __future__ import annotations

import errno
import json
import random
import socket
import struct
import time

import numpy as np
import pytest

from .conftest import read_response, request, running_server
from .models import _W


def _json_infer(rows: list[list[float]], **extra: object) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": rows}
            ],
            **extra,
        }
    ).encode()


def _raw_data(body: bytes) -> str:
    """The text of the first output's `data` array, as sent."""
    start = body.index(b'"data":[') + 8
    return body[start : body.index(b"]", start)].decode()


def test_json_floats_are_shortest_round_trip(server) -> None:  # type: ignore[no-untyped-def]
    x = np.array([[0.1, -0.2, 0.3, 1e-3, 5, 6, 7, 8.5]], dtype=np.float32)
    r = request(server.port, "POST", "/v2/models/lin/infer", _json_infer(x.tolist()))
    assert r.status == 200, r.body
    expected = x @ _W
    texts = _raw_data(r.body).split(",")
    # Each number reads back as exactly the model's float32, in the fewest digits doing so.
    assert np.array_equal(np.array([float(t) for t in texts], dtype=np.float32), expected[0])
    for t, v in zip(texts, expected[0]):
        assert np.float32(float(t)) == v
        assert len(t.lstrip("-").replace(".", "").lstrip("0")) <= 9


def test_binary_request_and_response(server) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    header = json.dumps(
        {
            "id": "b1",
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    r = request(
        server.port,
        "POST",
        "/v2/models/lin/infer",
        header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status == 200, r.body
    assert r.headers["content-type"] == "application/octet-stream"
    hlen = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.body[:hlen])
    assert meta["id"] == "b1" and meta["outputs"][0]["shape"] == [2, 4]
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 4 * 4
    y = np.frombuffer(r.body[hlen:], dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(y, x @ _W, rtol=1e-6)


def test_raw_binary_request(server) -> None:  # type: ignore[no-untyped-def]
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    r = request(
        server.port,
        "POST",
        "/v2/models/lin/infer",
        x.tobytes(),
        {"Inference-Header-Content-Length": "0"},
    )
    assert r.status == 200, r.body
    hlen = int(r.headers["inference-header-content-length"])
    y = np.frombuffer(r.body[hlen:], dtype=np.float32)
    np.testing.assert_allclose(y, x @ _W, rtol=1e-6)


def test_two_inputs_and_selected_outputs(server) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(
        {
            "inputs": [
                {"name": "b", "shape": [1, 2], "datatype": "FP64", "data": [0.25, -1]},
                {"name": "a", "shape": [1, 3], "datatype": "INT32", "data": [[1, 2, 2147483647]]},
            ],
            "outputs": [{"name": "double"}, {"name": "sum"}],
        }
    ).encode()
    r = request(server.port, "POST", "/v2/models/two/versions/3/infer", body)
    assert r.status == 200, r.body
    out = r.json()
    assert out["model_version"] == "3"  # type: ignore[index]
    assert [o["name"] for o in out["outputs"]] == ["double", "sum"]  # type: ignore[index]
    assert out["outputs"][0]["data"] == [0.5, -2.0]  # type: ignore[index]
    assert out["outputs"][1]["data"] == [1 + 2 + 2147483647]  # type: ignore[index]
    # A version the server does not have is the App's 404.
    r = request(server.port, "POST", "/v2/models/two/versions/9/infer", body)
    assert r.status == 404


def test_cache_hit_answered_natively(server) -> None:  # type: ignore[no-untyped-def]
    body = _json_infer([[3.0] * 8])
    first = request(server.port, "POST", "/v2/models/cached/infer", body)
    second = request(server.port, "POST", "/v2/models/cached/infer", body)
    assert first.status == second.status == 200
    assert first.body == second.body
    stats = request(server.port, "GET", "/v2/models/cached/stats").json()
    assert stats["model_stats"][0]["inference_stats"]["cache_hit"]["count"] >= 1  # type: ignore[index]


def test_compressed_request_goes_through_python(server) -> None:  # type: ignore[no-untyped-def]
    import gzip

    body = _json_infer([[1.0] * 8])
    r = request(
        server.port,
        "POST",
        "/v2/models/lin/infer",
        gzip.compress(body),
        {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    )
    assert r.status == 200
    out = json.loads(gzip.decompress(r.body)) if r.headers.get("content-encoding") else r.json()
    np.testing.assert_allclose(out["outputs"][0]["data"], (np.ones((1, 8), np.float32) @ _W)[0])  # type: ignore[index]


def test_chunked_request_body(server) -> None:  # type: ignore[no-untyped-def]
    body = _json_infer([[1.0] * 8])
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]) for i in range(0, len(body), 10)
    )
    head = b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + chunks + b"0\r\n\r\n")
        with s.makefile("rb") as f:
            r = read_response(f)
    assert r.status == 200, r.body


def _mutate(rng: random.Random, wire: bytes) -> bytes:
    b = bytearray(wire)
    for _ in range(rng.randint(1, 4)):
        if not b:
            break
        at = rng.randrange(len(b))
        op = rng.randrange(4)
        if op == 0:
            b[at] = rng.randrange(256)
        elif op == 1:
            del b[at : at + rng.randint(1, 8)]
        elif op == 2:
            b[at:at] = bytes([rng.choice(b'{}[],:"0123456789.-e \r\n%')])
        else:
            del b[at:]
    return bytes(b)


def test_live_fuzz_with_valid_requests_interleaved(server) -> None:  # type: ignore[no-untyped-def]
    """Mutated requests on their own connections, each followed by a valid request on a
    keep-alive connection: every valid one is answered correctly."""
    rng = random.Random(1206)
    x = [[float(i) for i in range(8)]]
    valid_body = _json_infer(x)
    valid = b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (
        len(valid_body),
        valid_body,
    )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    ).encode()
    binary = (
        b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n\r\n%s%s"
        % (len(header), len(header) + 32, header, struct.pack("<8f", *x[0]))
    )
    expected = (np.array(x, np.float32) @ _W)[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as keep:
        f = keep.makefile("rb")
        for _ in range(300):
            junk = _mutate(rng, rng.choice([valid, binary]))
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                got = b""
                try:
                    while chunk := s.recv(65536):
                        got += chunk
                except (ConnectionResetError, TimeoutError):
                    pass
                for status in [
                    int(line.split()[1])
                    for line in got.split(b"\r\n")
                    if line.startswith(b"HTTP/1.1 ")
                ]:
                    assert status in (100, 200, 400, 404, 405, 413, 415, 417, 431), got[:300]
            keep.sendall(valid)
            r = read_response(f)
            assert r.status == 200, r.body
            data = np.array(r.json()["outputs"][0]["data"], dtype=np.float32)  # type: ignore[index]
            np.testing.assert_array_equal(data, expected)
        f.close()


@pytest.mark.parametrize("http", ["python", "native"])
def test_front_end_flag(tmp_path, http: str) -> None:  # type: ignore[no-untyped-def]
    """`--http python` keeps the httptools front end; both answer the same requests alike."""
    from pathlib import Path

    models = Path(__file__).resolve().parent / "models.py"
    args = ["--model", f"lin={models}:linear", "--http", http, "--log-level", "warning"]
    with running_server(args, tmp_path) as srv:
        x = np.full((1, 8), 0.1, np.float32)
        r = request(srv.port, "POST", "/v2/models/lin/infer", _json_infer(x.tolist()))
        assert r.status == 200
        text = _raw_data(r.body)
        values = np.array([float(t) for t in text.split(",")], dtype=np.float32)
        np.testing.assert_array_equal(values, (x @ _W)[0])
        # The native encoder writes float32 in its shortest form; msgspec widens to float64.
        assert (max(len(t) for t in text.split(",")) <= 15) == (http == "native")
        bad = request(srv.port, "POST", "/v2/models/lin/infer", _json_infer([[1.0] * 7]))
        assert bad.status == 400 and "unexpected shape" in bad.json()["error"]  # type: ignore[index]


def test_forwarded_requests_carry_every_header_the_app_reads() -> None:
    """A header the App reads (authorization, origin, ...) but the native connection drops
    would silently turn off the App's check on the default front end."""
    from aiarch import _core
    from aiarch.serving.http import _WANTED

    front = _core.HttpFront(max_header_bytes=1 << 16, max_headers=100, max_body_bytes=1 << 20)
    conn = front.connect(1)
    lines = "".join(f"{name.decode()}: v-{name.decode()}\r\n" for name in sorted(_WANTED))
    lines = lines.replace("content-length: v-content-length", "content-length: 0")
    lines = lines.replace("expect: v-expect", "x-other: dropped")
    [item] = conn.feed(f"GET /v2 HTTP/1.1\r\nHost: a\r\n{lines}\r\n".encode())
    headers = item[4]
    for name in _WANTED - {b"expect"}:
        assert name in headers, name
    assert b"x-other" not in headers and b"host" not in headers


def test_predict_matches_the_python_front_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`/predict` bodies the native front reads give the values the App gives (floats as the
    same float32), every other body gets the App's own answer, and the valid ones never reach
    the App."""
    from pathlib import Path

    models = Path(__file__).resolve().parent / "models.py"
    cases: list[tuple[str, object]] = [
        ("lin", {"inputs": [[0.5, -1, 2, 3, 4, 5, 6, 7.25]]}),
        ("lin", {"inputs": [0.1] * 16}),  # flat: two rows
        ("lin", {"inputs": [[[1, 2, 3, 4], [5, 6, 7, 8]], [[1] * 4, [2] * 4]]}),
        ("lin", {"inputs": {"x": [[1] * 8, [2] * 8, [3] * 8]}}),
        ("two", {"inputs": {"b": [[0.25, -2], [1e-3, 4]], "a": [[1, 2, 3], [-4, 5, 6]]}}),
        ("two", {"inputs": {"a": [1, 2, 3], "b": [True, 2]}}),  # a bool where a number goes
        ("lin", {"inputs": [[1] * 8, []]}),  # an empty list
        ("lin", {"inputs": [1] * 7}),  # not whole rows
        ("lin", {"inputs": {"x": [1] * 8, "y": [1] * 8}}),  # an unknown input
        ("lin", {"inputs": ["1"] * 8}),
        ("lin", {"inputs": [1] * 8, "id": "extra member"}),
        ("two", {"inputs": {"a": [1.5, 2, 3], "b": [1, 2]}}),  # a fraction for an integer
        ("two", {"inputs": {"a": [2**40, 2, 3], "b": [1, 2]}}),  # out of int32's range
        ("two", {"inputs": [[1, 2, 3]]}),  # two inputs need names
        ("lin", {}),
        ("lin", []),
    ]
    answers: dict[str, list[tuple[int, object]]] = {}
    forwarded: dict[str, float] = {}
    for front in ("python", "native"):
        args = ["--model", f"lin={models}:linear", "--model", f"two={models}:two_io"]
        with running_server([*args, "--http", front, "--log-level", "warning"], tmp_path) as srv:
            for model in ("lin", "two"):  # the first request creates the batcher
                request(srv.port, "POST", f"/predict/{model}", json.dumps(cases[0][1]).encode())
            before = _forwarded(srv.port)
            got = []
            for model, body in cases:
                r = request(srv.port, "POST", f"/predict/{model}", json.dumps(body).encode())
                got.append((r.status, r.json()))
            answers[front] = got
            forwarded[front] = _forwarded(srv.port) - before
    for (model, body), py, nat in zip(cases, answers["python"], answers["native"], strict=True):
        assert py[0] == nat[0], (body, py, nat)
        if py[0] != 200:
            assert py == nat, (body, py, nat)
            continue
        outs_py, outs_nat = py[1]["outputs"], nat[1]["outputs"]  # type: ignore[index]
        if model == "two":
            assert list(outs_py) == list(outs_nat) == ["sum", "double"]
            assert outs_py["sum"] == outs_nat["sum"]
            assert outs_py["double"] == outs_nat["double"]  # float64 both ways
        else:
            assert np.array(outs_py).shape == np.array(outs_nat).shape
            np.testing.assert_array_equal(
                np.array(outs_py, np.float32), np.array(outs_nat, np.float32)
            )
    assert sum(1 for status, _ in answers["native"] if status == 200) == 6
    # The native front answered the first five; the rest (the one with an extra member
    # included: the App ignores it) and the scrape went to the App.
    assert forwarded["native"] == len(cases) - 5 + 1, forwarded


def _forwarded(port: int) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("aiarch_http_requests_forwarded_total"):
            return float(line.split()[-1])
    return 0.0


def test_fp16_json_rounds_as_the_python_front_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """FP16 tensors sent as JSON numbers are read natively and round to the same float16 bits
    as the App's numpy conversion, for values spread over every binade, ties, subnormals and
    overflow; the native front never hands them to the App."""
    from pathlib import Path

    models = Path(__file__).resolve().parent / "models.py"
    rng = np.random.default_rng(7)
    special = [0.0, -0.0, 1.00048828125, 1.00146484375, 2.0**-25, 3 * 2.0**-26, 65504, 65519.99]
    values = np.concatenate(
        [
            special,
            rng.standard_normal(300) * 10.0 ** rng.integers(-9, 6, 300),
            (rng.integers(0, 1 << 16, 150).astype(np.float64) + 0.5) * 2.0**-24,  # exact ties
        ]
    )
    rows = values[: len(values) // 8 * 8].reshape(-1, 8).tolist()
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [len(rows), 8], "datatype": "FP16", "data": rows}]}
    ).encode()
    got = {}
    for front in ("python", "native"):
        args = ["--model", f"half={models}:half_identity", "--http", front]
        with running_server([*args, "--log-level", "warning"], tmp_path) as srv:
            request(srv.port, "POST", "/v2/models/half/infer", body)  # creates the batcher
            before = _forwarded(srv.port)
            r = request(srv.port, "POST", "/v2/models/half/infer", body)
            assert r.status == 200, r.body
            got[front] = r.json()["outputs"][0]["data"]  # type: ignore[index]
            if front == "native":
                assert _forwarded(srv.port) - before == 1  # the scrape itself
    with np.errstate(over="ignore"):
        expected = np.array(rows, np.float64).astype(np.float16).reshape(-1)
    finite = np.isfinite(expected)
    assert 0 < (~finite).sum() < 20  # some overflow to infinity, which JSON writes as null
    for front in ("native", "python"):
        data = got[front]
        assert [v is None for v in data] == (~finite).tolist()
        bits = np.array([v for v in data if v is not None], np.float16).view(np.uint16)
        np.testing.assert_array_equal(bits, expected[finite].view(np.uint16))


def _reading_pair() -> tuple[object, object, socket.socket, socket.socket]:
    """A front and a connection reading (natively) the server end of a loopback TCP pair."""
    from aiarch import _core

    front = _core.HttpFront(max_header_bytes=1 << 16, max_headers=100, max_body_bytes=1 << 20)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_end, _ = listener.accept()
    server_end.setblocking(False)
    conn = front.connect(7)
    assert conn.attach_socket(server_end.fileno()) and conn.start_reading()
    return front, conn, client, server_end


def _read_events(front, now: float = 0.0) -> list:  # type: ignore[no-untyped-def]
    """read_ready until it reports something (the bytes sent take a moment over loopback)."""
    for _ in range(200):
        events = front.read_ready(now, 64)
        if events:
            return events
        time.sleep(0.005)
    return []


def test_native_reads_report_requests_ends_and_pauses() -> None:
    """One `read_ready` reads the socket and reports what needs Python: the requests for the
    App (in order), the end of the input (-1) after which the socket is no longer read; paused,
    nothing is read however much waits; `last_active` is the read's time."""
    front, conn, client, server_end = _reading_pair()
    try:
        assert front.read_ready(1.0, 64) == []  # nothing sent: nothing read, nothing reported
        client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        [(cid, forwarded, ended)] = _read_events(front, 12.5)
        assert cid == 7 and ended == 0
        assert [item[2] for item in forwarded] == [b"/a", b"/b"]
        assert conn.last_active == 12.5 and conn.reading

        assert conn.set_reading(False) and not conn.reading
        client.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
        assert front.read_ready(13.0, 64) == []  # paused: the request waits in the socket
        assert conn.last_active == 12.5
        assert conn.set_reading(True)
        [(_, forwarded, _)] = _read_events(front, 14.0)
        assert [item[2] for item in forwarded] == [b"/c"]

        client.shutdown(socket.SHUT_WR)
        assert _read_events(front) == [(7, None, -1)]
        assert not conn.reading
        assert front.read_ready(15.0, 64) == []  # no longer read (no second end reported)
    finally:
        conn.close()
        client.close()
        server_end.close()


def test_native_reads_report_a_reset_and_stop_after_close() -> None:
    """A reset connection is reported with the read's errno; a closed one is never read again
    (its descriptor number may be reused by the next connection)."""
    front, conn, client, server_end = _reading_pair()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        [(cid, forwarded, ended)] = _read_events(front)
        assert (cid, forwarded) == (7, None) and ended == errno.ECONNRESET
    finally:
        conn.close()
        server_end.close()

    front, conn, client, server_end = _reading_pair()
    try:
        conn.close()
        client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
        assert front.read_ready(0.0, 64) == [] and not conn.reading
        assert not conn.start_reading()  # closed: nothing to read
    finally:
        client.close()
        server_end.close()
