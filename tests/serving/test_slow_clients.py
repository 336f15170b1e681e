"""Slow and greedy clients against the real server on 127.0.0.1: half-sent headers and bodies are
closed by the read timeouts with 408, connection caps answer 503, and /metrics counts both."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    FRONT_ENDS,
    MODELS,
    ServerProcess,
    _require_server_deps,
    read_response,
    request,
    running_server,
)

BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]}
).encode()
HALF_HEADERS = b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"
HALF_BODY = (
    b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY[: len(BODY) // 2]
)


@pytest.fixture(scope="module", params=FRONT_ENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    _require_server_deps()
    tmp = tmp_path_factory.mktemp("slow")
    args = [
        "-m",
        f"lin={MODELS}:linear",
        "--http",
        request.param,
        "--header-timeout-s",
        "0.3",
        "--body-timeout-s",
        "0.3",
    ]
    with running_server(args, tmp) as srv:
        yield srv


def _send_and_read_until_closed(sockets: list[socket.socket]) -> list[bytes]:
    """Everything each socket receives until the server closes it (the socket's own timeout
    bounds the wait, so a server that never closes fails the test instead of hanging it)."""
    out = []
    for s in sockets:
        chunks = []
        while True:
            data = s.recv(65536)  # raises TimeoutError if the server keeps it open
            if not data:
                break
            chunks.append(data)
        out.append(b"".join(chunks))
        s.close()
    return out


def _open(port: int, payload: bytes, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if payload:
        s.sendall(payload)
    return s


def _metric(port: int, name: str, labels: str) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    m = re.search(rf"^{name}\{{{labels}\}} ([0-9.e+]+)$", text, re.M)
    assert m is not None, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


@pytest.mark.parametrize(("payload", "phase"), [(HALF_HEADERS, "header"), (HALF_BODY, "body")])
def test_half_sent_requests_are_closed_with_408(
    server: ServerProcess, payload: bytes, phase: str
) -> None:
    before = _metric(server.port, "aiarch_http_request_timeouts_total", f'phase="{phase}"')
    stuck = [_open(server.port, payload) for _ in range(20)]
    # A well-behaved client is served meanwhile.
    assert request(server.port, "POST", "/v2/models/lin/infer", BODY).status == 200
    replies = _send_and_read_until_closed(stuck)
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert f"request {phase}".encode() in reply and b"0.3 s" in reply
    after = _metric(server.port, "aiarch_http_request_timeouts_total", f'phase="{phase}"')
    assert after - before == 20


def test_complete_requests_on_a_kept_alive_connection_are_not_timed_out(
    server: ServerProcess,
) -> None:
    head = f"POST /v2/models/lin/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n\r\n"
    with _open(server.port, b"") as s, s.makefile("rb") as f:
        for _ in range(3):
            s.sendall(head.encode() + BODY)
            assert read_response(f).status == 200


def _hold(port: int) -> socket.socket:
    """A kept-alive connection the server has answered on, so it surely counts against the caps.
    A connection the server is still closing (the client's close not yet seen) may hold a slot
    for a moment: a refused attempt is retried, a bounded number of times."""
    head = f"POST /v2/models/lin/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n\r\n"
    for _ in range(200):
        s = _open(port, head.encode() + BODY)
        with s.makefile("rb") as f:
            status = read_response(f).status
        if status == 200:
            return s
        assert status == 503
        s.close()
        time.sleep(0.01)
    raise AssertionError("no connection slot freed up")


@pytest.mark.parametrize("http", FRONT_ENDS)
def test_idle_connections_are_closed_and_busy_ones_kept(tmp_path: Path, http: str) -> None:
    """The idle sweep closes a kept-alive connection silent for --idle-timeout-s and keeps one
    that goes on sending requests, however its reads reach the server (each read is activity)."""
    head = f"POST /v2/models/lin/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n\r\n"
    args = ["-m", f"lin={MODELS}:linear", "--http", http, "--idle-timeout-s", "2"]
    with running_server(args, tmp_path) as srv:
        quiet = _hold(srv.port)
        with _open(srv.port, b"") as busy, busy.makefile("rb") as f:
            end = time.monotonic() + 5.0  # well past the timeout
            while time.monotonic() < end:
                busy.sendall(head.encode() + BODY)
                assert read_response(f).status == 200
                time.sleep(0.1)
            assert _send_and_read_until_closed([quiet]) == [b""]  # closed, nothing said
            busy.sendall(head.encode() + BODY)
            assert read_response(f).status == 200


def _refused_reply(port: int) -> bytes:
    [reply] = _send_and_read_until_closed([_open(port, b"")])
    return reply


@pytest.mark.parametrize("http", FRONT_ENDS)
@pytest.mark.parametrize(
    ("flag", "limit", "message"),
    [
        (
            "--max-connections-per-ip",
            "per_ip",
            b"too many open connections from 127.0.0.1 (limit 4)",
        ),
        ("--max-connections", "global", b"too many open connections (limit 4)"),
    ],
)
def test_connection_caps_answer_503_and_free_their_slots(
    tmp_path: Path, flag: str, limit: str, message: bytes, http: str
) -> None:
    _require_server_deps()
    args = ["-m", f"lin={MODELS}:linear", flag, "4", "--http", http]
    with running_server(args, tmp_path) as srv:
        held = [_hold(srv.port) for _ in range(4)]
        reply = _refused_reply(srv.port)
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
        assert message in reply
        for s in held:
            s.close()
        # Every slot is free again once the server has seen the closes.
        held = [_hold(srv.port) for _ in range(4)]
        for s in held:
            s.close()
        _hold(srv.port).close()
        refused = 0.0
        for _ in range(200):
            r = request(srv.port, "GET", "/metrics")
            if r.status == 200:
                m = re.search(
                    rf'^aiarch_http_connections_refused_total\{{limit="{limit}"\}} ([0-9.e+]+)$',
                    r.body.decode(),
                    re.M,
                )
                assert m is not None
                refused = float(m.group(1))
                break
            time.sleep(0.01)
        assert refused >= 1


def test_many_pipelined_requests_pause_reading_and_all_are_answered(
    server: ServerProcess,
) -> None:
    """Requests pipelined well past `max_pipelined` (64) and past what one read takes: reading
    pauses while 64 are owed and must resume as they are answered, or the rest is never read."""
    head = f"POST /v2/models/lin/infer HTTP/1.1\r\nHost: a\r\nContent-Length: {len(BODY)}\r\n\r\n"
    count = 3000  # ~0.7 MB: several reads
    with _open(server.port, b"") as s, s.makefile("rb") as f:
        sender = threading.Thread(target=s.sendall, args=((head.encode() + BODY) * count,))
        sender.start()
        statuses = [read_response(f).status for _ in range(count)]
        sender.join()
    assert statuses == [200] * count


def test_a_request_refused_mid_body_still_gets_its_answer(server: ServerProcess) -> None:
    """413 at the headers while the client goes on sending the body: the server half-closes and
    drops what arrives for a while instead of closing at once (which would answer the body with
    RST and lose the 413)."""
    head = b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n"
    with _open(server.port, head) as s:
        chunk = b"0" * 65536
        for _ in range(32):  # 2 MiB of the body the server refused
            s.sendall(chunk)
        reply = _send_and_read_until_closed([s])[0]
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b"larger than" in reply
