"""Registry fixtures: every registry test runs on SQLite and on a real PostgreSQL server
(a throw-away cluster started once per session on 127.0.0.1)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiarch.registry import Registry
from aiarch.registry.pgcluster import PostgresUnavailable, TemporaryPostgres

_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[TemporaryPostgres]:
    try:
        pg = TemporaryPostgres().start()
    except PostgresUnavailable as e:
        pytest.fail(str(e))
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def registry_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database for one test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    pg: TemporaryPostgres = request.getfixturevalue("postgres")
    return pg.url(schema=f"t{os.getpid()}_{next(_schemas)}")


@pytest.fixture
def make_registry(registry_url: str, tmp_path: Path) -> Iterator[Callable[[], Registry]]:
    """Registries over the test's database and store (several = several clients)."""
    opened: list[Registry] = []

    def make() -> Registry:
        reg = Registry(registry_url, home=tmp_path / "home")
        opened.append(reg)
        return reg

    yield make
    for reg in opened:
        reg.close()


@pytest.fixture
def reg(make_registry: Callable[[], Registry]) -> Registry:
    return make_registry()


MODEL_SOURCE = """
import time

import numpy as np

FACTOR = {factor}


def predict(x):
    if x.shape[0] and {delay_s}:
        time.sleep({delay_s})  # keeps requests queued while an alias moves
    if (x < 0).any() and {fail_on_negative}:
        raise ValueError("negative input")
    return x * FACTOR


predict.inputs = [{{"name": "x", "dtype": "float32", "shape": (4,)}}]
predict.outputs = [{{"name": "y", "dtype": "float32", "shape": (4,)}}]
"""


def write_model(
    folder: Path, factor: float, fail_on_negative: bool = False, delay_s: float = 0.0
) -> Path:
    """A Python model file computing x * factor (a distinct artifact per factor), optionally
    sleeping `delay_s` per batch."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model_{str(factor).replace('.', '_')}.py"
    path.write_text(
        textwrap.dedent(
            MODEL_SOURCE.format(factor=factor, fail_on_negative=fail_on_negative, delay_s=delay_s)
        )
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses that must import this checkout's aiarch."""
    import aiarch

    env = dict(os.environ)
    root = str(Path(aiarch.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class Server:
    """`aiarch serve` in a subprocess on a free port."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._logf = open(log, "wb")
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
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=1) as r:
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
        return int(self.proc.returncode)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(args: list[str], env: dict[str, str]) -> Server:
        s = Server(args, tmp_path / f"server-{len(started)}.log", env)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    import json

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None
