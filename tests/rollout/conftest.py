"""Rollout fixtures: registries on SQLite and on a real PostgreSQL (a throw-away cluster on
127.0.0.1), candidate models that answer, fail or sleep, and real `aiarch serve` processes."""

from __future__ import annotations

import itertools
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

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
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database for one test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    pg: TemporaryPostgres = request.getfixturevalue("postgres")
    return pg.url(schema=f"r{os.getpid()}_{next(_schemas)}")


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

FACTOR = {factor}


def predict(x):
    if {delay_s} and x.shape[0]:
        time.sleep({delay_s})  # a slow candidate
    if {fail} and (x < 0).any():
        raise ValueError("candidate fails on negative input")  # warm-up (zeros) passes
    return x * FACTOR


predict.inputs = [{{"name": "x", "dtype": "float32", "shape": (4,)}}]
predict.outputs = [{{"name": "y", "dtype": "float32", "shape": (4,)}}]
"""


def write_model(folder: Path, factor: float, *, fail: bool = False, delay_s: float = 0.0) -> str:
    """A registrable Python model computing x * factor (one artifact per factor), optionally
    failing on negative inputs or sleeping `delay_s` per batch; returns `file.py:predict`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model_{str(factor).replace('.', '_')}.py"
    path.write_text(textwrap.dedent(MODEL_SOURCE.format(factor=factor, fail=fail, delay_s=delay_s)))
    return f"{path}:predict"


class Server(ServerProcess):
    """`aiarch serve` in a subprocess on a free port, logging to `log`."""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts `aiarch serve ARGS` with this checkout's aiarch; stops every server at the end."""
    started: list[Server] = []

    def start(args: list[str], home: Path) -> Server:
        s = Server(
            args,
            tmp_path / f"server-{len(started)}.log",
            env=package_env({"AIARCH_HOME": str(home)}),
        )
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()
