"""Host applications with aiarch embedded, started as real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from aiarch.serving.process import free_port, package_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HERE = Path(__file__).resolve().parent


class AppProcess:
    """A host app in a child process (``argv`` with ``{port}`` filled in), its output in
    ``log``; ready once ``GET ready_path`` answers 200."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        ready_path: str | None = "/healthz",
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(
            [a.format(port=self.port) for a in argv],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            env=package_env(env),
            cwd=cwd,
        )
        if ready_path is not None:
            self.wait_until(lambda: get(self.base + ready_path)[0] == 200, "ready")

    def wait_until(self, check: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"app not {what} after {timeout:g}s:\n{self.output()}")

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (SIGKILL after ``timeout``: a hang is a failure).
        uvicorn re-raises the signal once it has shut down, so a clean exit may read -15."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(
                f"app did not exit {timeout:g}s after SIGTERM:\n{self.output()}"
            ) from None
        finally:
            self._logf.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if not self._logf.closed:
            self._logf.close()


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_json(url: str, body: Any, timeout: float = 20.0) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(text: bytes, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"no sample {name}{labels} in:\n{text.decode()}")


@pytest.fixture
def app_process(tmp_path: Path) -> Any:
    """Starts host apps; kills what a test left running."""
    started: list[AppProcess] = []

    def start(argv: Sequence[str], **kwargs: Any) -> AppProcess:
        app = AppProcess(argv, tmp_path / f"app-{len(started)}.log", **kwargs)
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


PY = sys.executable
CLEAN_EXIT = (0, -signal.SIGTERM)
os.environ.setdefault("PYTHONUNBUFFERED", "1")


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Any:
    """A started ServiceRuntime freezes the collector's heap; give this process's objects
    back to it so that later tests see a normal collector."""
    yield
    import gc

    gc.unfreeze()
