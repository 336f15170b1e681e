"""Registry fixtures (the registries on SQLite and PostgreSQL are the shared ones in
tests/conftest.py): model sources, child environments, served registries and HTTP helpers."""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiarch.serving.process import ServerProcess, package_env

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
