"""`aiarch serve` in a subprocess on 127.0.0.1 for the monitor's end-to-end tests."""

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


def package_env() -> dict[str, str]:
    """The environment for child processes: this checkout's aiarch first on the path."""
    import aiarch

    env = dict(os.environ)
    pkg_root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return env


class ServerProcess:
    """`python -m aiarch.cli serve ...` on a free port; stopped with SIGTERM."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiarch.cli", "serve", "--port", str(self.port), *args],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=package_env(),
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

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


@contextlib.contextmanager
def running_server(args: list[str], tmp: Path) -> Iterator[ServerProcess]:
    for mod in ("uvloop", "httptools", "prometheus_client", "matplotlib", "scipy"):
        pytest.importorskip(mod, reason=f"{mod} is not installed")
    srv = ServerProcess(args, tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
