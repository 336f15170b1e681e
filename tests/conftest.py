"""Shared fixtures: every async test runs on both the default asyncio loop and uvloop; registry
tests get a fresh registry on SQLite and on a real PostgreSQL (a throw-away cluster started once
per session on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiarch.registry import Registry
from aiarch.registry.pgcluster import PostgresUnavailable, TemporaryPostgres

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None

_LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


@pytest.fixture(params=_LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Runs a coroutine to completion on a fresh loop of the parametrized kind."""
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


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
