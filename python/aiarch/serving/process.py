"""`aiarch serve` in a child process on a free loopback port.

What benchmarks, `aiarch bench sweep`, `aiarch demo` and integration tests start when they need
a real server: the child imports this very aiarch (its package root goes first on PYTHONPATH),
readiness is `/v2/health/ready`, and `stop()` sends SIGTERM (the server drains), then kills.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["ServerProcess", "free_port", "package_env"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def package_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with this aiarch's package root first on PYTHONPATH."""
    import aiarch

    env = dict(os.environ)
    root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


class ServerProcess:
    """`python -m aiarch.cli serve --port PORT *args`, its output in ``log`` (a temp file when
    None). ``url`` is ``127.0.0.1:PORT`` (as tritonclient wants it), ``base`` the http URL."""

    def __init__(
        self,
        args: Sequence[str],
        log: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.url}"
        self.log = Path(log) if log is not None else None
        self._logf: IO[bytes] = (
            open(self.log, "wb") if self.log is not None else tempfile.TemporaryFile()
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiarch.cli", "serve", "--port", str(self.port), *args],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else package_env(),
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Returns once the server is ready; RuntimeError (with its output) if it exits first,
        TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout:g}s:\n{self.output()}")

    def output(self) -> str:
        """Everything the server printed so far (also after `stop()` when ``log`` names a file)."""
        if not self._logf.closed:
            self._logf.flush()
        if self.log is not None:
            return self.log.read_text(errors="replace")
        pos = self._logf.tell()
        self._logf.seek(0)
        text = self._logf.read().decode(errors="replace")
        self._logf.seek(pos)
        return text

    def pause(self) -> None:
        """SIGSTOP: the server stops answering (an injected stall)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (in-flight requests drain), SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self._logf.closed:
            self._logf.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
