"""Fixtures that run the real `aiarch serve` in a subprocess on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiarch.serving.process import ServerProcess as _ServerProcess
from aiarch.serving.process import free_port


def _require_server_deps() -> None:
    pytest.importorskip(
        "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
    )
    for mod in ("uvloop", "httptools", "msgspec", "prometheus_client"):
        pytest.importorskip(mod, reason=f"{mod} is not installed")


HERE = Path(__file__).resolve().parent
MODELS = HERE / "models.py"

FRONT_ENDS = ["native", "python"]
"""The `--http` front ends; tests of front-end behaviour run against each."""


class ServerProcess(_ServerProcess):
    """`aiarch serve` with its log in the test's tmp folder; `stop()` drains, then kills."""

    def __init__(self, args: list[str], tmp: Path, port: int | None = None):
        port = port or free_port()
        super().__init__(args, tmp / f"server-{port}.log", port=port)


@contextlib.contextmanager
def running_server(args: list[str], tmp: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(args, tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


CONFIG = f"""
[models.lin]
source = "{MODELS}:linear"

[models.two]
source = "{MODELS}:two_io"
version = "3"

[models.failing]
source = "{MODELS}:failing"

[models.slow]
source = "{MODELS}:slow"
batching = {{ max_batch_size = 1, max_delay_us = 0, max_queue_rows = 64, inline_execution = false }}

[models.slowc]
source = "{MODELS}:slow"
batching = {{ max_batch_size = 1, max_delay_us = 0, max_queue_rows = 64, inline_execution = false }}

[models.tiny_queue]
source = "{MODELS}:slow"
batching = {{ max_batch_size = 1, max_delay_us = 0, max_queue_rows = 1, inline_execution = false }}

[models.cached]
source = "{MODELS}:linear"
cache = {{ max_bytes = 1048576 }}
"""


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    _require_server_deps()
    tmp = tmp_path_factory.mktemp("serve")
    cfg = tmp / "serve.toml"
    cfg.write_text(CONFIG)
    with running_server(
        ["--config", str(cfg), "--max-body-mb", "1", "--log-level", "warning"], tmp
    ) as srv:
        yield srv


def raw_exchange(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send `payload` on a fresh connection and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        s.settimeout(1.0)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except TimeoutError:
            pass
        return b"".join(chunks)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> object:
        import json

        return json.loads(self.body)


def read_response(f: object) -> Response:
    """Read one HTTP/1.1 response (Content-Length framed) from a socket file."""
    line = f.readline()  # type: ignore[attr-defined]
    if not line:
        raise ConnectionError("connection closed")
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while True:
        h = f.readline()  # type: ignore[attr-defined]
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))  # type: ignore[attr-defined]
    return Response(status, headers, body)


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Response:
    """One request on a fresh connection."""
    hdrs = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        with s.makefile("rb") as f:
            return read_response(f)
