"""Registry fixtures: every registry test runs on SQLite and on a real PostgreSQL server
(a throw-away cluster started once per session on 127.0.0.1)."""

from __future__ import annotations

import itertools
import os
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiarch.registry import Registry
from aiarch.registry.pgcluster import PostgresUnavailable, TemporaryPostgres
from aiarch.serving.process import ServerProcess, package_env

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


def child_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses that must import this checkout's aiarch."""
    return package_env(extra)


class Server(ServerProcess):
    """`aiarch serve` in a subprocess on a free port, logging to ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        super().__init__(args, log, env=env)


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
