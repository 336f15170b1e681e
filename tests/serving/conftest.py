"""Fixtures that run the real `aiarch serve` in a subprocess on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def _require_server_deps() -> None:
    pytest.importorskip(
        "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
    )
    for mod in ("uvloop", "httptools", "msgspec", "prometheus_client"):
        pytest.importorskip(mod, reason=f"{mod} is not installed")


HERE = Path(__file__).resolve().parent
MODELS = HERE / "models.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m aiarch.cli serve ...` on a free port; `stop()` sends SIGTERM and waits."""

    def __init__(self, args: list[str], tmp: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        import aiarch

        env = dict(os.environ)
        pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiarch.cli", "serve", "--port", str(self.port), *args],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()
        return self.proc.returncode


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
