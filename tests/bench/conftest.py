"""A real `aiarch serve` on 127.0.0.1 with models of known service time (tests/bench/models.py)."""

from __future__ import annotations

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

pytest.importorskip(
    "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
)
for _mod in ("uvloop", "httptools", "msgspec", "prometheus_client"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed (needed by aiarch serve)")

MODELS = Path(__file__).resolve().parent / "models.py"

CONFIG = f"""
[models.svc]
source = "{MODELS}:fixed_service"
batching = {{ max_batch_size = 1, max_delay_us = 0, instances = 1, inline_execution = false }}

[models.fast]
source = "{MODELS}:fast"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m aiarch.cli serve` in a subprocess; `pause()`/`resume()` stop and continue it."""

    def __init__(self, tmp: Path) -> None:
        cfg = tmp / "serve.toml"
        cfg.write_text(CONFIG)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        import aiarch

        env = dict(os.environ)
        root = str(Path(aiarch.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiarch.cli",
                "serve",
                "--port",
                str(self.port),
                "--config",
                str(cfg),
                "--log-level",
                "warning",
            ],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("bench-serve"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
