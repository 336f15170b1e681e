"""What the throw-away Redis deployments for tests and benchmarks (`rediscluster`,
`redissentinel`) share: free loopback ports, a temporary directory, one redis-server process per
node with its output in its own log, waiting with a deadline, and stopping everything."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TemporaryRedisProcesses", "free_ports"]


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class TemporaryRedisProcesses:
    """Processes of one deployment, by port, in a temporary directory; `stop()` ends them all
    and removes the directory. Subclasses set `unavailable` (the error a failed start raises)
    and implement `start()`."""

    unavailable: type[RuntimeError] = RuntimeError

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _spawn(self, port: int, args: list[str]) -> None:
        # Each process writes to its own log, never to a pipe.
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    def _wait(self, ready: Callable[[], Any], what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise self.unavailable(f"{what} within {timeout_s:.0f} s (logs: {self.dir})")
            time.sleep(0.05)

    def alive(self, port: int) -> bool:
        return self.procs[port].poll() is None

    def kill(self, port: int) -> None:
        """SIGKILL one process (no goodbye: its peers notice after their timeouts)."""
        proc = self.procs[port]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
