"""Fixtures of the feature-store tests: a real redis-server on a free loopback port in a
temporary directory (session-wide), and a store per test on each backend."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
)

from aiarch.features import Entity, Feature, FeatureStore, FeatureView

T0 = 1_700_000_000 * 10**9
"""Event times in these tests are offsets from this instant (ns since the epoch)."""


@contextlib.contextmanager
def running(deployment: Any) -> Iterator[Any]:
    """A throw-away Redis deployment (`TemporaryRedisCluster`, `TemporaryRedisSentinel`)
    started for a fixture and stopped after it; a start that fails fails the test, saying why."""
    try:
        deployment.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield deployment
    finally:
        deployment.stop()


def redis_node(port: int) -> Any:
    """A plain client of one node on 127.0.0.1, for a test's own checks."""
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """redis-server on 127.0.0.1:<free port>, no persistence, in its own directory."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the feature-store tests need a real Redis "
                "(bash scripts/setup.sh installs it from Debian's packages)"
            )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer on port {self.port} within 10 s")
            time.sleep(0.02)

    def flush(self) -> None:
        import redis

        with redis.Redis(port=self.port, socket_timeout=5) as r:
            r.flushall()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone (for tests that stop or kill it)."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


class Clock:
    """An injectable clock (ns since the epoch) for TTL tests."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


_names = itertools.count()


@pytest.fixture(params=["native", pytest.param("redis", marks=pytest.mark.redis)])
def backend_url(request: pytest.FixtureRequest) -> str:
    """An empty online store of each backend: a fresh in-process table, or the session Redis
    flushed."""
    if request.param == "native":
        return f"memory://test-{os.getpid()}-{next(_names)}"
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return server.url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(tmp_path: Path, clock: Clock) -> Callable[..., FeatureStore]:
    stores: list[FeatureStore] = []

    def make(url: str, **kwargs: Any) -> FeatureStore:
        kwargs.setdefault("home", tmp_path / "home")
        kwargs.setdefault("clock", clock)
        s = FeatureStore(url, **kwargs)
        stores.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in stores:
        s.backend.close()


CARD = Entity("card")
USER = Entity("user", dtype="string")
TXN = FeatureView(
    "txn",
    "card",
    (Feature("amount_7d"), Feature("count_1h", "int64", default=-1), Feature("risky", "bool")),
    ttl=3600,
)
PROFILE = FeatureView("profile", "card", (Feature("age_days", default=7.5),))
SESSION = FeatureView("session", "user", (Feature("clicks"), Feature("dwell_s", default=1.0)))
