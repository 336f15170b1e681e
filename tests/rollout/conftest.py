"""Rollout fixtures (registries come from the shared ones in tests/conftest.py): candidate models
that answer, fail or sleep, and real `aiarch serve` processes."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aiarch.serving.process import ServerProcess, package_env

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
