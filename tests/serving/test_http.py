"""Plain-HTTP behaviour of the real server: error codes, overload, deadlines, cancellation,
pipelining, limits."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import re
import socket
import time

import pytest

from .conftest import raw_exchange, read_response, request


def _infer_body(name: str, rows: int, width: int, **extra: object) -> bytes:
    data = [[1.0] * width for _ in range(rows)]
    return json.dumps(
        {
            "inputs": [{"name": name, "shape": [rows, width], "datatype": "FP32", "data": data}],
            **extra,
        }
    ).encode()


def _metric(port: int, name: str, **labels: str) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_health_endpoints(server) -> None:  # type: ignore[no-untyped-def]
    assert request(server.port, "GET", "/v2/health/live").status == 200
    r = request(server.port, "GET", "/v2/health/ready")
    assert r.status == 200 and r.json() == {"ready": True}
    assert request(server.port, "GET", "/v2/").status == 200


@pytest.mark.parametrize(
    "method,path,body,status,fragment",
    [
        ("POST", "/v2/models/nope/infer", b"{}", 404, "unknown model"),
        ("GET", "/v2/models/nope", b"", 404, "unknown model"),
        ("POST", "/v2/models/lin/infer", b'{"inputs": [', 400, "parse"),
        ("POST", "/v2/models/lin/infer", b"not json", 400, "parse"),
        ("POST", "/v2/models/lin/infer", _infer_body("x", 1, 7), 400, "unexpected shape"),
        ("POST", "/v2/models/lin/infer", _infer_body("z", 1, 8), 400, "unexpected inference input"),
        (
            "POST",
            "/v2/models/lin/infer",
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", "data": [0] * 8}]}
            ).encode(),
            400,
            "unexpected datatype",
        ),
        (
            "POST",
            "/v2/models/lin/infer",
            _infer_body("x", 1, 8, outputs=[{"name": "q"}]),
            400,
            "unexpected inference output",
        ),
        ("GET", "/v2/models/lin/infer", b"", 405, "method"),
        ("POST", "/v2/health/live", b"", 405, "method"),
        ("GET", "/nothing/here", b"", 404, "not found"),
        ("POST", "/predict/lin", b'{"inputs": [[1, 2]]}', 400, "rows"),
        ("GET", "/v2/systemsharedmemory/status", b"", 501, "shared memory"),
    ],
)
def test_error_status_and_body(server, method, path, body, status, fragment) -> None:  # type: ignore[no-untyped-def]
    r = request(server.port, method, path, body)
    assert r.status == status, r.body
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"]


def test_predict_endpoint(server) -> None:  # type: ignore[no-untyped-def]
    r = request(
        server.port,
        "POST",
        "/predict/lin",
        b'{"inputs": [[1,0,0,0,0,0,0,0],[0]'
        + b",[0,0,0,0,0,0,0]]}".replace(b"[0],[0,0,0,0,0,0,0]", b"[0,0,0,0,0,0,0,0]"),
    )
    assert r.status == 200, r.body
    out = r.json()["outputs"]
    assert len(out) == 2 and len(out[0]) == 4


def test_oversized_body_is_413(server) -> None:  # type: ignore[no-untyped-def]
    big = b"x" * (1 << 20 + 1)
    r = request(server.port, "POST", "/v2/models/lin/infer", big)
    assert r.status == 413
    assert "larger than" in r.json()["error"]


def test_oversized_gzip_body_is_413(server) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip.compress(b"0" * (3 << 20))
    r = request(server.port, "POST", "/v2/models/lin/infer", bomb, {"Content-Encoding": "gzip"})
    assert r.status == 413


def test_too_many_headers_is_431(server) -> None:  # type: ignore[no-untyped-def]
    headers = {f"X-H{i}": "v" for i in range(150)}
    assert request(server.port, "GET", "/v2/health/live", headers=headers).status == 431


def test_malformed_http_gets_400_and_close(server) -> None:  # type: ignore[no-untyped-def]
    out = raw_exchange(server.port, b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in out.lower()


def test_pipelined_requests_answered_in_order(server) -> None:  # type: ignore[no-untyped-def]
    slow = _infer_body("x", 1, 2)
    fast = _infer_body("x", 1, 8)
    reqs = [
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        % (len(slow), slow),
        b"GET /v2/health/live HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
        % (len(fast), fast),
        b"GET /v2/models/nope HTTP/1.1\r\nHost: h\r\n\r\n",
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"".join(reqs))
        with s.makefile("rb") as f:
            got = [read_response(f) for _ in reqs]
    assert [r.status for r in got] == [200, 200, 200, 404]
    assert got[0].json()["model_name"] == "slow"
    assert got[2].json()["model_name"] == "lin"


def test_expect_100_continue(server) -> None:  # type: ignore[no-untyped-def]
    body = _infer_body("x", 1, 8)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(
            b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        with s.makefile("rb") as f:
            assert f.readline().startswith(b"HTTP/1.1 100")
            assert f.readline() == b"\r\n"
            s.sendall(body)
            assert read_response(f).status == 200


def test_overload_is_429_with_retry_after(server) -> None:  # type: ignore[no-untyped-def]
    body = _infer_body("x", 1, 2)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: request(server.port, "POST", "/v2/models/tiny_queue/infer", body),
                range(8),
            )
        )
    statuses = [r.status for r in results]
    assert 429 in statuses and 200 in statuses, statuses
    rejected = next(r for r in results if r.status == 429)
    assert re.fullmatch(r"\d+", rejected.headers["retry-after"])
    assert int(rejected.headers["retry-after"]) >= 1
    assert "error" in rejected.json()


def test_timeout_is_504_and_not_executed(server) -> None:  # type: ignore[no-untyped-def]
    body = _infer_body("x", 1, 2)
    rows_before = _metric(server.port, "aiarch_rows_total", model="slow")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(request, server.port, "POST", "/v2/models/slow/infer", body)
        time.sleep(0.05)
        late = pool.submit(
            request,
            server.port,
            "POST",
            "/v2/models/slow/infer",
            _infer_body("x", 1, 2, parameters={"timeout": 20_000}),
        )
        hdr = pool.submit(
            request,
            server.port,
            "POST",
            "/v2/models/slow/infer",
            body,
            {"X-Request-Timeout-Ms": "20"},
        )
        assert busy.result().status == 200
        assert late.result().status == 504
        assert hdr.result().status == 504
    time.sleep(0.3)
    assert _metric(server.port, "aiarch_rows_total", model="slow") == rows_before + 1


def test_disconnect_cancels_queued_request(server) -> None:  # type: ignore[no-untyped-def]
    body = _infer_body("x", 1, 2)
    msg = b"POST /v2/models/slowc/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    rows_before = _metric(server.port, "aiarch_rows_total", model="slowc")
    cancelled_before = _metric(
        server.port, "aiarch_requests_total", model="slowc", status="cancelled"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as keep:
        keep.sendall(msg)  # occupies the model for 200 ms
        time.sleep(0.05)
        for _ in range(3):  # queued behind it, then abandoned
            with socket.create_connection(("127.0.0.1", server.port)) as gone:
                gone.sendall(msg)
                time.sleep(0.01)
        with keep.makefile("rb") as f:
            assert read_response(f).status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cancelled = _metric(server.port, "aiarch_requests_total", model="slowc", status="cancelled")
        if cancelled >= cancelled_before + 3:
            break
        time.sleep(0.05)
    assert cancelled == cancelled_before + 3
    time.sleep(0.3)
    assert _metric(server.port, "aiarch_rows_total", model="slowc") == rows_before + 1


def test_metrics_exposition(server) -> None:  # type: ignore[no-untyped-def]
    request(server.port, "POST", "/v2/models/lin/infer", _infer_body("x", 2, 8))
    r = request(server.port, "GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    for name in (
        "aiarch_requests_total",
        "aiarch_request_duration_seconds_bucket",
        "aiarch_queue_duration_seconds_count",
        "aiarch_execution_duration_seconds_sum",
        "aiarch_batch_size_bucket",
        "aiarch_queue_rows",
        "aiarch_cache_operations_total",
        "aiarch_server_ready",
    ):
        assert name in text, name
    assert _metric(server.port, "aiarch_requests_total", model="lin", status="success") >= 1


def test_keep_alive_many_requests_one_connection(server) -> None:  # type: ignore[no-untyped-def]
    body = _infer_body("x", 1, 8)
    msg = b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        with s.makefile("rb") as f:
            for _ in range(50):
                s.sendall(msg)
                assert read_response(f).status == 200
